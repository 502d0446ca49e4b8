"""The only module that knows about process groups and the DeepSpeed engine.

Every command runs either under the `deepspeed` launcher (RANK/WORLD_SIZE/... set) or as a plain
single process, for which `init()` fills in a world of size 1 on a free local port, so the same
code path (DeepSpeed engine, ZeRO-3, collectives) runs in both.

Collectives here are always called by every rank the same number of times; callers pad uneven
work instead of skipping a collective. The process-group timeout is finite (`--dist-timeout-min`,
default 120 min: long enough for rank 0 to write a 140 GB consolidated save) and a collective that
fails because a peer died raises `RankFailure`, naming what we know, instead of hanging.
"""

from __future__ import annotations

import datetime
import os
import socket
import sys

import torch

DEFAULT_TIMEOUT_MIN = 120.0


class RankFailure(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init(timeout_min: float = DEFAULT_TIMEOUT_MIN) -> None:
    """Initialise torch.distributed through DeepSpeed (nccl on GPU, gloo on CPU)."""
    import deepspeed
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return
    if "RANK" not in os.environ:  # plain single process: a world of one
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_SIZE="1",
                          MASTER_ADDR=os.environ.get("MASTER_ADDR", "127.0.0.1"))
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    from deepspeed.accelerator import get_accelerator

    acc = get_accelerator()
    if acc.device_name() != "cpu":
        acc.set_device(local_rank())
    deepspeed.init_distributed(timeout=datetime.timedelta(minutes=timeout_min), auto_mpi_discovery=False)


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


def _guard(what: str, fn, *args):
    try:
        return fn(*args)
    except Exception as e:  # gloo/nccl report a dead peer as a RuntimeError/DistBackendError
        raise RankFailure(f"rank {rank()}/{world_size()}: collective '{what}' failed: a peer rank is gone or "
                          f"timed out ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
                          "Check the other ranks' logs for the first error.") from e


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks, in place; returns it. One collective on every rank."""
    import torch.distributed as dist

    if world_size() > 1:
        _guard("all_reduce", dist.all_reduce, t)
    return t


def all_gather_object(obj) -> list:
    import torch.distributed as dist

    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    _guard("all_gather_object", dist.all_gather_object, out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    import torch.distributed as dist

    if world_size() == 1:
        return obj
    box = [obj]
    _guard("broadcast_object", dist.broadcast_object_list, box, src)
    return box[0]


def barrier() -> None:
    import torch.distributed as dist

    if world_size() > 1:
        _guard("barrier", dist.barrier)


def log(msg: str) -> None:
    """Print on rank 0 only."""
    if is_main():
        print(msg, flush=True)


def warn_all(msg: str) -> None:
    print(f"[rank {rank()}] {msg}", file=sys.stderr, flush=True)
