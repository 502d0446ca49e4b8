"""`rft-ds` / `python -m rft_ds`: one argparse subcommand per pass.

Each command module exposes `register(subparsers)`, which adds its parser and sets
`func=<callable(args) -> int>`. Modules keep heavy imports (torch, deepspeed, transformers) inside
their run functions so `rft-ds --help` and the data tools start fast.

Under `deepspeed --module rft_ds ...` the launcher inserts `--local_rank=N` before the subcommand;
the top-level parser accepts and ignores it (the rank comes from the LOCAL_RANK environment).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from rft_ds.errors import RftDsError

# Order is the order of `rft-ds --help`.
COMMAND_MODULES = [
    "rft_ds.tools.tiny",        # tiny-model
    "rft_ds.tools.fetch_model", # fetch-model
    "rft_ds.tools.preprocess",  # preprocess
    "rft_ds.train.cli",         # train, shad-train
    "rft_ds.label.cli",         # label
    "rft_ds.tools.view",        # view
    "rft_ds.tools.plot",        # plot
    "rft_ds.tools.convert",     # convert
    "rft_ds.tools.evaluate",    # evaluate
    "rft_ds.tools.memory",      # estimate-memory
    "rft_ds.tools.hostfile",    # check-hostfile
    "rft_ds.train.lora",        # merge-lora
    "rft_ds.demo.generate",     # demo-data
    "rft_ds.demo.warmup",       # demo-warmup-data
    "rft_ds.demo.report",       # demo-report
    "rft_ds.demo.compare",      # compare-report
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rft-ds",
        description="SHAD token labeling + RFT loss (arXiv 2412.14780) on DeepSpeed ZeRO-3.",
    )
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:  # a command module not written yet
            if e.name == name:
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    rc = _run(args)
    if "torch" in sys.modules:  # commands that started a process group end it (rft_ds/dist/group.py: shutdown)
        from rft_ds import dist

        dist.shutdown(ok=rc == 0)
        dist.exit_now(rc)  # with peers: leave here, past the teardown that can abort
    return rc


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except RftDsError as e:
        _note_for_peers(e)
        print(f"rft-ds {args.command}: error: {e}", file=sys.stderr, flush=True)
        return 2
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        _note_for_peers(e)
        print(f"rft-ds {args.command}: error: cannot write {e.filename or 'output'}: {e.strerror}; free space "
              "(or fix the filesystem) and rerun the same command: finished work is kept", file=sys.stderr, flush=True)
        return 2


def _note_for_peers(e: BaseException) -> None:
    """Leave the cause where the other ranks' failure reports can name it (multi-rank runs only)."""
    if "torch" in sys.modules:
        from rft_ds import dist

        dist.note_error(e)


if __name__ == "__main__":
    sys.exit(main())
