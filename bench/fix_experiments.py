"""Measure the fixes proposed in BENCHMARKS.md, interleaved against the stock command (not part of
run_all.sh: about 6 minutes on the 2-core machine).

    python bench/fix_experiments.py label [--rounds 2]   # `rft-ds label` on 1200 demo samples
    python bench/fix_experiments.py train [--rounds 2]   # `rft-ds train --loss sft`, the figure-1 setup

label variants: stock | threads (OMP_NUM_THREADS = cores / ranks: what a torch.set_num_threads in
dist.init would do) | zero0 (--deepspeed with ZeRO stage 0: whole model on every rank, no
parameter gathers) | threads+zero0. train variants: stock | threads.
Rounds run the variants in alternating order (A B C D, D C B A, ...); each figure is the minimum
over rounds (external load only adds time), with the rounds' values kept in the output.
"""

from __future__ import annotations

import argparse
import json
import os

import label_runs
from rft_ds.tools.tiny import write_random_masks

from common import BENCH, data_slice, launch, median, models, say, sizes, work_dir


def threads_env() -> dict:
    return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // sizes()["nproc"]))}


def zero0() -> str:
    p = work_dir() / "label" / "zero0.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"zero_optimization": {"stage": 0}}))
    return str(p)


def label_exp(rounds: int, only: list[str] | None = None) -> dict:
    n = label_runs.n_for(4)
    variants = {"stock": ([], None), "threads": ([], threads_env()), "zero0": (["--deepspeed", zero0()], None),
                "threads+zero0": (["--deepspeed", zero0()], threads_env())}
    if only:
        variants = {k: v for k, v in variants.items() if k in only or k == "stock"}
    res = {k: [] for k in variants}
    for r in range(rounds):
        for name in (list(variants) if r % 2 == 0 else list(reversed(variants))):
            args, env = variants[name]
            res[name].append(label_runs.label_once(n, name, args, env))
    # external load only adds time: the least-disturbed round (min) is the estimate; medians kept too
    out = {k: {"wall_s": min(x["wall_s"] for x in v), "loop_s": min(x["loop_s"] for x in v),
               "cpu_s": min(x["cpu_s"] for x in v), "walls": [x["wall_s"] for x in v],
               "loops": [x["loop_s"] for x in v], "cpus": [x["cpu_s"] for x in v],
               "wall_median_s": median([x["wall_s"] for x in v])} for k, v in res.items()}
    for k, v in out.items():
        say(f"label {k}: wall {v['wall_s']:.1f}s ({v['wall_s'] / out['stock']['wall_s']:.3f} x stock), "
            f"loop {v['loop_s']:.1f}s ({v['loop_s'] / out['stock']['loop_s']:.3f} x stock), "
            f"cpu {v['cpu_s']:.1f}s ({v['cpu_s'] / out['stock']['cpu_s']:.3f} x stock)")
    return out


def train_exp(rounds: int) -> dict:
    s = sizes()
    base, _ = models()
    w = work_dir() / "fix-train"
    w.mkdir(parents=True, exist_ok=True)
    data = data_slice(s["train_samples"])
    masks = write_random_masks(data, base, w / "masks.jsonl", max_seq_len=s["max_seq_len"])
    variants = {"stock": None, "threads": threads_env()}
    steps = {k: [] for k in variants}
    for r in range(rounds):
        for name in (list(variants) if r % 2 == 0 else list(reversed(variants))):
            out = w / f"{name}-r{r}"
            launch(["train", "--model", base, "--data", data, "--output", out, "--overwrite", "--loss", "sft",
                    "--masks", masks, "--deepspeed", BENCH.parent / "ds_configs" / "zero3.json",
                    "--micro-batch-size", s["micro_batch"], "--max-steps", s["train_steps"], "--lr", "1e-4",
                    "--max-seq-len", s["max_seq_len"], "--precision", s["precision"]], s["nproc"],
                   log=w / f"{name}-r{r}.log", extra_env=variants[name])
            rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
            e = [x["elapsed_s"] for x in rows]
            steps[name].append([b - a for a, b in zip(e, e[1:])][s["warmup_steps"]:])
    mins = {k: [min(x) for x in zip(*v)] for k, v in steps.items()}
    ratio = median([a / b for a, b in zip(mins["threads"], mins["stock"])])
    say(f"train threads / stock step time: {ratio:.3f} (median of paired per-step minima)")
    return {"threads_over_stock": ratio, "step_s_min_median": {k: median(v) for k, v in mins.items()}}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["label", "train"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--variants", default=None, help="comma-separated label variants (stock is always run)")
    a = ap.parse_args()
    res = label_exp(a.rounds, a.variants.split(",") if a.variants else None) if a.what == "label" \
        else train_exp(a.rounds)
    p = work_dir() / f"fix-{a.what}.json"
    p.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
