"""This machine's matmul ceiling at a model's own shapes: the rate (GFLOP/s) of exactly the GEMMs one
token's forward (and backward) makes through the model's linear layers, timed with torch's own
F.linear / torch.mm (the BLAS the passes use).

For each linear layer of a Llama-shaped model (q, k, v, o, gate, up, down per layer, and lm_head),
with M tokens in the batch, the forward GEMM is X[M,K] @ W^T (W [N,K], as nn.Linear keeps it); training
adds the two backward ones, dX = dY[M,N] @ W and dW = dY^T @ X. The ceiling is total FLOPs / total time of that mix (each shape
weighted by how often a token meets it), so it is the best matmul rate the model's passes could reach
on this machine: no attention, norms, activations, optimizer, communication or Python.

Thread configurations, each the whole machine: `1x<cores>` (one process, all cores as intra-op
threads) and `<cores>x1` (one process per core, one thread each, all timed at once: the aggregate of
their rates), as the passes run with 1 and with 2 local ranks.

    python bench/gemm_ceiling.py --model DIR [--tokens 1024] [--seconds 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from pathlib import Path


def shapes(cfg: dict) -> list[tuple[str, int, int, int]]:
    """(name, K, N, count per token) of every linear layer of a Llama-shaped config."""
    h, inter, L, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    heads = cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or h // heads
    kv = cfg.get("num_key_value_heads", heads) * hd
    return [("q", h, heads * hd, L), ("kv", h, kv, 2 * L), ("o", heads * hd, h, L),
            ("gate_up", h, inter, 2 * L), ("down", inter, h, L), ("lm_head", h, V, 1)]


def _time_mix(cfg: dict, m: int, seconds: float, threads: int, train: bool, start=None) -> dict:
    """GFLOP/s of the model's GEMM mix in this process: every shape repeated until `seconds` pass."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    per_shape = {}
    flops = secs = 0.0
    if start is not None:
        start.wait()  # all processes of a configuration time together
    for name, k, n, count in shapes(cfg):
        # as nn.Linear stores and autograd computes it: W [N, K]; y = x W^T, dX = dY W, dW = dY^T x
        x, w, dy = torch.randn(m, k), torch.randn(n, k), torch.randn(m, n)
        ops = [lambda: torch.nn.functional.linear(x, w)]
        if train:
            ops += [lambda: torch.mm(dy, w), lambda: torch.mm(dy.t(), x)]
        for op in ops:
            op()  # warm-up (allocations, kernel choice)
        reps, t0 = 0, time.perf_counter()
        while True:
            for op in ops:
                op()
            reps += 1
            el = time.perf_counter() - t0
            if el >= seconds / len(shapes(cfg)) and reps >= 3:
                break
        f = 2.0 * m * k * n * len(ops)  # one pass of this shape (forward, or forward + 2 backward)
        rate = f * reps / el
        per_shape[name] = round(rate / 1e9, 2)
        flops += f * count
        secs += f * count / rate
    return {"gflops": flops / secs / 1e9, "per_shape_gflops": per_shape}


def _worker(cfg, m, seconds, threads, train, start, q):
    q.put(_time_mix(cfg, m, seconds, threads, train, start))


def ceiling(cfg: dict, m: int, seconds: float, procs: int, threads: int, train: bool) -> dict:
    """Aggregate GFLOP/s of `procs` processes x `threads` threads, all running the mix at once."""
    if procs == 1:
        r = _time_mix(cfg, m, seconds, threads, train)
        return {"gflops": r["gflops"], "per_process": [r]}
    ctx = mp.get_context("spawn")
    start, q = ctx.Barrier(procs), ctx.Queue()
    ps = [ctx.Process(target=_worker, args=(cfg, m, seconds, threads, train, start, q)) for _ in range(procs)]
    for p in ps:
        p.start()
    rs = [q.get() for _ in ps]
    for p in ps:
        p.join()
    return {"gflops": sum(r["gflops"] for r in rs), "per_process": rs}


def measure(model_dir: str, m: int = 1024, seconds: float = 3.0, modes=("forward", "train")) -> dict:
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    cores = os.cpu_count() or 1
    out = {"model": str(model_dir), "tokens_per_gemm": m, "cores": cores, "shapes": shapes(cfg)}
    for label, procs, threads in ((f"1x{cores}", 1, cores), (f"{cores}x1", cores, 1)):
        for mode in modes:
            r = ceiling(cfg, m, seconds, procs, threads, mode == "train")
            out[f"{label}_{mode}_gflops"] = round(r["gflops"], 2)
            out[f"{label}_{mode}_per_process"] = r["per_process"]
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="a HF model directory (its config.json gives the shapes)")
    ap.add_argument("--tokens", type=int, default=1024, help="M, the tokens of one GEMM")
    ap.add_argument("--seconds", type=float, default=3.0, help="timing per configuration and mode")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    res = measure(a.model, a.tokens, a.seconds)
    text = json.dumps(res, indent=2)
    if a.json:
        Path(a.json).write_text(text + "\n")
    print(json.dumps({k: v for k, v in res.items() if k.endswith("_gflops")}))
