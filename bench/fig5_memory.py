"""Figure 5: memory per rank of a ZeRO-3 training step at 1 and 2 ranks.

A ~100M-parameter Llama (rft_ds.tools.tiny.build_tiny_model, hidden 1024 x 6 layers on the cpu profile)
so that parameters, gradients and optimizer state dominate; `rft-ds train` (the real command, ZeRO-3,
DeepSpeed AdamW, fp32 on CPU) runs 2 steps of micro-batch 1 under bench/mem_probe.py, which reads
/proc/self/status per rank. The figure:

  param_memory_ratio_2_over_1 = per-rank (RssAnon after a step - RssAnon baseline) at 2 ranks
                                / the same at 1 rank                      (target <= 0.55; ideal 0.50)

The numerator is what the rank holds between steps: its parameter partition, fp32 master partition,
gradient partition, Adam moments and persistent (small, unpartitioned) parameters. Also reported:
the step peak (VmHWM over the steps, reset after deepspeed.initialize; it includes the all-gathered
full parameters of the layers being computed, which ZeRO-3 does not divide), and DeepSpeed's own
element counts (bench/mem_probe.py).
"""

import json
import shutil

from common import BENCH, build_model, data_slice, launch, save_figure, say, sizes, work_dir

TARGET = "<= 0.55"


def ds_config(model, buckets: str):
    """ds_configs/zero3.json as shipped, or ('hidden2') with Hugging Face's "auto" bucket sizes for
    this model: reduce_bucket_size = h^2, stage3_prefetch_bucket_size = 0.9 h^2,
    stage3_param_persistence_threshold = 10 h (the shipped 5e7-element buckets cost ~190 MiB fp32
    per rank whatever the model and rank count)."""
    src = BENCH.parent / "ds_configs" / "zero3.json"
    if buckets == "shipped":
        return src
    h = json.loads((model / "config.json").read_text())["hidden_size"]
    cfg = json.loads(src.read_text())
    cfg["zero_optimization"].update(reduce_bucket_size=h * h, stage3_prefetch_bucket_size=int(0.9 * h * h),
                                    stage3_param_persistence_threshold=10 * h)
    out = work_dir() / "mem" / "zero3-hidden2.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(cfg, indent=2))
    return out


def run_one(model, data, nproc: int, s: dict, buckets: str = "shipped") -> dict:
    w = work_dir() / "mem"
    out = w / f"probe-{nproc}-{buckets}"
    shutil.rmtree(out, ignore_errors=True)
    wall, _, _ = launch([BENCH / "mem_probe.py", "--probe-out", out, "train", "--model", model, "--data", data,
                      "--output", w / f"run-{nproc}", "--overwrite", "--deepspeed",
                      ds_config(model, buckets), "--micro-batch-size", 1, "--max-steps", 2,
                      "--lr", "1e-5", "--max-seq-len", s["mem_seq_len"], "--precision", s["precision"]],
                     nproc, module=False, log=w / f"probe-{nproc}-{buckets}.log")
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]
    key = "cuda_allocated" if "cuda_allocated" in ranks[0]["baseline"] else "RssAnon"
    per = []
    for r in ranks:
        last = r["after_step_trimmed"][-1]
        per.append({"held_after_step": last[key] - r["baseline"][key],
                    "held_after_step_untrimmed": r["after_step"][-1][key] - r["baseline"][key],
                    "after_init": r["after_init_trimmed"][key] - r["baseline"][key],
                    "step_peak_rss": (r["step_peak"]["cuda_max_allocated"] if key == "cuda_allocated"
                                      else r["step_peak"]["VmHWM"] - r["baseline"]["VmRSS"]),
                    "counts": r["counts"]})
    say(f"memory ({buckets} buckets): {nproc} rank(s): held after step {[round(p['held_after_step'] / 2**20) for p in per]} MiB, "
        f"step peak {[round(p['step_peak_rss'] / 2**20) for p in per]} MiB (wall {wall:.0f}s)")
    return {"key": key, "ranks": per, "wall_s": wall,
            "held_mean": sum(p["held_after_step"] for p in per) / nproc,
            "peak_mean": sum(p["step_peak_rss"] for p in per) / nproc}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--buckets", choices=["shipped", "hidden2"], default="shipped",
                    help="hidden2: also measure with h^2-sized ZeRO buckets (the proposed config fix)")
    a = ap.parse_args()
    s = sizes()
    model = build_model(work_dir() / "mem-model", s["mem_hidden"], s["mem_layers"], s["mem_heads"], s["vocab"])
    data = data_slice(16)
    one = run_one(model, data, 1, s)
    two = run_one(model, data, 2, s)
    ratio = two["held_mean"] / one["held_mean"]
    extra = {}
    if a.buckets == "hidden2":
        one_h, two_h = run_one(model, data, 1, s, "hidden2"), run_one(model, data, 2, s, "hidden2")
        extra = {"hidden2_buckets": {"ratio": two_h["held_mean"] / one_h["held_mean"],
                                     "held_MiB": {"1": one_h["held_mean"] / 2**20, "2": two_h["held_mean"] / 2**20},
                                     "step_peak_MiB": {"1": one_h["peak_mean"] / 2**20,
                                                       "2": two_h["peak_mean"] / 2**20}}}
        say(f"with h^2 buckets: ratio {extra['hidden2_buckets']['ratio']:.4f}")
    c1, c2 = one["ranks"][0]["counts"], two["ranks"][0]["counts"]
    detail = {"params": c1["params_total"], "measure": one["key"] + " after a step minus baseline, per rank",
              "held_MiB": {"1": one["held_mean"] / 2**20, "2": two["held_mean"] / 2**20},
              "held_untrimmed_MiB": {"1": one["ranks"][0]["held_after_step_untrimmed"] / 2**20,
                                     "2": sum(r["held_after_step_untrimmed"] for r in two["ranks"]) / 2 / 2**20},
              "step_peak_MiB": {"1": one["peak_mean"] / 2**20, "2": two["peak_mean"] / 2**20},
              "step_peak_ratio_2_over_1": two["peak_mean"] / one["peak_mean"],
              "after_init_MiB": {"1": one["ranks"][0]["after_init"] / 2**20,
                                 "2": sum(r["after_init"] for r in two["ranks"]) / 2 / 2**20},
              "deepspeed_elements_rank0": {"1": c1, "2": c2},
              "deepspeed_elements_ratio_2_over_1": (c2["params_partition"] + c2["fp32_master"] + c2["optimizer_state"])
              / (c1["params_partition"] + c1["fp32_master"] + c1["optimizer_state"]),
              "wall_s": {"1": one["wall_s"], "2": two["wall_s"]}, **extra}
    save_figure("param_memory_ratio_2_over_1", ratio, TARGET, detail)
    say(f"param_memory_ratio_2_over_1 = {ratio:.4f} (target {TARGET}; DeepSpeed element ratio "
        f"{detail['deepspeed_elements_ratio_2_over_1']:.4f})")
