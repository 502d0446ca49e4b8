"""Figure 1: RFT overhead = RFT step time / SFT step time (target <= 1.02).

Same engine (`rft-ds train`), model, data, seed (so the same batches at every step), ZeRO-3 config,
2 ranks; the two losses differ only in the loss function (RFT sample granularity: per-sample class
means and weights) and its few extra metrics. Launches are interleaved (S R R S ...), step times are
`metrics.jsonl` elapsed_s deltas after the warm-up steps. See bench/train_arms.py.

    python bench/fig1_rft_overhead.py [--with-hf] [--reuse]
--with-hf also runs the Hugging Face Trainer arm in the same interleaved schedule, so that
figure 2 (`fig2_engine_vs_hf.py --reuse`) shares the SFT launches (what run_all.sh does).
"""

import argparse

import train_arms
from common import save_figure, say

TARGET = "<= 1.02"

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--with-hf", action="store_true")
    ap.add_argument("--reuse", action="store_true", help="use outputs/bench/<profile>/train/train_arms.json if present")
    a = ap.parse_args()
    res = train_arms.load_or_run(["sft", "rft", "hf"] if a.with_hf else ["sft", "rft"], a.reuse)
    r = train_arms.ratio(res, "rft")
    detail = {**r, "steps_compared": res["steps_compared"], "rounds": res["rounds"],
              "launch_wall_s": {k: res["launch_wall_s"][k] for k in ("sft", "rft")},
              "tokens_per_s": {k: res["tokens_per_s"][k] for k in ("sft", "rft")},
              "loss_first_steps": {k: res["loss_first_steps"][k] for k in ("sft", "rft")}}
    if "mfu" in res:
        detail["mfu"] = {k: res["mfu"][k] for k in ("sft", "rft")}
    save_figure("rft_over_sft", r["ratio"], TARGET, detail)
    say(f"rft_over_sft = {r['ratio']:.4f} (per round {r['per_round']}; target {TARGET})")
