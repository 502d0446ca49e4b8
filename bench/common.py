"""Shared helpers for the benchmarks in bench/ (not tests).

Every figure is a ratio measured side by side in one run: the two arms of a comparison are
interleaved (A B B A ...) so that load from other processes on a shared machine hits both arms
alike, and each arm's figure is a median over repetitions.

Sizes come from a profile chosen with BENCH_PROFILE:
  cpu (default): the demo-sized tiny Llama (vocab 1000, hidden 128, 2 layers), fp32, 2 CPU ranks.
  gpu:           a larger Llama (hidden 1024, 12 layers), bf16, and tokens/s + MFU are reported
                 (BENCH_PEAK_TFLOPS: the accelerator's dense bf16 peak, default 989 = H100 SXM).
  smollm2:       the real model, SmolLM2-135M (fp32 on CPU), for figure 9 (bench/fig9_real_model.py):
                 MFU against this machine's own matmul ceiling (bench/gemm_ceiling.py).
Individual sizes can be overridden with BENCH_<KEY> (e.g. BENCH_TRAIN_STEPS=40, BENCH_ROUNDS=3).

Work files go to BENCH_WORK (default outputs/bench, git-ignored); results to bench/results.json.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rft_ds.dist import free_port

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BIN = Path(sys.executable).parent
DEMO_TRAIN = ROOT / "data" / "demo" / "train.jsonl"
RESULTS = Path(os.environ.get("BENCH_RESULTS", BENCH / "results.json"))

PROFILES = {
    "cpu": dict(vocab=1000, hidden=128, layers=2, heads=4, precision="fp32",
                # training arms (figures 1, 2): steps per launch, warm-up steps skipped, launch rounds
                train_samples=448, train_steps=26, warmup_steps=4, rounds=4, micro_batch=8, grad_accum=1,
                max_seq_len=512, label_batch=16, label_config="ds_configs/zero0.json",
                # labeling (figures 3, 6): samples of the 1x point; figure 3 labels 4x
                label_samples_1x=300,
                # memory (figure 5): a model where parameters dominate (~100M)
                mem_hidden=1024, mem_layers=6, mem_heads=8, mem_seq_len=224),
    "gpu": dict(vocab=1000, hidden=1024, layers=12, heads=16, precision="bf16",
                train_samples=960, train_steps=60, warmup_steps=5, rounds=3, micro_batch=8, grad_accum=1,
                max_seq_len=512, label_batch=16, label_config="ds_configs/zero0.json",
                label_samples_1x=300,
                mem_hidden=2048, mem_layers=2, mem_heads=16, mem_seq_len=512),
    # the real model (issue 18, bench/fig9_real_model.py): SmolLM2-135M as `make install` fetches it,
    # fp32; small step counts, since a SmolLM2 step on 2 CPU cores takes seconds, not milliseconds
    "smollm2": dict(model=".venv/models/smollm2-135m", precision="fp32",
                    train_samples=64, train_steps=5, warmup_steps=1, rounds=2, micro_batch=1, grad_accum=1,
                    max_seq_len=512, label_batch=4, label_config="ds_configs/zero0.json", label_samples_1x=16),
}


def profile_name() -> str:
    return os.environ.get("BENCH_PROFILE", "cpu")


def sizes() -> dict:
    p = dict(PROFILES[profile_name()])
    for k, v in list(p.items()):
        env = os.environ.get(f"BENCH_{k.upper()}")
        if env is not None:
            p[k] = type(v)(env)
    p["nproc"] = int(os.environ.get("BENCH_NPROC", "2"))
    return p


def work_dir() -> Path:
    w = Path(os.environ.get("BENCH_WORK", ROOT / "outputs" / "bench")) / profile_name()
    w.mkdir(parents=True, exist_ok=True)
    return w


# ----------------------------------------------------------------------------------------------
# launching
def env(extra: dict | None = None) -> dict:
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e.setdefault("TOKENIZERS_PARALLELISM", "false")
    e.setdefault("TORCH_EXTENSIONS_DIR", str(BIN.parent / "torch_extensions"))
    e.setdefault("PYTHONPATH", str(ROOT))
    e.update(extra or {})
    return e


def launch(args: list, nproc: int, module: bool = True, log: Path | None = None, timeout: int = 900,
           extra_env: dict | None = None) -> tuple[float, str, float]:
    """One `deepspeed` launch (`--module rft_ds ARGS` or a script). Returns (wall seconds, output,
    CPU seconds). The wall time covers the whole command: launcher, process start, imports, load,
    work, exit. CPU seconds (user + system of the launcher and every rank) are much less sensitive
    to other processes' load than wall time: a second opinion on a shared machine."""
    port = free_port()
    cmd = [str(BIN / "deepspeed"), "--num_gpus", str(nproc), "--master_port", str(port)]
    cmd += (["--module", "rft_ds"] if module else []) + [str(a) for a in args]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=env(extra_env), capture_output=True, text=True, timeout=timeout)
    finally:
        remove_shm_buffers(port)
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    out = r.stdout + r.stderr
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(" ".join(cmd) + "\n\n" + out)
    if r.returncode != 0:
        raise RuntimeError(f"launch failed (rc {r.returncode}): {' '.join(cmd)}\n{out[-5000:]}")
    return wall, out, cpu


def remove_shm_buffers(port: int) -> None:
    """DeepSpeed's CPU shared-memory all-reduce (deepspeed_shm_comm) creates one 66 MB POSIX shm
    segment per rank, /dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>, and never
    unlinks it: every CPU launch leaks 66 MB x ranks of RAM (tmpfs) until reboot. Remove ours."""
    for f in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"):
        try:
            f.unlink()
        except OSError:
            pass


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------
# fixtures: the tiny base model, a "SHAD" model (same tokenizer, other weights), data slices
def head_lines(src: Path, dst: Path, n: int) -> Path:
    lines = Path(src).read_text(encoding="utf-8").splitlines(keepends=True)
    if n > len(lines):
        raise ValueError(f"{src} has {len(lines)} lines, {n} asked")
    if not dst.exists() or dst.read_text(encoding="utf-8") != "".join(lines[:n]):
        dst.write_text("".join(lines[:n]), encoding="utf-8")
    return dst


def data_slice(n: int) -> Path:
    return head_lines(DEMO_TRAIN, work_dir() / f"train-{n}.jsonl", n)


def build_model(out: Path, hidden: int, layers: int, heads: int, vocab: int, seed: int = 0) -> Path:
    """A tiny random Llama + tokenizer trained on the demo data (rft_ds.tools.tiny), built once."""
    if (out / "config.json").exists():
        return out
    from rft_ds.tools.tiny import build_tiny_model

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    build_tiny_model(str(DEMO_TRAIN), str(tmp), vocab_size=vocab, hidden_size=hidden, layers=layers, heads=heads,
                     seed=seed)
    os.replace(tmp, out)
    return out


def perturbed_copy(src: Path, out: Path, scale: float = 0.02, seed: int = 1) -> Path:
    """The stand-in for the SHAD model: same tokenizer and shapes, weights perturbed (labels differ)."""
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * p.std().clamp(min=1e-3) * torch.randn_like(p))
    m.save_pretrained(str(tmp), safe_serialization=True)
    os.replace(tmp, out)
    return out


def models() -> tuple[Path, Path]:
    """(base, "SHAD" stand-in): a tiny random Llama built here, or the profile's real model (fetched with
    `rft-ds fetch-model` if missing) and a perturbed copy of it."""
    s = sizes()
    w = work_dir()
    if "model" in s:
        base = ROOT / s["model"]
        if not (base / "config.json").exists():
            subprocess.run([str(BIN / "rft-ds"), "fetch-model", "smollm2-135m", "--output", str(base)], cwd=ROOT,
                           env=env(), check=True)
        return base, perturbed_copy(base, w / "shad")
    base = build_model(w / "base", s["hidden"], s["layers"], s["heads"], s["vocab"])
    shad = perturbed_copy(base, w / "shad")
    return base, shad


def warm_ops() -> None:
    """Load (JIT-build if needed) DeepSpeed's CPU ops once, outside any timed launch."""
    code = ("from deepspeed.accelerator import get_accelerator\n"
            "acc = get_accelerator()\n"
            "if acc.device_name() == 'cpu':\n"
            "    for b in ('FusedAdamBuilder', 'ShareMemCommBuilder'):\n"
            "        acc.create_op_builder(b).load()\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env(), check=True, capture_output=True)


# ----------------------------------------------------------------------------------------------
# statistics and results
def median(xs) -> float:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def loglog_slope(xs, ys) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.mean(lx), statistics.mean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def linear_fit(xs, ys) -> tuple[float, float]:
    """Least squares y = a + b x; returns (a, b)."""
    mx, my = statistics.mean(xs), statistics.mean(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def load_results() -> dict:
    if RESULTS.exists():
        try:
            return json.loads(RESULTS.read_text())
        except json.JSONDecodeError:
            pass
    return {}


def save_figure(name: str, value: float, target: str, detail: dict) -> None:
    """Record one figure in bench/results.json: {name: value, ..., "details": {name: {...}}}."""
    res = load_results()
    res[name] = None if value is None or (isinstance(value, float) and math.isnan(value)) else round(value, 4)
    res.setdefault("targets", {})[name] = target
    res.setdefault("details", {})[name] = detail
    res.setdefault("profile", profile_name())  # the run's first profile; fig9 adds the real model's
    res.setdefault("details", {})[name].setdefault("profile", profile_name())
    res["updated"] = time.strftime("%Y-%m-%d %H:%M:%S")
    RESULTS.write_text(json.dumps(res, indent=2, sort_keys=True) + "\n")


def target_met(value, target: str) -> bool | None:
    """Targets are "<= X", ">= X" (an 'x' suffix allowed) or "A..B" (inclusive range)."""
    if value is None:
        return None
    if ".." in target:
        lo, hi = (float(x) for x in target.split(".."))
        return lo <= value <= hi
    op, num = target.split()[0], float(target.split()[1].rstrip("x"))
    return value <= num if op == "<=" else value >= num


def peak_flops() -> float | None:
    """Dense peak FLOP/s for MFU: BENCH_PEAK_TFLOPS, or 989 TFLOP/s (H100 SXM bf16) on the gpu profile."""
    v = os.environ.get("BENCH_PEAK_TFLOPS")
    if v:
        return float(v) * 1e12
    return 989e12 if profile_name() == "gpu" else None


def n_params(model_dir: Path) -> int:
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    h, L, V = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    inter, kv = cfg["intermediate_size"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    hd = h // cfg["num_attention_heads"]
    per_layer = h * h * 2 + 2 * h * kv * hd + 3 * h * inter + 2 * h
    return L * per_layer + 2 * V * h + h
