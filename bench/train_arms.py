"""Training-step arms for figures 1 and 2, run interleaved in one schedule.

Arms (all: same tiny model, same data slice, same seed => the very same global batches per step,
same ds_configs/zero3.json, micro-batch x accumulation x ranks, lr; fp32 on CPU, bf16 on GPU):
  sft  `rft-ds train --loss sft --masks M`   (the engine; masks only add per-class metrics)
  rft  `rft-ds train --loss rft --masks M`   (the engine, RFT sample granularity)
  hf   bench/hf_trainer_baseline.py           (Hugging Face Trainer + DeepSpeed, the usual path)

Step time = the delta of consecutive `elapsed_s` (metrics.jsonl for the engine, a Trainer callback's
steps.jsonl for HF), skipping the first `warmup_steps` deltas (DeepSpeed's first steps allocate
optimizer state, etc.). Because every arm sees the same batch at step k, arms are compared step by
step (see ratio()). Rounds run the arms in alternating order (A B C, C B A, ...) so drift in the
machine's load cancels.
"""

from __future__ import annotations

import json
from pathlib import Path

from rft_ds.tools.tiny import write_random_masks

from common import (BENCH, data_slice, launch, median, models, peak_flops, profile_name, say, sizes, work_dir)

ARMS = ("sft", "rft", "hf")


def step_tokens(data: Path, model_dir: Path, s: dict) -> list[dict]:
    """Per optimizer step of the schedule: real tokens, padded tokens, loss tokens, and the sum of
    squared sample lengths (attention FLOPs), of the engine's batches."""
    from rft_ds.data.batching import DUMMY, global_batches, split_global_batch
    from rft_ds.data.formats import read_conversations
    from rft_ds.data.render import encode_dataset
    from rft_ds.modeling import load_tokenizer

    tok = load_tokenizer(str(model_dir))
    encs, _ = encode_dataset(read_conversations(str(data)), tok, s["max_seq_len"])
    lengths = [len(e.input_ids) for e in encs]
    W, B, GA = s["nproc"], s["micro_batch"], s["grad_accum"]
    G = W * B * GA
    per_epoch = -(-len(encs) // G)
    out = []
    for step in range(s["train_steps"]):
        epoch, k = divmod(step, per_epoch)
        gb = global_batches(lengths, G, 42, epoch, True)[k]
        real = padded = loss = sq = 0
        for r in range(W):
            for part in split_global_batch(gb, lengths, W, B, GA, r):
                part = [i for i in part if i != DUMMY]
                if part:
                    real += sum(lengths[i] for i in part)
                    sq += sum(lengths[i] ** 2 for i in part)
                    padded += max(lengths[i] for i in part) * len(part)
                    loss += sum(encs[i].n_loss_tokens for i in part)
        out.append({"real": real, "padded": padded, "loss": loss, "sum_len_sq": sq})
    return out


def _deltas(rows: list[dict]) -> list[float]:
    e = [r["elapsed_s"] for r in rows]
    return [b - a for a, b in zip(e, e[1:])]  # delta k = time of step k+2


def run(arms: list[str], rounds: int | None = None) -> dict:
    s = sizes()
    rounds = rounds or s["rounds"]
    base, _ = models()
    w = work_dir() / "train"
    w.mkdir(parents=True, exist_ok=True)
    data = data_slice(s["train_samples"])
    masks = w / "masks.jsonl"
    if "rft" in arms or "sft" in arms:
        write_random_masks(data, base, masks, max_seq_len=s["max_seq_len"])
    common = ["--model", base, "--data", data, "--deepspeed", BENCH.parent / "ds_configs" / "zero3.json",
              "--micro-batch-size", s["micro_batch"], "--grad-accum", s["grad_accum"], "--max-steps",
              s["train_steps"], "--lr", "1e-4", "--seed", "42", "--max-seq-len", s["max_seq_len"]]
    prec = ["--precision", s["precision"]]
    steps: dict[str, list[list[float]]] = {a: [] for a in arms}
    walls: dict[str, list[float]] = {a: [] for a in arms}
    losses: dict[str, list[float]] = {}
    for rnd in range(rounds):
        order = arms if rnd % 2 == 0 else list(reversed(arms))
        for arm in order:
            out = w / f"{arm}-r{rnd}"
            log = w / f"{arm}-r{rnd}.log"
            if arm == "hf":
                wall, _, _ = launch([BENCH / "hf_trainer_baseline.py", "--output", out, *common, *prec], s["nproc"],
                                 module=False, log=log)
                rows = [json.loads(x) for x in (out / "steps.jsonl").read_text().splitlines()]
            else:
                wall, _, _ = launch(["train", "--output", out, "--overwrite", "--loss", arm, "--masks", masks, *common,
                                  *prec], s["nproc"], log=log)
                rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
            d = _deltas(rows)
            steps[arm].append(d)
            walls[arm].append(wall)
            losses.setdefault(arm, [r["loss"] for r in rows])
            say(f"train arm {arm} round {rnd}: wall {wall:.1f}s, median step {median(d[s['warmup_steps']:]):.3f}s")

    skip = s["warmup_steps"]
    n = min(len(d) for ds in steps.values() for d in ds)
    med = {a: [median([d[k] for d in steps[a]]) for k in range(skip, n)] for a in arms}
    toks = step_tokens(data, base, s)[skip + 1: n + 1]  # delta k is step k+2 (index k+1)
    res = {"arms": arms, "rounds": rounds, "steps_compared": n - skip, "warmup_deltas_skipped": skip,
           "step_s": {a: [d[skip:n] for d in steps[a]] for a in arms},
           "step_s_median": {a: median(med[a]) for a in arms}, "step_s_total": {a: sum(med[a]) for a in arms},
           "launch_wall_s": walls, "per_round_step_s": {a: [sum(d[skip:n]) for d in steps[a]] for a in arms},
           "loss_first_steps": {a: [round(x, 5) for x in v[:3]] for a, v in losses.items()},
           "profile": profile_name()}
    real = sum(t["real"] for t in toks)
    padded = sum(t["padded"] for t in toks)
    res["tokens"] = {"real": real, "padded": padded, "loss": sum(t["loss"] for t in toks),
                     "sum_len_sq": sum(t["sum_len_sq"] for t in toks)}  # for attention FLOPs
    for a in arms:
        secs = sum(med[a])
        res.setdefault("tokens_per_s", {})[a] = real / secs
        pk = peak_flops()
        if pk:
            from common import n_params

            cfg = json.loads((base / "config.json").read_text())
            N = n_params(base) - cfg["vocab_size"] * cfg["hidden_size"]  # the input embedding is a lookup
            res.setdefault("mfu", {})[a] = 6 * N * real / secs / (pk * s["nproc"])
    (w / "train_arms.json").write_text(json.dumps(res, indent=2) + "\n")
    return res


def ratio(res: dict, arm: str, ref: str = "sft") -> dict:
    """arm / ref. Every arm ran the same batch at step k, so steps are compared pairwise. External
    load only ever adds time, so a step's least-disturbed observation is its minimum over the rounds;
    the figure is the median over steps of the paired ratio min_arm[k] / min_ref[k]. Diagnostics:
    the same from per-step medians, the ratio of summed minima, and each round's ratio of sums."""
    sa, sr = res["step_s"][arm], res["step_s"][ref]
    mins_a, mins_r = [min(x) for x in zip(*sa)], [min(x) for x in zip(*sr)]
    meds_a, meds_r = [median(x) for x in zip(*sa)], [median(x) for x in zip(*sr)]
    per_round = [sum(x) / sum(y) for x, y in zip(sa, sr)]
    return {"ratio": median([x / y for x, y in zip(mins_a, mins_r)]),
            "from_step_medians": median([x / y for x, y in zip(meds_a, meds_r)]),
            "sum_of_minima": sum(mins_a) / sum(mins_r),
            "per_round": [round(x, 4) for x in per_round],
            "step_s_min_median": {arm: median(mins_a), ref: median(mins_r)}}


def load_or_run(arms: list[str], reuse: bool) -> dict:
    p = work_dir() / "train" / "train_arms.json"
    if reuse and p.exists():
        res = json.loads(p.read_text())
        if all(a in res["arms"] for a in arms):
            return res
    return run(arms)


if __name__ == "__main__":
    import sys

    print(json.dumps(run(sys.argv[1].split(",") if len(sys.argv) > 1 else list(ARMS)), indent=2))
