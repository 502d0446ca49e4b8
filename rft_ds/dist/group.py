"""The process group's lifecycle: `init` (DeepSpeed's init_distributed, a world of one for a
plain process), `shutdown` and `exit_now` at the end of a command (why they are as they are: the
package docstring, "Teardown")."""

from __future__ import annotations

import datetime
import os
import sys

from rft_ds.dist.collectives import barrier
from rft_ds.dist.failure import _install_failure_reporting
from rft_ds.dist.host import _unlink_shm_segment, cpu_threads, warn_stale_build_locks
from rft_ds.dist.ranks import DEFAULT_TIMEOUT_MIN, _state, free_port, local_rank, world_size


def init(timeout_min: float = DEFAULT_TIMEOUT_MIN) -> None:
    """Initialise torch.distributed through DeepSpeed (nccl on GPU, gloo on CPU)."""
    import deepspeed
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return
    if "RANK" not in os.environ:  # plain single process: a world of one
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_SIZE="1",
                          MASTER_ADDR=os.environ.get("MASTER_ADDR", "127.0.0.1"))
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    from deepspeed.accelerator import get_accelerator

    acc = get_accelerator()
    if acc.device_name() != "cpu":
        acc.set_device(local_rank())
    else:
        cpu_threads()
    _state["timeout_min"] = float(timeout_min)
    warn_stale_build_locks()
    deepspeed.init_distributed(timeout=datetime.timedelta(minutes=timeout_min), auto_mpi_discovery=False)
    if acc.device_name() == "cpu":
        _unlink_shm_segment()
    if world_size() > 1:
        _state["multi_rank"] = True
        _install_failure_reporting()


def shutdown(ok: bool) -> None:
    """End this process's part in the process group (see the module docstring). No-op without one."""
    import torch.distributed as tdist

    if not (tdist.is_available() and tdist.is_initialized()):
        return
    if ok:
        if world_size() > 1:
            barrier()  # every rank finished its collectives: nobody destroys a group a peer still uses
        hb = _state["hb"]
        if hb is not None:
            hb.close()
            _state["hb"] = None
        tdist.destroy_process_group()
    elif world_size() == 1:
        tdist.destroy_process_group()  # no peer to wait for: safe, and the exit stays clean


def exit_now(code: int) -> None:
    """End a command that ran on more than one rank: flush what was printed and leave with `code`,
    skipping the interpreter teardown (returns at once in a world of one). After a failure a peer
    may still be inside a collective; after a success the group is already destroyed, yet CI still
    saw a rank abort at exit, after its work was saved, with "terminate called without an active
    exception" (threads of torch/gloo/DeepSpeed objects destroyed un-joined during finalization).
    Every output is written and closed before this point, so nothing is lost by skipping it."""
    if _state["multi_rank"]:
        import logging

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

