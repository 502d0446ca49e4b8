"""The only module that knows about process groups and the DeepSpeed engine.

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

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import socket
import sys
import threading
import time

import torch

from rft_ds.errors import RftDsError

DEFAULT_TIMEOUT_MIN = 120.0
HEARTBEAT_ENV = "RFT_DS_HEARTBEAT_S"
DEFAULT_HEARTBEAT_S = 2.0
_KEY = "rft_ds/"
# substrings of gloo / NCCL / c10d errors raised when a peer is gone or the timeout expired
_COMM_MARKERS = ("gloo", "nccl", "connection reset", "connection closed", "closed by peer", "connection refused",
                 "broken pipe", "timed out", "timeout", "pair closure", "watchdog", "tcpstore", "c10d")

_state: dict = {"timeout_min": DEFAULT_TIMEOUT_MIN, "hb": None, "terminating": False, "reporting": False,
                "hooked": False, "multi_rank": False}


class RankFailure(RftDsError, RuntimeError):
    """A collective failed because a peer rank died, hung or exited; the message says which."""


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for MASTER_PORT or a launcher's --master_port)."""
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


# ----------------------------------------------------------------------------------------------
# failure reporting: heartbeats, exit notes, the report

class _Heartbeat:
    """A daemon thread bumping `rft_ds/hb/<rank>` = "<count> <host> <pid>" in the rendezvous store."""

    def __init__(self, interval: float):
        from torch.distributed import TCPStore

        self.addr = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        self.store = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                              timeout=datetime.timedelta(seconds=max(10.0, 3 * interval)), wait_for_workers=False)
        self.interval, self.count, self.lock = interval, 0, threading.Lock()
        self.stop = threading.Event()
        self.beat()
        self.thread = threading.Thread(target=self._run, name="rft-ds-heartbeat", daemon=True)
        self.thread.start()

    def beat(self) -> None:
        with self.lock:
            self.count += 1
            self.store.set(f"{_KEY}hb/{rank()}", f"{self.count} {socket.gethostname()} {os.getpid()}")

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self.beat()
            except Exception:  # the store (rank 0) is gone or stuck: keep trying, quietly
                pass

    def _read(self, prefix: str) -> dict[int, str]:
        keys = [f"{_KEY}{prefix}/{r}" for r in range(world_size())]
        with self.lock:
            if self.store.check(keys):  # the usual case: one round trip for all ranks
                return {r: v.decode("utf-8", "replace") for r, v in enumerate(self.store.multi_get(keys))}
            return {r: self.store.get(k).decode("utf-8", "replace") for r, k in enumerate(keys)
                    if self.store.check([k])}

    def beats(self) -> dict[int, tuple[int, str, str]]:
        out = {}
        for r, v in self._read("hb").items():
            n, host, pid = (v.split(" ") + ["?", "?"])[:3]
            out[r] = (int(n), host, pid)
        return out

    def notes(self) -> dict[int, str]:
        return self._read("exit")

    def note(self, kind: str, text: str) -> None:
        with self.lock:
            self.store.set(f"{_KEY}exit/{rank()}", f"{kind} {text}"[:600])

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=2 * self.interval)


def _install_failure_reporting() -> None:
    if _state["hooked"]:
        return
    _state["hooked"] = True
    interval = float(os.environ.get(HEARTBEAT_ENV, DEFAULT_HEARTBEAT_S))
    if interval > 0:
        try:
            _state["hb"] = _Heartbeat(interval)
            import atexit

            atexit.register(_state["hb"].close)
        except Exception as e:  # reporting is a courtesy: never fail a run because of it
            warn_all(f"rank-failure heartbeat disabled ({type(e).__name__}: {e})")
    prev_hook = sys.excepthook

    def hook(tp, val, tb):
        prev_hook(tp, val, tb)
        try:
            _on_uncaught(val, tb)
        except Exception:
            pass

    sys.excepthook = hook
    if threading.current_thread() is threading.main_thread():
        prev = signal.getsignal(signal.SIGTERM)
        if prev is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum, frame) -> None:
    _state["terminating"] = True
    if _state["reporting"]:
        return  # the peer check in progress ends early and the error is raised as usual
    note_exit("peer", "stopped by SIGTERM")
    with contextlib.suppress(Exception):
        warn_all("received SIGTERM: the launcher stops every rank once one rank has exited; the cause is the "
                 "first error in the ranks' logs (a rank killed without a message shows only in the launcher's "
                 "'exits with return code' line: check the OOM killer (dmesg) or the scheduler)")
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def looks_like_comm_failure(e: BaseException) -> bool:
    """Whether an exception is what gloo/NCCL/c10d raise when a peer is gone or the timeout expired."""
    import torch.distributed as dist

    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    if not isinstance(e, RuntimeError):
        return False
    s = str(e).lower()
    return any(m in s for m in _COMM_MARKERS)


def _collective_in(tb) -> str:
    """The innermost torch.distributed collective in a traceback (the one that failed), else the
    innermost DeepSpeed function (ZeRO-3 waits on its own async handles)."""
    c10d = ds = None
    while tb is not None:
        code = tb.tb_frame.f_code
        path = code.co_filename.replace(os.sep, "/")
        if path.endswith("torch/distributed/distributed_c10d.py") and not code.co_name.startswith("_"):
            c10d = f"torch.distributed.{code.co_name}"
        elif "/deepspeed/" in path and code.co_name not in ("wrapped_fn", "wrapper", "log_wrapper"):
            ds = f"DeepSpeed {code.co_name} ({path.rsplit('/', 1)[-1]})"
        tb = tb.tb_next
    return c10d or ds or "a collective inside torch (see the traceback)"


def note_exit(kind: str, text: str) -> None:
    """Tell the other ranks why this rank is about to exit: kind "error" (its own error: the cause) or
    "peer" (it saw another rank fail). The CLI can call this for errors it catches."""
    hb = _state["hb"]
    if hb is not None:
        with contextlib.suppress(Exception):
            hb.note(kind, text)


def note_error(e: BaseException) -> None:
    first = str(e).splitlines()[0] if str(e) else ""
    note_exit("peer" if isinstance(e, RankFailure) else "error", f"{type(e).__name__}: {first}")


def _on_uncaught(val: BaseException, tb) -> None:
    """excepthook: record this rank's error for its peers; explain a failed collective."""
    comm = looks_like_comm_failure(val)
    if comm:
        note_exit("peer", f"{type(val).__name__}: {str(val).splitlines()[0] if str(val) else ''}")
    else:
        note_error(val)
    if comm and not isinstance(val, RankFailure):
        print(describe_failure(_collective_in(tb), val, None), file=sys.stderr, flush=True)


def peer_report(window: float | None = None) -> str:
    """Which peers are gone: a rank whose heartbeat does not advance within `window` seconds (default
    2.5 heartbeats) is dead or hung; a rank that recorded an uncaught error is named with it."""
    hb: _Heartbeat | None = _state["hb"]
    if hb is None:
        return "which rank is gone is unknown (heartbeats are off: RFT_DS_HEARTBEAT_S=0)"
    me, W = rank(), world_size()
    window = 2.5 * hb.interval if window is None else window
    _state["reporting"] = True
    try:
        first = hb.beats()
        alive: set[int] = set()
        t0 = time.time()
        while time.time() - t0 < window and not _state["terminating"]:
            time.sleep(max(0.2, min(1.0, hb.interval / 2)))  # gentle on rank 0's store at scale
            now = hb.beats()
            alive |= {r for r, b in now.items() if r in first and b[0] > first[r][0]}
            if alive >= set(range(W)) - {me}:
                break
        notes = hb.notes()
        waited = time.time() - t0
    except Exception as e:
        return (f"the rendezvous store at {hb.addr} (hosted by rank 0) does not answer "
                f"({type(e).__name__}), so rank 0 or its node is gone")
    finally:
        _state["reporting"] = False
    parts = []
    for r in range(W):
        if r == me:
            continue
        kind, _, text = notes.get(r, " ").partition(" ")
        if kind == "error":
            parts.append(f"rank {r} exited with {text}")
        elif kind == "peer":
            continue  # a fellow survivor that saw the same failure
        elif r not in first:
            parts.append(f"rank {r} never sent a heartbeat")
        elif r not in alive:
            _, host, pid = first[r]
            parts.append(f"rank {r} (host {host}, pid {pid}) sent no heartbeat during a {waited:.1f} s check: killed, "
                         "crashed or hung")
    cut = " (check cut short by SIGTERM)" if _state["terminating"] else ""
    if not parts:
        return f"every other rank still sends heartbeats{cut}; the failure is on the network or in the backend"
    more = f"; and {len(parts) - 8} more ranks" if len(parts) > 8 else ""
    return "lost: " + "; ".join(parts[:8]) + more + cut


def describe_failure(what: str, e: BaseException, elapsed: float | None) -> str:
    first = str(e).splitlines()[0] if str(e) else ""
    waited = f" after {elapsed:.1f} s" if elapsed is not None else ""
    return (f"[rank {rank()}/{world_size()} on {socket.gethostname()}] collective '{what}' failed{waited} "
            f"(process-group timeout {_state['timeout_min']:g} min, --dist-timeout-min): {peer_report()}. "
            f"Backend said: {type(e).__name__}: {first[:300]}. Check the other ranks' logs for the first error; "
            "a rank that died without a message was killed (OOM killer: dmesg; the scheduler) or lost its node.")


def _guard(what: str, fn, *args):
    t0 = time.time()
    try:
        return fn(*args)
    except Exception as e:  # gloo/nccl report a dead peer as a RuntimeError/DistBackendError
        elapsed = time.time() - t0
        note_exit("peer", f"collective '{what}' failed")  # fellow survivors: not the cause
        raise RankFailure(describe_failure(what, e, elapsed)) from e


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
