"""Figure 9: the passes on the real model (SmolLM2-135M, fp32) against this machine's matmul ceiling
and against their peers (issue 18). The smollm2 profile of bench/common.py gives the sizes.

  ceiling   bench/gemm_ceiling.py: the GFLOP/s of the model's own GEMM mix (its linear layers at
            --tokens rows) with the thread layout of the pass: 1 process x all cores for 1 rank,
            one process per core for 2 ranks; forward only for label, forward + backward for train.
  label     `rft-ds label` with SmolLM2 and a perturbed copy as the SHAD model, ds_configs/zero0.json
            (both models whole on each rank) and zero3.json (partitioned), on 1 and 2 ranks, interleaved
            with the floor: bench/label_floor_worker.py in ONE process, plain HF forwards of both models,
            logits at loss positions only, no engine, records or I/O, the faster of floor_batches (label's
            own padded batches) and floor_len (equal-length batches, no padding); it checks its LD
            against label's masks.
            label_mfu = model FLOPs of label's forward loop / loop time / ceiling
            label_over_floor = label's forward loop / the floor (both 1 process; 2 ranks in detail)
  train     bench/train_arms.py on SmolLM2: `rft-ds train --loss sft`, `--loss rft`, and HF Trainer with
            the same DeepSpeed JSON (ZeRO-3) and the same batches, 2 ranks, interleaved rounds.
            train_mfu = 6 N tokens (+ attention) / step time / ceiling; engine / HF; RFT / SFT.
Model FLOPs: N = the parameters of the matmuls (everything but the input embedding, a lookup; the
tied lm_head counts once), 2 N per token forward and 6 N for training, plus attention, counted as
PaLM does (4 L d s per token forward for a sequence of length s, 12 L d s for training; the full
s x s score matrix, although SDPA's causal kernel may skip half of it).

    python bench/fig9_real_model.py [--sections label train]   (run_all.sh runs it last; ~25 min on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("BENCH_PROFILE", "smollm2")

import gemm_ceiling  # noqa: E402
import label_runs  # noqa: E402
import train_arms  # noqa: E402
from common import BENCH, ROOT, launch, models, save_figure, say, sizes, work_dir  # noqa: E402

TARGETS = {"real_label_mfu": ">= 0.6", "real_label_over_floor": "<= 1.10", "real_train_mfu": ">= 0.45",
           "real_engine_over_hf_trainer": "<= 1.00", "real_rft_over_sft": "<= 1.02"}
LABEL_ARMS = [("zero0", 1), ("zero0", 2), ("zero3", 1), ("zero3", 2)]  # (ds_configs/<name>.json, ranks)


def flops(cfg: dict, tokens: int, sum_len_sq: int, train: bool, head_tokens: int | None = None) -> float:
    """Model FLOPs of one pass over samples with these totals of s and s^2 (module docstring). With
    head_tokens: the FLOPs executed by a pass that applies lm_head at only that many positions (the
    loss positions, as rft-ds does) instead of every token."""
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    n_mm = sum(k * n * c for _, k, n, c in gemm_ceiling.shapes(cfg))  # matmul weights a token meets
    head = cfg["vocab_size"] * cfg["hidden_size"]
    fwd = (2 * (n_mm - head) * tokens + 2 * head * (tokens if head_tokens is None else head_tokens)
           + 4 * cfg["num_hidden_layers"] * cfg["num_attention_heads"] * hd * sum_len_sq)
    return 3 * fwd if train else fwd  # backward = 2 x forward


def ceiling(base, m: int, mode: str) -> dict:
    """{"ranks_1": GFLOP/s, "ranks_<cores>": GFLOP/s} of the GEMM mix at m rows: 1 rank = 1 process x
    all cores, <cores> ranks = one single-threaded process per core, timed together."""
    c = gemm_ceiling.measure(str(base), m=m, modes=(mode,))
    n = c["cores"]
    out = {"ranks_1": c[f"1x{n}_{mode}_gflops"], f"ranks_{n}": c[f"{n}x1_{mode}_gflops"], "rows": m,
           "per_process": {k: v for k, v in c.items() if k.endswith("per_process")}}
    say(f"GEMM ceiling ({mode}, {m} rows): {out['ranks_1']:.1f} GFLOP/s as 1 process, {out[f'ranks_{n}']:.1f} as {n}")
    return out


def encoded_lengths(data, base, max_seq_len: int) -> tuple[list[int], int]:
    """Every sample's token count, and the loss tokens of all (rft-ds's own encoding)."""
    from rft_ds.data.formats import read_conversations
    from rft_ds.data.render import encode_dataset
    from rft_ds.modeling import load_tokenizer

    encs, _ = encode_dataset(read_conversations(str(data)), load_tokenizer(str(base)), max_seq_len)
    return [len(e.input_ids) for e in encs], sum(e.n_loss_tokens for e in encs)


def floor_once(n: int, masks: str) -> dict:
    s = sizes()
    base, shad = models()
    out = work_dir() / "label" / f"floor1p-{n}.json"
    launch([BENCH / "label_floor_worker.py", "--base", base, "--shad", shad, "--data", label_runs.data_path(n),
            "--output", out, "--batch-size", s["label_batch"], "--max-seq-len", s["max_seq_len"],
            "--precision", s["precision"], "--schedule", "floor_batches,floor_len", "--check-masks", masks], 1,
           module=False,
           log=work_dir() / "label" / f"floor1p-{n}.log")
    res = json.loads(out.read_text())
    say(f"floor (1 process): label's batches {res['median']['floor_batches']:.1f}s, equal-length batches "
        f"{res['median']['floor_len']:.1f}s; LD check {res['check']}")
    return res


def label_section(cfg: dict) -> dict:
    """Every label arm twice (A B C D, D C B A), the floor after each round; the ceiling at label's
    rows per forward (batch x mean length)."""
    s = sizes()
    n = s["label_samples_1x"]
    base = models()[0]
    lengths, n_loss = encoded_lengths(label_runs.data_path(n), base, s["max_seq_len"])
    ceil = ceiling(base, round(s["label_batch"] * sum(lengths) / len(lengths)), "forward")
    label_runs.fresh_log()
    runs: dict[str, list[dict]] = {}
    floors = []
    for rnd in range(2):
        for conf, ranks in (LABEL_ARMS if rnd == 0 else LABEL_ARMS[::-1]):
            tag = f"{conf}-{ranks}r"
            os.environ["BENCH_NPROC"] = str(ranks)
            runs.setdefault(tag, []).append(label_runs.label_once(
                n, tag, ["--deepspeed", ROOT / "ds_configs" / f"{conf}.json"]))
        floors.append(floor_once(n, runs["zero0-1r"][0]["masks"]))
    os.environ.pop("BENCH_NPROC", None)
    # the faster variant, least-disturbed run (as for label: load only ever adds time)
    floor = min(min(f["median"].values()) for f in floors)
    work = 2 * flops(cfg, sum(lengths), sum(x * x for x in lengths), train=False)  # two models
    done = 2 * flops(cfg, sum(lengths), sum(x * x for x in lengths), train=False, head_tokens=n_loss)
    arms = {}
    for tag, rs in runs.items():
        loop = min(r["loop_s"] for r in rs)  # load only ever adds time: the least-disturbed run
        c = ceil["ranks_" + tag.split("-")[1][:-1]]
        arms[tag] = {"loop_s": [r["loop_s"] for r in rs], "wall_s": [r["wall_s"] for r in rs],
                     "gflops": work / loop / 1e9, "mfu": work / loop / 1e9 / c, "ceiling_gflops": c,
                     "executed_gflops": done / loop / 1e9, "hfu": done / loop / 1e9 / c,
                     "loop_over_floor": loop / floor, "wall_over_floor": min(r["wall_s"] for r in rs) / floor}
        say(f"label {tag}: loop {loop:.1f}s = {arms[tag]['gflops']:.1f} GFLOP/s, "
            f"{arms[tag]['mfu']:.2f} of the ceiling; {arms[tag]['loop_over_floor']:.2f}x the floor")
    return {"samples": n, "tokens": sum(lengths), "loss_tokens": n_loss, "model_gflop": work / 1e9,
            "executed_gflop": done / 1e9, "floor_s": floor,
            "floor_runs": [f["median"] for f in floors], "floor_gflops": work / floor / 1e9,
            "ld_check": [f["check"] for f in floors], "ceiling": ceil, "arms": arms}


def train_section(cfg: dict) -> dict:
    """sft, rft and hf arms (train_arms.py); the ceiling at train's rows per forward (micro-batch x
    mean length), forward + backward GEMMs, with the arms' rank count."""
    s = sizes()
    base = models()[0]
    lengths, _ = encoded_lengths(train_arms.data_slice(s["train_samples"]), base, s["max_seq_len"])
    ceil = ceiling(base, round(s["micro_batch"] * sum(lengths) / len(lengths)), "train")
    c = ceil[f"ranks_{s['nproc']}"]
    res = train_arms.run(["sft", "rft", "hf"])
    t = res["tokens"]
    work = flops(cfg, t["real"], t["sum_len_sq"], train=True)
    done = flops(cfg, t["real"], t["sum_len_sq"], train=True, head_tokens=t["loss"])  # the engine's arms
    out = {"tokens": t, "model_gflop": work / 1e9, "executed_gflop_engine": done / 1e9, "ceiling": ceil,
           "ceiling_gflops": c, "rounds": res["rounds"],
           "steps_compared": res["steps_compared"], "step_s": res["step_s"], "launch_wall_s": res["launch_wall_s"],
           "loss_first_steps": res["loss_first_steps"]}
    for a in ("sft", "rft", "hf"):
        secs = res["step_s_total"][a]
        out.setdefault("gflops", {})[a] = work / secs / 1e9
        out.setdefault("mfu", {})[a] = work / secs / 1e9 / c
        # HF's model computes logits at every position: its executed FLOPs are the model FLOPs
        out.setdefault("hfu", {})[a] = (work if a == "hf" else done) / secs / 1e9 / c
    out["engine_over_hf"] = train_arms.ratio(res, "sft", "hf")
    out["rft_over_sft"] = train_arms.ratio(res, "rft", "sft")
    say(f"train: MFU sft {out['mfu']['sft']:.2f} rft {out['mfu']['rft']:.2f} hf {out['mfu']['hf']:.2f} "
        f"(ceiling {c:.1f} GFLOP/s); engine/HF {out['engine_over_hf']['ratio']:.3f}; "
        f"RFT/SFT {out['rft_over_sft']['ratio']:.3f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sections", nargs="+", choices=["label", "train"], default=["label", "train"],
                    help="run these; the other's figures come from the previous run's fig9.json")
    a = ap.parse_args()
    s = sizes()
    base, _ = models()
    cfg = json.loads((base / "config.json").read_text())
    say(f"figure 9 on {base.name}: {' and '.join(a.sections)}")
    saved = work_dir() / "fig9.json"
    prev = json.loads(saved.read_text()) if saved.exists() else {}
    lab = label_section(cfg) if "label" in a.sections else prev["label"]
    tr = train_section(cfg) if "train" in a.sections else prev["train"]
    saved.write_text(json.dumps({"label": lab, "train": tr}, indent=2) + "\n")
    common = {"model": os.path.relpath(base, ROOT), "sizes": s}
    d0 = lab["arms"]["zero0-1r"]
    save_figure("real_label_mfu", max(a["mfu"] for a in lab["arms"].values()), TARGETS["real_label_mfu"],
                {**common, "label": lab})
    save_figure("real_label_over_floor", d0["loop_over_floor"], TARGETS["real_label_over_floor"],
                {"compared": "label forward loop (zero0, 1 rank) / floor (1 process)", "floor_s": lab["floor_s"],
                 "arms": {k: {"loop_over_floor": v["loop_over_floor"], "wall_over_floor": v["wall_over_floor"]}
                          for k, v in lab["arms"].items()}})
    save_figure("real_train_mfu", tr["mfu"]["sft"], TARGETS["real_train_mfu"], {**common, "train": tr})
    save_figure("real_engine_over_hf_trainer", tr["engine_over_hf"]["ratio"], TARGETS["real_engine_over_hf_trainer"],
                tr["engine_over_hf"])
    save_figure("real_rft_over_sft", tr["rft_over_sft"]["ratio"], TARGETS["real_rft_over_sft"], tr["rft_over_sft"])


if __name__ == "__main__":
    main()
