"""The collectives every pass uses, each called by every rank the same number of times, each
wrapped so that a dead or hung peer raises `RankFailure` with a report instead of a bare backend
error. Tensors must be on this rank's device: NCCL reduces accelerator tensors only."""

from __future__ import annotations

import torch

from rft_ds.dist.failure import _guard
from rft_ds.dist.ranks import device, world_size


def _check_device(what: str, t: torch.Tensor) -> None:
    """NCCL reduces accelerator tensors only (a CPU tensor passes on gloo and crashes on GPUs):
    refuse, with the caller's mistake named, a tensor that is not on this rank's device."""
    want = device()
    if t.device != want:
        raise RuntimeError(f"rft-ds bug: collective '{what}' got a tensor on {t.device}, this rank's backend "
                           f"needs {want}; create it with device=engine.device")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks, in place; returns it. One collective on every rank. The tensor
    must be on this rank's device (`device()`, the engine's)."""
    import torch.distributed as dist

    _check_device("all_reduce", t)
    if world_size() > 1:
        _guard("all_reduce", dist.all_reduce, t)
    return t


def all_reduce_max_int(n: int, dev: torch.device | None = None) -> int:
    """The maximum of an integer over all ranks (one collective on every rank)."""
    import torch.distributed as dist

    if world_size() == 1:
        return int(n)
    t = torch.tensor([int(n)], dtype=torch.int64, device=dev if dev is not None else device())
    _check_device("all_reduce(max)", t)
    _guard("all_reduce", dist.all_reduce, t, dist.ReduceOp.MAX)
    return int(t.item())


def all_gather_padded(t: torch.Tensor, pad: float) -> torch.Tensor:
    """[W, n] of every rank's 1-D tensor, each padded with `pad` to the longest (n): two
    collectives on every rank, whatever its length (0 included). On this rank's device."""
    import torch.distributed as dist

    _check_device("all_gather", t)
    n = all_reduce_max_int(t.numel(), t.device)
    padded = torch.full((n,), pad, dtype=t.dtype, device=t.device)
    padded[:t.numel()] = t
    if world_size() == 1:
        return padded.unsqueeze(0)
    out = [torch.empty_like(padded) for _ in range(world_size())]
    _guard("all_gather", dist.all_gather, out, padded)
    return torch.stack(out)


def all_gather_object(obj) -> list:
    import torch.distributed as dist

    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    _guard("all_gather_object", dist.all_gather_object, out, obj)
    return out


def gather_object(obj, dst: int = 0) -> list | None:
    """Every rank's object on rank `dst` (a list, rank order); None elsewhere. One collective on
    every rank; unlike all_gather_object, the other ranks receive nothing."""
    import torch.distributed as dist

    if world_size() == 1:
        return [obj]
    out = [None] * world_size() if dist.get_rank() == dst else None
    _guard("gather_object", dist.gather_object, obj, out, dst)
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

