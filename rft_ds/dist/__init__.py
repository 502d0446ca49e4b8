"""The only package that knows about process groups: one owner of every distributed concern.

    ranks.py        who this process is (rank, world, device), rank-0 logging, free_port
    group.py        the process group's lifecycle: init, shutdown, exit_now
    collectives.py  all_reduce_sum, all_reduce_max_int, all_gather_padded, all_gather_object, broadcast_object,
                    barrier
    failure.py      heartbeats, exit notes and the RankFailure report of a failed collective
    host.py         CPU workarounds: threads per rank, DeepSpeed's leaked shm segment, stale build locks

Callers write `from rft_ds import dist` and `dist.init(...)`, `dist.all_reduce_sum(t)`, ...

Every command runs either under the `deepspeed` launcher (RANK/WORLD_SIZE/... set) or as a plain
single process, for which `init()` fills in a world of size 1 on a free local port, so the same
code path (DeepSpeed engine, ZeRO-3, collectives) runs in both.

Collectives here are always called by every rank the same number of times; callers pad uneven
work instead of skipping a collective. The process-group timeout is finite (`--dist-timeout-min`,
default 120 min: long enough for rank 0 to write a 140 GB consolidated save).

A dead rank is reported, never a silent hang (docs/reliability.md). With more than one rank:
  * every rank runs a heartbeat thread that bumps a counter in the rendezvous store
    (MASTER_ADDR:MASTER_PORT, hosted by rank 0) every RFT_DS_HEARTBEAT_S seconds (default 2; 0 off)
    over its own store connection, and records an uncaught error there before it exits;
  * a collective that fails (a peer's socket closed, or the process-group timeout) raises
    `RankFailure` from the wrappers below; a collective inside DeepSpeed/torch that fails reaches
    the process's excepthook, which prints the same report after the traceback. The report names
    this rank and host, the collective, how long it waited, the timeout in force, and which peers
    stopped sending heartbeats (or exited with which error), and tells the user to check their logs;
  * SIGTERM (the launcher stopping the survivors once one rank died) prints one line saying so.

Teardown (`shutdown`, called by the CLI when a command ends): a process that exits with a live gloo
process group may abort at interpreter exit with "terminate called without an active exception"
(SIGABRT, exit -6): its worker threads are destroyed un-joined when the group's destructor never
runs (pytorch/pytorch#190489; the c10d tests' own fix, #65513, is an explicit destroy). So a command
that succeeded meets its peers at a barrier, stops its heartbeat and destroys the process group.
A command that failed does not destroy it (a destroy can wait on peers still inside a collective:
torchtitan#1342). With peers, either way, the process then flushes its output and leaves with
`os._exit` (`exit_now`), skipping the interpreter teardown where the abort happens (the destroy
alone did not stop it: CI saw it again), so its exit status is its own (2 for a clear error).
"""


from rft_ds.dist.collectives import (all_gather_object, all_gather_padded, all_reduce_max_int, all_reduce_sum, barrier,
                                    broadcast_object, gather_object)
from rft_ds.dist.failure import (DEFAULT_HEARTBEAT_S, HEARTBEAT_ENV, RankFailure, describe_failure,
                                 looks_like_comm_failure, note_error, note_exit, peer_report)
from rft_ds.dist.group import exit_now, init, shutdown
from rft_ds.dist.host import cpu_threads, shm_segment_path, warn_stale_build_locks
from rft_ds.dist.ranks import (DEFAULT_TIMEOUT_MIN, device, free_port, is_main, local_rank, log, on_gpu,
                               rank, warn_all, world_size)
from rft_ds.dist.ranks import _state  # noqa: F401 (the shared state; tests patch it)

__all__ = ["DEFAULT_HEARTBEAT_S", "DEFAULT_TIMEOUT_MIN", "HEARTBEAT_ENV", "RankFailure", "all_gather_object",
           "all_gather_padded", "all_reduce_max_int", "all_reduce_sum", "barrier", "broadcast_object", "cpu_threads", "describe_failure",
           "device", "exit_now", "free_port", "gather_object", "init", "is_main", "local_rank", "log", "looks_like_comm_failure",
           "note_error", "note_exit", "on_gpu", "peer_report", "rank", "shm_segment_path", "shutdown",
           "warn_all", "warn_stale_build_locks", "world_size"]
