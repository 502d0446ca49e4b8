"""`rft-ds check-hostfile`: validate a DeepSpeed hostfile before a launch.

DeepSpeed reads hostfiles itself (deepspeed/launcher/runner.py) and is lenient in ways that hurt
later: `node-01 slots=8 gpus=4` or `node-01 slots=8x` launch with 8 slots, `slots=0` is taken as
is, and a bad line stops the launcher with the whole file dumped but no line number. This module
accepts the same files DeepSpeed accepts when they are right, and rejects, naming file:line:

    # a comment                     blank lines and comments are ignored
    node-01 slots=8                 one host per line: a name or address, then slots=N (N >= 1)
    node-02 slots=8   # trailing comments are fine

    bad syntax (anything else on the line), slots missing, non-integer or < 1, a host listed twice,
    and a file without any host.

Recipes call `python -m rft_ds check-hostfile "$HOSTFILE"` before launching.
"""

from __future__ import annotations

import argparse
import os
import re

from rft_ds.errors import ConfigError

_HOST = re.compile(r"^[A-Za-z0-9_.:\[\]%-]+$")  # hostnames, IPv4, IPv6 (with brackets or zone ids)


class HostfileError(ConfigError):
    def __init__(self, path: str, line: int | None, problem: str, hint: str = ""):
        self.path, self.line = str(path), line
        where = self.path + (f":{line}" if line is not None else "")
        super().__init__(f"{where}: {problem}" + (f" ({hint})" if hint else ""))


def parse_hostfile(path: str | os.PathLike) -> list[tuple[str, int]]:
    """[(host, slots)] in file order; raises HostfileError naming file:line for anything wrong."""
    path = str(path)
    if not os.path.isfile(path):
        raise HostfileError(path, None, "hostfile not found")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise HostfileError(path, None, f"not UTF-8 text: {e}") from None
    form = "expected '<host> slots=<N>', e.g. 'node-01 slots=8'"
    hosts: list[tuple[str, int]] = []
    first_line: dict[str, int] = {}
    for lineno, raw in enumerate(lines, start=1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        words = text.split()
        host = words[0]
        if "=" in host or not _HOST.match(host):
            raise HostfileError(path, lineno, f"bad host name {host!r}", form)
        slots = [w for w in words[1:] if w.startswith("slots")]
        other = [w for w in words[1:] if not w.startswith("slots")]
        if not slots:
            raise HostfileError(path, lineno, f"host {host!r} has no slots=N", form)
        key, eq, value = slots[0].partition("=")
        if key != "slots" or not eq:
            raise HostfileError(path, lineno, f"bad slots field {slots[0]!r} (no spaces around '=')", form)
        if other or len(slots) > 1:
            extra = (other + slots[1:])[0]
            raise HostfileError(path, lineno, f"unexpected {extra!r} after host {host!r}", form)
        if not re.fullmatch(r"[0-9]+", value):
            raise HostfileError(path, lineno, f"slots must be a whole number, got {value!r}", form)
        n = int(value)
        if n < 1:
            raise HostfileError(path, lineno, f"slots must be >= 1, got {n}",
                                "leave the host out, or use --exclude at launch")
        if host in first_line:
            raise HostfileError(path, lineno, f"duplicate host {host!r} (first on line {first_line[host]})",
                                "list each node once with all its slots")
        first_line[host] = lineno
        hosts.append((host, n))
    if not hosts:
        raise HostfileError(path, None, "no hosts: every line is blank or a comment", form)
    return hosts


def run(a: argparse.Namespace) -> int:
    hosts = parse_hostfile(a.hostfile)
    total = sum(n for _, n in hosts)
    print(f"{a.hostfile}: {len(hosts)} host{'s' * (len(hosts) != 1)}, {total} slots: "
          + ", ".join(f"{h} ({n})" for h, n in hosts))
    if a.world_size is not None and a.world_size != total:
        raise ConfigError(f"{a.hostfile}: {total} slots, but --world-size {a.world_size} was expected")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check-hostfile", help="validate a DeepSpeed hostfile (file:line errors) before launching")
    p.add_argument("hostfile", help="one '<host> slots=<N>' line per node")
    p.add_argument("--world-size", type=int, default=None, help="fail unless the slots add up to this many ranks")
    p.set_defaults(func=run)
