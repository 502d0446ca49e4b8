"""Atomic file output: a crash never leaves a half-written file that looks whole.

Every output the project writes goes through `atomic_write` (temp file in the same directory,
fsync, rename) or `append_line` (one complete JSON line per call, flushed; `read_jsonl_tail_safe`
drops a torn last line when a run resumes).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temp file beside `path`; on clean exit fsync and rename it over `path`.

    On any exception the temp file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_dir(out_dir: str | os.PathLike, write) -> None:
    """Call write(tmp_dir) on a temp dir beside `out_dir`, give its files the usual permissions (mkdtemp
    makes 0700, safetensors and transformers write 0600), then rename it over `out_dir` (replacing
    it). On any exception the temp dir is removed and `out_dir` is left as it was."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        write(tmp)
        for f in (f for f in tmp.iterdir() if f.is_file()):
            os.chmod(f, 0o666 & ~_UMASK)
        os.chmod(tmp, 0o777 & ~_UMASK)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def dumps_line(obj) -> str:
    """The one JSON-lines encoding used for every file we write (compact, stable key order)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n"


def append_line(path: str | os.PathLike, obj) -> None:
    """Append one JSON line and flush it, so a crash loses at most the line being written."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(dumps_line(obj))
        f.flush()
        os.fsync(f.fileno())


def iter_jsonl(path: str | os.PathLike, fail: Callable[[int | None, str], Exception],
               encoding: str = "utf-8", torn_tail_ok: bool = False) -> Iterator[tuple[int, object]]:
    """Every non-blank line of a JSON-lines file as (line number, parsed value): the one reader loop
    of the project. `fail(line, message)` builds the exception for a line that is not JSON (or a
    file that is not UTF-8 text: line None), so each reader keeps its own error type and wording.
    `torn_tail_ok`: an unterminated last line that does not parse (a crash mid-append) ends the file."""
    try:
        with open(path, encoding=encoding) as f:
            for line, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    value = json.loads(raw)
                except json.JSONDecodeError as e:
                    if torn_tail_ok and not raw.endswith("\n"):
                        return
                    raise fail(line, f"malformed JSON: {e.msg} at column {e.colno}") from None
                except RecursionError:
                    raise fail(line, "malformed JSON: nested too deeply") from None
                yield line, value
    except UnicodeDecodeError as e:  # decoded in blocks, ahead of the lines read: no line number to give
        raise fail(None, f"not UTF-8 text ({e.reason})") from None


def read_jsonl_tail_safe(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file we appended to; a torn (unterminated) last line is dropped."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break  # torn tail from a crash mid-write
            if line.strip():
                rows.append(json.loads(line))
    return rows


def file_digest(path: str | os.PathLike, chars: int = 16) -> str:
    """The first `chars` hex digits of the file's sha256 (read in 1 MiB blocks)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:chars]


def command_line() -> str:
    """The command as the user typed it (`rft-ds ...`), without the launcher's --local_rank."""
    import sys

    return " ".join(["rft-ds"] + [a for a in sys.argv[1:] if not a.startswith("--local_rank")])


def fault_point(name: str, index: int) -> None:
    """Crash-test hook: with RFT_DS_FAULT=<name>:<index> in the environment, rank 0 SIGKILLs itself
    here (the launcher then takes the other ranks down), exactly as a node failure would. The
    reliability tests use it to kill a run at a known point; it does nothing otherwise."""
    spec = os.environ.get("RFT_DS_FAULT")
    if spec and spec == f"{name}:{index}" and os.environ.get("RANK", "0") == "0":
        import signal

        print(f"RFT_DS_FAULT: killing rank 0 at {spec}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
