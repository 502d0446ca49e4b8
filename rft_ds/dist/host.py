"""Host workarounds for DeepSpeed on CPU: intra-op threads per rank, the leaked shm segment, stale
JIT-build locks. Each is a measured problem on these machines; the docstrings say which."""

from __future__ import annotations

import contextlib
import os
import time

import torch

from rft_ds.dist.ranks import local_rank, rank, warn_all, world_size


def cpu_threads() -> int:
    """On CPU, give each local rank its share of this process's cores as intra-op threads (torch's
    default is every core per rank: 2 ranks on 2 cores ran label's forward loop 30% slower,
    BENCHMARKS.md figure 3). OMP_NUM_THREADS, when set, wins (DeepSpeed's --bind_cores_to_rank sets
    it). Returns the thread count in force."""
    if "OMP_NUM_THREADS" not in os.environ:
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // max(1, int(os.environ.get("LOCAL_SIZE", 1)))))
    return torch.get_num_threads()


def shm_segment_path(r: int | None = None) -> str:
    """The POSIX shm segment DeepSpeed's CPU all-reduce (deepspeed_shm_comm) makes for rank r."""
    return (f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
            f"{os.environ.get('MASTER_PORT', '')}_{rank() if r is None else r}")


def _unlink_shm_segment() -> None:
    """On CPU with every rank on one machine, `init_distributed` loads DeepSpeed's shared-memory
    all-reduce, which creates one ~66 MB segment in /dev/shm per rank and never unlinks it: every
    launch leaked 66 MB x ranks of RAM (19 GB in /dev/shm after a day of tests here). Inside
    `init_distributed` every rank has mapped every peer's segment, so after a barrier the names can
    go: the mappings stay valid and the memory is freed when the last rank exits, SIGKILL included."""
    import torch.distributed as tdist

    if world_size() > 1:
        tdist.barrier()
    with contextlib.suppress(OSError):
        os.unlink(shm_segment_path())


def warn_stale_build_locks(max_age_s: float = 600.0) -> list[str]:
    """A process killed while JIT-building a DeepSpeed op leaves `<TORCH_EXTENSIONS_DIR>/<op>/lock`
    behind, and every later launch then waits for it forever without a word. Warn about lock files
    older than `max_age_s` (a build takes minutes); returns their paths."""
    import glob

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "torch_extensions")
    old = []
    for p in glob.glob(os.path.join(root, "*", "lock")) + glob.glob(os.path.join(root, "*", "*", "lock")):
        with contextlib.suppress(OSError):
            if time.time() - os.path.getmtime(p) > max_age_s:
                old.append(p)
    if old and local_rank() == 0:
        warn_all(f"stale JIT-build lock file(s) {', '.join(old)}: left by a process killed while building a "
                 "DeepSpeed op; if no build is running, delete them, or this launch waits for them forever")
    return old

