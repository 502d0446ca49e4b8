"""Print the one table of figures vs targets from bench/results.json (and record the run's wall time).

    python bench/report.py [--elapsed SECONDS] [--markdown]
"""

import argparse
import json

from common import RESULTS, load_results, target_met

ORDER = [
    ("rft_over_sft", "1. RFT step / SFT step (same engine, 2 ranks)"),
    ("engine_over_hf_trainer", "2. engine SFT step / HF Trainer+DeepSpeed step"),
    ("label_over_floor", "3. `rft-ds label` wall / floor (2 fwd, no pad, no I/O)"),
    ("label_speedup_vs_naive", "3. naive loop / label loop"),
    ("padding_share", "4. padding share of computed tokens (max of train, label)"),
    ("param_memory_ratio_2_over_1", "5. held memory per rank, 2 ranks / 1 rank (~100M params)"),
    ("label_scaling_exponent", "6. label loop time vs samples, log-log slope"),
    ("loss_memory_over_one_chunk_floor", "7. token-loss peak memory / one-chunk floor (worst case)"),
    ("fig8_rank_bytes_per_token", "8. train rank anon memory growth, B per token of data (warm cache)"),
    ("fig8_warm_first_step_ratio", "8. warm start-up, largest / smallest data"),
    ("fig8_cold_build_speedup", "8. cold cache build at --num-proc 2 / one-process encode"),
    ("fig8_label_peak_anon_bytes_per_token", "8. label peak anon memory growth, B per token of data"),
    ("real_label_mfu", "9. SmolLM2 label: model FLOP/s / GEMM ceiling (best arm)"),
    ("real_label_over_floor", "9. SmolLM2 label loop / 2-forward floor (1 process)"),
    ("real_train_mfu", "9. SmolLM2 train SFT: model FLOP/s / GEMM ceiling (2 ranks)"),
    ("real_engine_over_hf_trainer", "9. SmolLM2 engine SFT step / HF Trainer step"),
    ("real_rft_over_sft", "9. SmolLM2 RFT step / SFT step"),
]


def notes(res: dict) -> dict:
    d = res.get("details", {})
    out = {}
    if "label_over_floor" in d:
        x = d["label_over_floor"]
        wall = x["floor_s"] * res["label_over_floor"]
        out["label_over_floor"] = (f"loop only {x['label_loop_over_floor']:.2f}; wall {wall:.1f}s "
                                   f"= loop + {x['label_fixed_s']:.1f}s fixed; floor {x['floor_s']:.1f}s")
    if "label_speedup_vs_naive" in d:
        x = d["label_speedup_vs_naive"]
        out["label_speedup_vs_naive"] = f"naive {x['naive_s']:.1f}s / loop {x['label_loop_s']:.1f}s"
    if "rft_over_sft" in d:
        out["rft_over_sft"] = f"per round {d['rft_over_sft']['per_round']}"
    if "engine_over_hf_trainer" in d:
        out["engine_over_hf_trainer"] = f"per round {d['engine_over_hf_trainer']['per_round']}"
    if "loss_memory_over_one_chunk_floor" in d:
        c = max(d["loss_memory_over_one_chunk_floor"]["cases"], key=lambda r: r["before_bytes"])
        out["loss_memory_over_one_chunk_floor"] = (f"V={c['vocab']} N={c['tokens']}: before {c['before_over_floor']:.1f}x "
                                                   f"({c['before_bytes'] / 2**30:.1f} GiB), after {c['after_over_floor']:.2f}x")
    if "padding_share" in d:
        x = d["padding_share"]
        out["padding_share"] = f"train {x['train']['share']:.3f}, label {x['label']['share']:.3f}"
    if "param_memory_ratio_2_over_1" in d:
        x = d["param_memory_ratio_2_over_1"]
        out["param_memory_ratio_2_over_1"] = (f"{x['held_MiB']['1']:.0f} -> {x['held_MiB']['2']:.0f} MiB; "
                                              f"DeepSpeed elements {x['deepspeed_elements_ratio_2_over_1']:.3f}")
    if "label_scaling_exponent" in d:
        x = d["label_scaling_exponent"]
        out["label_scaling_exponent"] = (f"wall = {x['wall_fit']['fixed_s']:.1f}s + "
                                         f"{1000 * x['wall_fit']['per_sample_s']:.1f}ms/sample")
    if "real_label_mfu" in d:
        x = d["real_label_mfu"]["label"]
        out["real_label_mfu"] = ", ".join(f"{k} {v['mfu']:.2f}" for k, v in x["arms"].items())
    if "real_train_mfu" in d:
        x = d["real_train_mfu"]["train"]
        out["real_train_mfu"] = (f"sft {x['mfu']['sft']:.2f}, rft {x['mfu']['rft']:.2f}, hf {x['mfu']['hf']:.2f} "
                                 f"of {x['ceiling_gflops']:.1f} GFLOP/s")
    for k in ("real_engine_over_hf_trainer", "real_rft_over_sft"):
        if k in d:
            out[k] = f"per round {d[k]['per_round']}"
    return out


def table(res: dict, markdown: bool) -> str:
    nt = notes(res)
    rows = []
    for key, what in ORDER:
        v = res.get(key)
        tgt = res.get("targets", {}).get(key, "")
        ok = target_met(v, tgt) if tgt else None
        rows.append((key, what, "-" if v is None else f"{v:.3f}", tgt, {True: "yes", False: "NO", None: "-"}[ok],
                     nt.get(key, "")))
    if markdown:
        lines = ["| figure | what | measured | target | met | notes |", "|---|---|---|---|---|---|"]
        lines += [f"| `{r[0]}` | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]} |" for r in rows]
        return "\n".join(lines)
    w = [max(len(r[i]) for r in rows) for i in range(5)]
    head = ("figure", "what", "measured", "target", "met")
    w = [max(a, len(b)) for a, b in zip(w, head)]
    fmt = "  ".join(f"{{:<{x}}}" for x in w) + "  {}"
    lines = [fmt.format(*head, "notes"), fmt.format(*("-" * x for x in w), "-----")]
    lines += [fmt.format(*r) for r in rows]
    return "\n".join(lines)


def throughput(res: dict) -> str:
    """tokens/s (real, unpadded input tokens) of each arm, and MFU where a peak is known (gpu profile)."""
    d = res.get("details", {})
    lines = []
    for fig, arms in (("rft_over_sft", ("sft", "rft")), ("engine_over_hf_trainer", ("hf",))):
        x = d.get(fig)
        if not x:
            continue
        for a in arms:
            mfu = x.get("mfu", {}).get(a)
            lines.append(f"  train {a:<4} {x['tokens_per_s'][a]:>10.0f} tokens/s"
                         + (f"   MFU {100 * mfu:.1f}%" if mfu is not None else "   MFU n/a (no peak FLOP/s on CPU)"))
    x = d.get("label_over_floor")
    if x:
        mfu = x.get("mfu_loop")
        lines.append(f"  label loop {x['label_tokens_per_s_loop']['all']:>8.0f} tokens/s "
                     f"({x['label_tokens_per_s_loop']['loss']:.0f} loss tokens/s)"
                     + (f"   MFU {100 * mfu:.1f}%" if mfu is not None else "   MFU n/a (no peak FLOP/s on CPU)"))
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--elapsed", type=float, default=None)
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    res = load_results()
    if a.elapsed is not None:
        res["run_all_elapsed_s"] = a.elapsed
        RESULTS.write_text(json.dumps(res, indent=2, sort_keys=True) + "\n")
    print(f"\nbench results ({res.get('profile', '?')} profile, {RESULTS})"
          + (f", run_all {a.elapsed / 60:.1f} min" if a.elapsed is not None else ""))
    print(table(res, a.markdown))
    tp = throughput(res)
    if tp:
        print("\nthroughput (steady-state steps; label: forward loop, 2 models)\n" + tp)
