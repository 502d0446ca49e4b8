"""Failure reports: heartbeats in the rendezvous store, exit notes, and the report a failed
collective raises (`RankFailure`), naming this rank, the collective, the wait, the timeout in force
and which peers are gone. See the package docstring for the whole picture."""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import socket
import sys
import threading
import time

from rft_ds.dist.ranks import _state, rank, warn_all, world_size
from rft_ds.errors import RftDsError

HEARTBEAT_ENV = "RFT_DS_HEARTBEAT_S"
DEFAULT_HEARTBEAT_S = 2.0
_KEY = "rft_ds/"
# substrings of gloo / NCCL / c10d errors raised when a peer is gone or the timeout expired
_COMM_MARKERS = ("gloo", "nccl", "connection reset", "connection closed", "closed by peer", "connection refused",
                 "broken pipe", "timed out", "timeout", "pair closure", "watchdog", "tcpstore", "c10d")


class RankFailure(RftDsError, RuntimeError):
    """A collective failed because a peer rank died, hung or exited; the message says which."""


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

    def note(self, kind: str, text: str, wait: float = -1) -> None:
        """Record this rank's exit note; `wait` >= 0: give up after that many seconds for the lock (a
        signal handler: the interrupted main thread may hold it, and the lock is not reentrant)."""
        if not self.lock.acquire(timeout=wait):
            return
        try:
            self.store.set(f"{_KEY}exit/{rank()}", f"{kind} {text}"[:600])
        finally:
            self.lock.release()

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
    # the line first, straight to fd 2: no Python stream (the interrupted code may be writing to it)
    with contextlib.suppress(Exception):
        os.write(2, (f"[rank {rank()}] received SIGTERM: the launcher stops every rank once one rank has exited; "
                     "the cause is the first error in the ranks' logs (a rank killed without a message shows only "
                     "in the launcher's 'exits with return code' line: check the OOM killer (dmesg) or the "
                     "scheduler)\n").encode())
    hb = _state["hb"]
    if hb is not None:
        with contextlib.suppress(Exception):
            hb.note("peer", "stopped by SIGTERM", wait=0.5)
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

