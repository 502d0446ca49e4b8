"""Multi-node launches for real, on one machine: two "nodes" with one CPU rank each.

(a) `--no_ssh --node_rank N`: one DeepSpeed launcher per node, started concurrently (what a SLURM
    `srun` per node does), each running the tiny RFT recipe's command.
(b) DeepSpeed's default pdsh launcher over ssh: a private sshd (throw-away host and user keys,
    listening on 127.0.0.1 and 127.0.0.2) and a hostfile listing both addresses. pdsh starts each
    node's launcher in a fresh ssh login environment, so an environment variable reaches the ranks
    only through the `.deepspeed_env` that recipes/common.sh writes; a probe (sitecustomize.py on
    the forwarded PYTHONPATH) records what every rank process saw.

The ssh client is pointed at the private sshd with `PDSH_SSH_ARGS_APPEND="-F <config>"` (pdsh adds
it to every ssh command), so the user's ~/.ssh is neither read for this nor modified.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from launchutil import ROOT, env, free_port, head_lines, metrics, write_random_masks

pytestmark = pytest.mark.launch
TWO_NODES = "127.0.0.1 slots=1\n127.0.0.2 slots=1\n"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_dir):
    d = tmp_path_factory.mktemp("multinode")
    data = head_lines(ROOT / "data" / "demo" / "train.jsonl", d / "train.jsonl", 16)
    masks = d / "masks.jsonl"
    write_random_masks(data, tiny_dir, masks, seed=3, max_seq_len=1024)
    hostfile = d / "hostfile"
    hostfile.write_text(TWO_NODES)
    return {"dir": d, "data": data, "masks": masks, "model": tiny_dir, "hostfile": hostfile}


def recipe_env(setup, out: Path, **extra) -> dict:
    e = env({"HOSTFILE": str(setup["hostfile"]), "MASTER_ADDR": "127.0.0.1", "MODEL": str(setup["model"]),
             "DATA": str(setup["data"]), "OUT": str(out), "MAX_SEQ_LEN": "1024", **extra})
    e.pop("EXTRA_ARGS", None)
    e.pop("DS_CONFIG", None)
    return e


def _check_run(run_dir: Path, steps: int, micro: int) -> list[dict]:
    from transformers import AutoModelForCausalLM

    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    assert all(r["samples"] == 2 * micro for r in rows), rows  # 2 nodes x 1 rank x micro-batch
    run = json.loads((run_dir / "run.json").read_text())
    assert run["world_size"] == 2 and run["ds_config"]["zero_optimization"]["stage"] == 3
    assert run["ds_config"]["train_batch_size"] == 2 * micro
    AutoModelForCausalLM.from_pretrained(run_dir / "final")
    return rows


# --------------------------------------------------------------------------------------------- (a)
def test_two_nodes_no_ssh(setup):
    """Two launchers, `--no_ssh --node_rank 0/1`, one per "node", running `recipes/3_rft.sh tiny`."""
    out = setup["dir"] / "no_ssh"
    port = str(free_port())
    procs, logs = [], []
    t0 = time.time()
    for node in (0, 1):
        e = recipe_env(setup, out, MASTER_PORT=port, LAUNCH_EXTRA=f"--no_ssh --node_rank {node}",
                       MASKS=str(setup["masks"]), MAX_STEPS="2", MICRO_BATCH="2")
        log = open(setup["dir"] / f"no_ssh-node{node}.log", "w+")
        logs.append(log)
        procs.append(subprocess.Popen(["bash", str(ROOT / "recipes" / "3_rft.sh"), "tiny"], env=e, cwd=ROOT,
                                      stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
    try:
        rcs = [p.wait(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    text = []
    for log in logs:
        log.seek(0)
        text.append(log.read())
        log.close()
    assert rcs == [0, 0], "\n\n".join(f"node {i} (rc {rc}):\n{t[-4000:]}" for i, (rc, t) in enumerate(zip(rcs, text)))
    print(f"two --no_ssh launchers: {time.time() - t0:.1f}s")
    assert "node_rank=1" in text[1] and "node_rank=0" in text[0]
    rows = _check_run(out / "rft", steps=2, micro=2)
    assert all(r["tokens_b"] + r["tokens_r"] == r["tokens"] for r in rows)


# --------------------------------------------------------------------------------------------- (b)
def _have_ssh_tools() -> bool:
    return bool(shutil.which("sshd") or os.path.exists("/usr/sbin/sshd")) and bool(shutil.which("pdsh")) \
        and bool(shutil.which("ssh")) and bool(shutil.which("ssh-keygen"))


def _install_ssh_tools() -> str | None:
    """apt-get install openssh-server pdsh (root only). Returns why not, or None when installed."""
    if _have_ssh_tools():
        return None
    if os.geteuid() != 0:
        return "openssh-server/pdsh are not installed and this user cannot apt-get install them"
    if not shutil.which("apt-get"):
        return "openssh-server/pdsh are not installed and there is no apt-get"
    e = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "openssh-server", "openssh-client", "pdsh"]
    r = subprocess.run(cmd, env=e, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
    if r.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=e, capture_output=True, stdin=subprocess.DEVNULL, timeout=600)
        r = subprocess.run(cmd, env=e, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
    if not _have_ssh_tools():
        return f"apt-get install openssh-server pdsh failed (rc {r.returncode}): {(r.stdout + r.stderr)[-500:]}"
    return None


def _skip(reason: str):
    print(f"SKIP pdsh/ssh multi-node test: {reason}", flush=True)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A private sshd on 127.0.0.1 and 127.0.0.2 (one free port), stopped by its pid file at the end."""
    why = _install_ssh_tools()
    if why:
        _skip(why)
    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    d = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True,
                       stdin=subprocess.DEVNULL)
    shutil.copy(d / "user_key.pub", d / "authorized_keys")
    if not os.path.isdir("/run/sshd"):  # sshd's privilege-separation directory
        try:
            os.makedirs("/run/sshd", mode=0o755)
        except OSError as e:
            _skip(f"cannot create /run/sshd ({e})")
    port = free_port()
    (d / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
ListenAddress 127.0.0.2
HostKey {d / 'host_key'}
PidFile {d / 'sshd.pid'}
AuthorizedKeysFile {d / 'authorized_keys'}
UsePAM no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
LogLevel ERROR
""")
    (d / "ssh_config").write_text(f"""Host 127.0.0.1 127.0.0.2
  Port {port}
  IdentityFile {d / 'user_key'}
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  BatchMode yes
  LogLevel ERROR
""")
    r = subprocess.run([sshd_bin, "-f", str(d / "sshd_config"), "-E", str(d / "sshd.log")], capture_output=True,
                       text=True, stdin=subprocess.DEVNULL, timeout=30)
    if r.returncode != 0:
        _skip(f"sshd would not start (rc {r.returncode}): {r.stderr.strip()[-500:]}")
    pidfile = d / "sshd.pid"
    try:
        ok, last = False, ""
        for _ in range(50):
            c = subprocess.run(["ssh", "-F", str(d / "ssh_config"), "127.0.0.2", "echo ok"], capture_output=True,
                               text=True, stdin=subprocess.DEVNULL, timeout=20)
            if c.returncode == 0 and c.stdout.strip() == "ok":
                ok = True
                break
            last = c.stderr.strip()
            time.sleep(0.2)
        if not ok:
            log = (d / "sshd.log").read_text() if (d / "sshd.log").exists() else ""
            pytest.fail(f"sshd started but ssh to 127.0.0.2:{port} fails: {last}\n{log[-1500:]}")
        yield {"dir": d, "ssh_config": d / "ssh_config", "port": port}
    finally:
        if pidfile.exists():
            pid = int(pidfile.read_text().split()[0])
            try:
                os.kill(pid, signal.SIGTERM)
                for _ in range(50):
                    os.kill(pid, 0)
                    time.sleep(0.1)
            except ProcessLookupError:
                pass


PROBE = '''import json, os, time
if os.environ.get("RANK") is not None and os.environ.get("RFT_DS_PROBE_DIR"):
    keys = ("RANK", "RFT_DS_PROBE", "RFT_DS_FROM_CWD_FILE", "HF_HOME", "SSH_CONNECTION", "PATH")
    rec = {k: os.environ.get(k) for k in keys}
    path = os.path.join(os.environ["RFT_DS_PROBE_DIR"], "rank%s-%d.json" % (os.environ["RANK"], os.getpid()))
    with open(path, "w") as f:
        json.dump(rec, f)
'''


def test_two_nodes_pdsh_over_ssh(setup, sshd):
    """DeepSpeed's pdsh launcher over real ssh: `recipes/1_shad.sh tiny` on a 2-host hostfile."""
    d = setup["dir"] / "pdsh"
    probe_dir, site, caller = d / "probe", d / "site", d / "caller"
    for p in (probe_dir, site, caller):
        p.mkdir(parents=True)
    (site / "sitecustomize.py").write_text(PROBE)
    # a .deepspeed_env in the directory the recipe is started from: common.sh copies its lines
    (caller / ".deepspeed_env").write_text("RFT_DS_FROM_CWD_FILE=yes\n")
    out = d / "run"
    hf_home = d / "hf_home"
    e = recipe_env(setup, out, MASTER_PORT=str(free_port()), LAUNCH_EXTRA="--no_ssh_check",
                   MAX_STEPS="1", MICRO_BATCH="1", SHUFFLE_FRACTION="0.5",
                   PDSH_SSH_ARGS_APPEND=f"-F {sshd['ssh_config']}",
                   # PYTHON* reach the nodes by themselves; RFT_DS_* and HF_* only via .deepspeed_env
                   PYTHONPATH=str(site), RFT_DS_PROBE_DIR=str(probe_dir), RFT_DS_PROBE="arrived",
                   HF_HOME=str(hf_home))
    t0 = time.time()
    r = subprocess.run(["bash", str(ROOT / "recipes" / "1_shad.sh"), "tiny"], env=e, cwd=caller,
                       capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    text = r.stdout + r.stderr
    assert r.returncode == 0, text[-6000:]
    print(f"pdsh launch over ssh: {time.time() - t0:.1f}s")
    assert "pdsh -S -f" in text and "127.0.0.1,127.0.0.2" in text, "the pdsh launcher ran"
    _check_run(out / "shad", steps=1, micro=1)

    recs = [json.loads(p.read_text()) for p in sorted(probe_dir.glob("rank*.json"))]
    by_rank = {rec["RANK"]: rec for rec in recs}
    assert set(by_rank) == {"0", "1"}, recs
    for rank, host in (("0", "127.0.0.1"), ("1", "127.0.0.2")):
        rec = by_rank[rank]
        # started by sshd on that "node": SSH_CONNECTION = client_ip client_port server_ip server_port
        assert rec["SSH_CONNECTION"] and rec["SSH_CONNECTION"].split()[2:] == [host, str(sshd["port"])], rec
        assert rec["RFT_DS_PROBE"] == "arrived", rec          # DS_ENV_FORWARD -> .deepspeed_env
        assert rec["RFT_DS_FROM_CWD_FILE"] == "yes", rec      # the caller's ./.deepspeed_env
        assert rec["HF_HOME"] == str(hf_home), rec
        assert rec["PATH"].split(os.pathsep)[0] == e["PATH"].split(os.pathsep)[0], rec  # the venv's bin
