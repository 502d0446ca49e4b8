"""Who this process is: rank, world, device, and the state the other dist modules share.

Ranks come from the launcher's environment (RANK, LOCAL_RANK, WORLD_SIZE); a plain process is a
world of one (`group.init` fills the variables in).
"""

from __future__ import annotations

import os
import socket
import sys

import torch

from rft_ds.config import DEFAULT_TIMEOUT_MIN

# shared by group (timeout, multi-rank) and failure (heartbeat, reporting flags)
_state: dict = {"timeout_min": DEFAULT_TIMEOUT_MIN, "hb": None, "terminating": False, "reporting": False,
                "hooked": False, "multi_rank": False}


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for MASTER_PORT or a launcher's --master_port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank() -> int:
    return int(os.environ.get("RANK", 0))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    from deepspeed.accelerator import get_accelerator

    return torch.device(get_accelerator().current_device_name())


def on_gpu() -> bool:
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name() != "cpu"


def log(msg: str) -> None:
    """Print on rank 0 only."""
    if is_main():
        print(msg, flush=True)


def warn_all(msg: str) -> None:
    print(f"[rank {rank()}] {msg}", file=sys.stderr, flush=True)

