"""Teardown: a command that succeeded destroys its process group before the interpreter exits.

A process that exits with a live gloo group can abort at exit ("terminate called without an active
exception", exit -6) after its work is done and saved: the group's worker threads are destroyed
un-joined (pytorch/pytorch#190489). CI saw exactly that once in ~60 launches. The abort is a race,
so these tests check the mechanism that rules it out, deterministically: after the command, no
process group and no heartbeat thread are left, on one rank and on two.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from launchutil import BIN, ROOT, env, free_port

PROBE = textwrap.dedent("""
    import os, sys, threading
    import torch, torch.distributed as td
    import deepspeed.comm as dscomm
    from rft_ds import dist
    dist.init(1.0)
    t = torch.ones(1)
    dist.all_reduce_sum(t)
    assert t.item() == dist.world_size(), t
    # DeepSpeed's CPU shm all-reduce keeps working after its /dev/shm names are gone (none leak)
    assert not any(os.path.exists(dist.shm_segment_path(r)) for r in range(dist.world_size()))
    u = torch.full((1000,), float(dist.rank() + 1))
    dscomm.inference_all_reduce(u)
    assert torch.all(u == sum(range(1, dist.world_size() + 1))), u[:4]
    if dist.world_size() > 1:
        assert dist._state["hb"] is not None and dist._state["hb"].thread.is_alive()
    hb = dist._state["hb"]
    dist.shutdown(ok=True)
    assert not td.is_initialized(), "process group still alive after shutdown"
    assert dist._state["hb"] is None and (hb is None or not hb.thread.is_alive()), "heartbeat thread still running"
    dist.shutdown(ok=True)  # a second call is a no-op
    print(f"rank {dist.rank()} of {dist.world_size()}: torn down", flush=True)
    dist.exit_now(0)  # with peers: leave past the interpreter teardown, as the CLI does
    assert dist.world_size() == 1, "exit_now returned on more than one rank"
""")


def _probe_file(tmp_path):
    p = tmp_path / "probe.py"
    p.write_text(PROBE)
    return p


def test_shutdown_single_process(tmp_path):
    r = subprocess.run([sys.executable, str(_probe_file(tmp_path))], cwd=ROOT, env=env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rank 0 of 1: torn down" in r.stdout


@pytest.mark.launch
def test_shutdown_two_ranks(tmp_path):
    cmd = [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), str(_probe_file(tmp_path))]
    r = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "rank 0 of 2: torn down" in out and "rank 1 of 2: torn down" in out
    assert "terminate called" not in out


def test_cli_destroys_the_group_it_started(tiny_dir, demo_slice, tmp_path):
    """`rft-ds train` in a plain process starts a world of one; main() must leave no group behind."""
    code = textwrap.dedent(f"""
        import torch.distributed as td
        from rft_ds.cli import main
        rc = main(["train", "--model", {str(tiny_dir)!r}, "--data", {str(demo_slice)!r}, "--output",
                   {str(tmp_path / 'run')!r}, "--max-steps", "1", "--micro-batch-size", "2", "--lr", "1e-3",
                   "--max-seq-len", "256"])
        print("rc", rc, "initialized", td.is_initialized())
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "rc 0 initialized False" in r.stdout
    assert (tmp_path / "run" / "final" / "config.json").exists()


@pytest.mark.parametrize("local_size,omp,expect", [("2", None, "half"), ("1", None, "all"), ("2", "1", "1")])
def test_cpu_threads_share_the_cores_among_local_ranks(local_size, omp, expect):
    code = ("import os, torch; from rft_ds import dist; n = dist.cpu_threads(); "
            "print(n, len(os.sched_getaffinity(0)), torch.get_num_threads())")
    e = env({"LOCAL_SIZE": local_size})
    e.pop("OMP_NUM_THREADS", None)
    if omp:
        e["OMP_NUM_THREADS"] = omp
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=e, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    n, cores, now = map(int, r.stdout.split())
    assert n == now
    assert n == {"half": max(1, cores // 2), "all": cores, "1": 1}[expect]


SIGTERM_PROBE = textwrap.dedent("""
    import datetime, os, sys, time
    from torch.distributed import TCPStore
    store = TCPStore("127.0.0.1", int(os.environ["MASTER_PORT"]), is_master=True, wait_for_workers=False,
                     timeout=datetime.timedelta(seconds=10))
    from rft_ds.dist import failure
    failure._install_failure_reporting()
    hb = failure._state["hb"]
    assert hb is not None
    hold = sys.argv[1] == "hold"
    if hold:
        hb.lock.acquire()  # as if the main thread were inside a store call when the signal came
    print("ready", flush=True)
    while True:
        sys.stderr.write("the interrupted code writing to stderr\\n")
        time.sleep(0.001)
""")


@pytest.mark.parametrize("hold", ["hold", "free"])
def test_sigterm_names_itself_and_exits_even_mid_store_call(tmp_path, hold):
    """The launcher SIGTERMs the survivors once a rank died: each must print its one line and die,
    whatever its main thread was doing: writing to stderr, or holding the heartbeat lock that the
    exit note needs (not reentrant: waiting on it would hang the rank until the launcher's SIGKILL)."""
    import signal
    import time

    port = free_port()
    e = env({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1",
             "RFT_DS_HEARTBEAT_S": "0.2"})
    p = subprocess.Popen([str(BIN / "python"), "-u", "-c", SIGTERM_PROBE, hold], cwd=ROOT, env=e,
                         stdout=subprocess.PIPE, stderr=open(tmp_path / "err.txt", "w"), text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # heartbeats running, stderr being written
        t0 = time.time()
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=20)
        took = time.time() - t0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    err = (tmp_path / "err.txt").read_text()
    assert rc == -signal.SIGTERM, (rc, err[-2000:])
    assert took < 5, took  # not stuck on the lock
    assert err.count("[rank 0] received SIGTERM: the launcher stops every rank") == 1, err[-2000:]
