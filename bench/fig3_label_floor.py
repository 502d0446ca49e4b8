"""Figure 3: the labeling pass vs its floor, and vs a naive loop.

On the demo data (4x = 1200 samples), demo settings (2 ranks, --batch-size 16, --max-seq-len 512),
in one interleaved schedule:  label, floor/naive worker, label, label  (label_runs.py,
label_floor_worker.py); label figures are medians of the 3 label runs, the worker's of its 2 reps. The worker computes exactly label's loss tokens on exactly label's
per-rank samples, plain PyTorch, no ZeRO, no padding, no I/O, and checks its LD against label's
masks file.

  label_over_floor        wall time of the whole `rft-ds label` command (launcher, process start,
                          imports, tokenization, model load, loop, chunk files, merge, exit)
                          / floor                                             (target <= 1.25)
  label_loop_over_floor   label's own "(Xs)" figure, the forward loop only / floor (same target, for
                          reference: it isolates the loop from the fixed start-up costs)
  label_speedup_vs_naive  naive loop / label's loop (loop vs loop: the naive loop has no launcher,
                          start-up or I/O either)                            (target >= 3x)
floor = the faster of the worker's floor variants that ran (default schedule: floor_len, naive,
floor_len, naive; BENCH_FLOOR_SCHEDULE adds floor_sample, one sample at a time).

    python bench/fig3_label_floor.py [--fixes]
label runs as the demo does: both models whole on every rank (ds_configs/zero0.json, the measured
fix 1 of BENCHMARKS.md). --fixes also times one intra-op thread per rank, and the partitioned ZeRO-3
path (ds_configs/zero3.json) for comparison.
"""

import argparse
import json
import os

import label_runs
from common import BENCH, ROOT, launch, median, models, n_params, peak_flops, save_figure, say, sizes, work_dir

TARGETS = {"label_over_floor": "<= 1.25", "label_speedup_vs_naive": ">= 3x"}


def worker(n: int, check_masks: str) -> dict:
    s = sizes()
    base, shad = models()
    out = work_dir() / "label" / f"floor-{n}.json"
    wall, _, _ = launch([BENCH / "label_floor_worker.py", "--base", base, "--shad", shad, "--data", label_runs.data_path(n),
                      "--output", out, "--batch-size", s["label_batch"], "--max-seq-len", s["max_seq_len"],
                      "--precision", s["precision"], "--schedule", os.environ.get("BENCH_FLOOR_SCHEDULE", "floor_len,naive,floor_len,naive"),
                      "--check-masks", check_masks], s["nproc"], module=False,
                     log=work_dir() / "label" / f"floor-{n}.log")
    res = json.loads(out.read_text())
    res["wall_s"] = wall
    say(f"floor worker: {json.dumps({k: round(v, 2) for k, v in res['median'].items()})}, "
        f"LD check {res['check']}")
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixes", action="store_true")
    a = ap.parse_args()
    s = sizes()
    n = label_runs.n_for(4)
    label_runs.fresh_log()
    runs = [label_runs.label_once(n, "stock")]
    fl = worker(n, runs[0]["masks"])
    runs += [label_runs.label_once(n, "stock") for _ in range(2)]
    fixes = {}
    if a.fixes:
        omp = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // s["nproc"]))}
        fixes["threads"] = label_runs.label_once(n, "threads", extra_env=omp)
        # the partitioned path, for comparison (label's default without --deepspeed, and 70B-class runs)
        fixes["zero3"] = label_runs.label_once(n, "zero3", ["--deepspeed", ROOT / "ds_configs" / "zero3.json"])
    label_runs.record(runs + list(fixes.values()))

    floor_name = min((k for k in ("floor_len", "floor_sample") if k in fl["median"]), key=lambda k: fl["median"][k])
    floor = fl["median"][floor_name]
    naive = fl["median"]["naive"]
    wall = median([r["wall_s"] for r in runs])
    loop = median([r["loop_s"] for r in runs])
    detail = {"samples": n, "loss_tokens": fl["loss_tokens"], "tokens": fl["tokens"],
              "label_wall_s": [r["wall_s"] for r in runs], "label_loop_s": [r["loop_s"] for r in runs],
              "floor": floor_name, "floor_s": floor, "worker_median_s": fl["median"], "worker_times_s": fl["times"],
              "worker_threads_per_rank": fl["threads"], "ld_check": fl["check"],
              "label_loop_over_floor": loop / floor, "label_fixed_s": wall - loop,
              "label_speedup_vs_naive_wall": naive / wall,
              "compared": "label_over_floor: whole-command wall / floor loop; speedup: naive loop / label loop",
              "label_tokens_per_s_loop": {"loss": fl["loss_tokens"] / loop, "all": fl["tokens"] / loop},
              "fixes": {k: {"wall_s": v["wall_s"], "loop_s": v["loop_s"], "wall_over_floor": v["wall_s"] / floor,
                            "loop_over_floor": v["loop_s"] / floor} for k, v in fixes.items()}}
    pk = peak_flops()
    if pk:
        base, _ = models()
        cfg = json.loads((base / "config.json").read_text())
        N = n_params(base) - cfg["vocab_size"] * cfg["hidden_size"]
        detail["mfu_loop"] = 2 * 2 * N * fl["tokens"] / loop / (pk * s["nproc"])  # 2 models, forward only
    save_figure("label_over_floor", wall / floor, TARGETS["label_over_floor"], detail)
    save_figure("label_speedup_vs_naive", naive / loop, TARGETS["label_speedup_vs_naive"],
                {"naive_s": naive, "label_loop_s": loop, "label_wall_s": wall,
                 "wall_based": naive / wall, "compared": "naive loop / label forward loop"})
    say(f"label_over_floor = {wall / floor:.3f} (wall {wall:.1f}s / floor {floor:.1f}s; loop-only "
        f"{loop / floor:.3f}); label_speedup_vs_naive = {naive / loop:.3f}")
    for k, v in detail["fixes"].items():
        say(f"  fix {k}: wall {v['wall_s']:.1f}s (x{v['wall_over_floor']:.2f} floor), loop {v['loop_s']:.1f}s "
            f"(x{v['loop_over_floor']:.2f})")
