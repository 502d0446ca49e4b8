"""Figure 2: the engine vs the usual path = `rft-ds train --loss sft` step time / Hugging Face
`Trainer` + DeepSpeed step time (target <= 1.00).

Same tiny model, data, tokenization (rft-ds render/encode; HF labels = ids at loss tokens, -100
elsewhere), the very same micro-batches on each rank, the same resolved ds_config (ZeRO-3,
DeepSpeed AdamW, clipping, micro-batch x accumulation x ranks, lr, fp32 on CPU), both launched with
`deepspeed` on 2 ranks. See bench/hf_trainer_baseline.py and bench/train_arms.py.

    python bench/fig2_engine_vs_hf.py [--reuse]
"""

import argparse

import train_arms
from common import save_figure, say

TARGET = "<= 1.00"

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--reuse", action="store_true", help="use outputs/bench/<profile>/train/train_arms.json if present")
    a = ap.parse_args()
    res = train_arms.load_or_run(["sft", "hf"], a.reuse)
    r = train_arms.ratio(res, "sft", "hf")
    detail = {**r, "steps_compared": res["steps_compared"], "rounds": res["rounds"],
              "launch_wall_s": {k: res["launch_wall_s"][k] for k in ("sft", "hf")},
              "tokens_per_s": {k: res["tokens_per_s"][k] for k in ("sft", "hf")},
              "loss_first_steps": {k: res["loss_first_steps"][k] for k in ("sft", "hf")}}
    if "mfu" in res:
        detail["mfu"] = {k: res["mfu"][k] for k in ("sft", "hf")}
    save_figure("engine_over_hf_trainer", r["ratio"], TARGET, detail)
    say(f"engine_over_hf_trainer = {r['ratio']:.4f} (per round {r['per_round']}; target {TARGET})")
