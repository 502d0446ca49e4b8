"""The SHAD sweep on the demo data: which SHAD budget gives labels that match the known token roles?

    python -m rft_ds.demo.sweep --model .venv/models/smollm2-135m --out outputs/shad-sweep
    python -m rft_ds.demo.sweep --out outputs/shad-sweep --table      # only print the table
    (recipes/demo/sweep.sh runs it with the demo's launcher settings; docs/shad-sweep.md has the results)

For every setting (SHAD steps, learning rate, shuffle fraction, full weights or LoRA rank, micro-batch):
  1. `rft-ds shad-train` on --data (the bundled 1 200 training samples; the shuffled pairs are drawn
     from all of them, as `make demo` does), timed;
  2. `rft-ds label` of a fixed subset (the first --samples samples of --data, the same for every
     setting), timed;
  3. the labels against the three truths of the demo's roles (semantic, prefix-aware, needs-input;
     see rft_ds/demo/truths.py and agreement.py): token accuracy, precision, recall, balanced
     accuracy, LD ROC AUC.
Each setting writes OUT/<name>/result.json and is skipped when that exists, so an interrupted sweep
continues where it stopped. The SHAD model's weights are deleted after labeling unless --keep-models
(the masks stay). Every launch is the same command line `make demo` uses (1 plain process, or
`deepspeed --hostfile` with 2 ranks: --ranks).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rft_ds.dist import free_port

TRUTHS = (("semantic", None), ("prefix_aware", "prefix_aware"), ("needs_input", "needs_input"))


@dataclass
class Setting:
    name: str
    steps: int
    lr: float
    fraction: float
    lora_rank: int = 0      # 0: full weights
    micro_batch: int = 4    # per rank
    seed: int = 0

    @property
    def weights(self) -> str:
        return "full" if self.lora_rank == 0 else f"LoRA r{self.lora_rank}"


# The grid of docs/shad-sweep.md. Names: s<steps>-lr<lr>-f<fraction>-<full|r<rank>>[-mb<micro batch>].
DEFAULT_SETTINGS = [
    Setting("s30-lr3e-4-f0.05-full", 30, 3e-4, 0.05),
    Setting("s30-lr1e-4-f0.05-full", 30, 1e-4, 0.05),      # the untuned run of issue 12
    Setting("s60-lr3e-4-f0.05-full", 60, 3e-4, 0.05),      # twice the steps (about 1.7 epochs of the pairs)
    Setting("s30-lr3e-4-f0.2-full", 30, 3e-4, 0.2),        # 4x the pairs, each seen at most once
    Setting("s30-lr1e-3-f0.05-r16", 30, 1e-3, 0.05, lora_rank=16),
    Setting("s30-lr1e-3-f0.05-full", 30, 1e-3, 0.05),
]


def parse_setting(text: str) -> Setting:
    """NAME:STEPS:LR:FRACTION[:LORA_RANK[:MICRO_BATCH]] (LORA_RANK 0 = full weights)."""
    parts = text.split(":")
    if not 4 <= len(parts) <= 6:
        raise SystemExit(f"--setting {text!r}: expected NAME:STEPS:LR:FRACTION[:LORA_RANK[:MICRO_BATCH]]")
    s = Setting(parts[0], int(parts[1]), float(parts[2]), float(parts[3]))
    if len(parts) > 4:
        s.lora_rank = int(parts[4])
    if len(parts) > 5:
        s.micro_batch = int(parts[5])
    return s


def launcher(ranks: int, hostfile: str) -> list[str]:
    if ranks == 1:
        return [sys.executable, "-m", "rft_ds"]
    return ["deepspeed", "--hostfile", hostfile, "--no_ssh_check", "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), "--module", "rft_ds"]


def _run(cmd: list[str], log: Path) -> float:
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    t0 = time.time()
    with open(log, "w", encoding="utf-8") as f:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in p.stdout:
            f.write(line)
            if line.startswith(("step ", "label:", "saved", "train:")) or "rounds" in line:
                sys.stderr.write("    " + line.rstrip("\r\n")[-200:] + "\n")
                sys.stderr.flush()
        rc = p.wait()
    if rc != 0:
        raise SystemExit(f"command failed (exit {rc}); log: {log}")
    return time.time() - t0


def subset(data: str, n: int, out: Path) -> Path:
    lines = [x for x in Path(data).read_text(encoding="utf-8").splitlines(keepends=True) if x.strip()][:n]
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists() or out.read_text(encoding="utf-8") != "".join(lines):
        out.write_text("".join(lines), encoding="utf-8")
    return out


def agreement_all(masks_path: str, data_path: str, roles_path: str, tokenizer_dir: str) -> dict:
    """{truth: agreement metrics} of a masks file against the three truths."""
    from rft_ds.data.formats import read_conversations
    from rft_ds.demo.agreement import three_truths
    from rft_ds.demo.truths import read_roles
    from rft_ds.masks import read_masks
    from rft_ds.modeling import load_tokenizer

    masks = read_masks(masks_path)
    convs = read_conversations(data_path)
    roles = read_roles(roles_path)
    tok = load_tokenizer(tokenizer_dir)
    return three_truths(masks, convs, roles, tok)


def run_setting(s: Setting, a: argparse.Namespace, label_data: Path) -> dict:
    d = Path(a.out) / s.name
    d.mkdir(parents=True, exist_ok=True)
    shad = d / "shad"
    cmd = launcher(a.ranks, a.hostfile) + [
        "shad-train", "--model", a.model, "--data", a.data, "--output", str(shad), "--deepspeed", a.ds_config,
        "--micro-batch-size", str(s.micro_batch), "--max-seq-len", str(a.max_seq_len), "--overwrite",
        "--shuffle-fraction", str(s.fraction), "--max-steps", str(s.steps), "--lr", str(s.lr), "--seed", str(s.seed)]
    if s.lora_rank:
        cmd += ["--lora-rank", str(s.lora_rank), "--merge-lora"]
    if a.precision != "auto":
        cmd += ["--precision", a.precision]
    t_shad = _run(cmd, d / "shad.log")
    shad_model = shad / ("final-merged" if s.lora_rank else "final")
    masks = d / "masks.jsonl"
    cmd = launcher(a.label_ranks, a.hostfile) + [
        "label", "--base", a.model, "--shad", str(shad_model), "--data", str(label_data), "--output", str(masks),
        "--batch-size", str(a.label_batch), "--max-seq-len", str(a.max_seq_len), "--overwrite",
        "--deepspeed", a.label_ds_config]
    if a.label_precision != "auto":
        cmd += ["--precision", a.label_precision]
    t_label = _run(cmd, d / "label.log")
    ag = agreement_all(str(masks), str(label_data), a.roles, a.model)
    res = {"setting": asdict(s), "weights": s.weights, "shad_s": round(t_shad, 1), "label_s": round(t_label, 1),
           "label_samples": a.samples, "ranks": a.ranks, "label_ranks": a.label_ranks, "precision": a.precision,
           "label_precision": a.label_precision, "load_at_end": os.getloadavg()[0]}
    res.update(_scores(ag))
    pairs = None
    audit = shad / "shuffle.jsonl"
    if audit.exists():
        pairs = sum(1 for line in audit.read_text(encoding="utf-8").splitlines() if line.strip())
    res["pairs"] = pairs
    (d / "result.json").write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    if not a.keep_models:
        for sub in ("final", "final-merged"):
            shutil.rmtree(shad / sub, ignore_errors=True)
    return res


METRICS = ("tokens", "token_accuracy", "reasoning_precision", "reasoning_recall", "boilerplate_recall",
           "balanced_accuracy", "ld_roc_auc", "true_reasoning_share", "labeled_reasoning_share",
           "mean_ld_true_reasoning", "mean_ld_true_boilerplate")


def _scores(ag: dict) -> dict:
    return {"agreement": {k: {m: v[m] for m in METRICS} for k, v in ag.items() if k != "needs_input_breakdown"},
            "needs_input_breakdown": ag["needs_input_breakdown"]}


def rescore(a: argparse.Namespace) -> None:
    """Recompute the agreement of every finished setting from its masks (after a change of the truths)."""
    for p in sorted(Path(a.out).glob("*/result.json")):
        res = json.loads(p.read_text(encoding="utf-8"))
        label_data = Path(a.out) / f"label-first{res['label_samples']}.jsonl"
        res.update(_scores(agreement_all(str(p.parent / "masks.jsonl"), str(label_data), a.roles, a.model)))
        p.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
        print(f"sweep: rescored {p.parent.name}", file=sys.stderr, flush=True)


def _f(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def table(results: list[dict]) -> str:
    """The markdown table of docs/shad-sweep.md: one row per setting."""
    head = ["setting", "steps", "lr", "fraction (pairs)", "weights", "SHAD s", "label s"]
    for t in ("semantic", "prefix-aware", "needs-input"):
        head += [f"{t} acc", f"{t} bal", f"{t} AUC"]
    head += ["needs-input P / R", "value-token recall", "template-choice recall", "values-only AUC"]
    rows = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in results:
        s, ag = r["setting"], r["agreement"]
        row = [f"`{s['name']}`", str(s["steps"]), f"{s['lr']:g}", f"{s['fraction']:g} ({r.get('pairs')})", r["weights"],
               f"{r['shad_s']:.0f}", f"{r['label_s']:.0f}"]
        for t, _ in TRUTHS:
            row += [_f(ag[t]["token_accuracy"]), _f(ag[t]["balanced_accuracy"]), _f(ag[t]["ld_roc_auc"])]
        ni = ag["needs_input"]
        row += [f"{_f(ni['reasoning_precision'], 2)} / {_f(ni['reasoning_recall'], 2)}"]
        bd = r.get("needs_input_breakdown") or {}
        row += [_f((bd.get("value") or {}).get("reasoning_recall")),
                _f((bd.get("template_choice") or {}).get("reasoning_recall")), _f(bd.get("ld_roc_auc_values_only"))]
        rows.append("| " + " | ".join(row) + " |")
    return "\n".join(rows)


def collect(out: str) -> list[dict]:
    res = []
    for p in sorted(Path(out).glob("*/result.json"), key=lambda p: p.stat().st_mtime):
        res.append(json.loads(p.read_text(encoding="utf-8")))
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rft_ds.demo.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=".venv/models/smollm2-135m")
    p.add_argument("--data", default="data/demo/train.jsonl", help="SHAD draws its shuffled pairs from this file")
    p.add_argument("--roles", default="data/demo/roles.jsonl")
    p.add_argument("--out", default="outputs/shad-sweep")
    p.add_argument("--samples", type=int, default=200, help="label the first N samples of --data (every setting)")
    p.add_argument("--setting", action="append", type=parse_setting, default=None,
                   help="NAME:STEPS:LR:FRACTION[:LORA_RANK[:MICRO_BATCH]] (repeatable; default: the grid)")
    p.add_argument("--only", nargs="*", default=None, help="run only these names of the default grid")
    p.add_argument("--ranks", type=int, choices=[1, 2], default=1, help="SHAD training processes")
    p.add_argument("--label-ranks", type=int, choices=[1, 2], default=2, help="labeling processes")
    p.add_argument("--hostfile", default="hostfiles/localhost")
    p.add_argument("--ds-config", default="ds_configs/zero2.json")
    p.add_argument("--label-ds-config", default="ds_configs/zero0.json")
    p.add_argument("--max-seq-len", type=int, default=512)
    p.add_argument("--label-batch", type=int, default=8)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--label-precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--keep-models", action="store_true")
    p.add_argument("--table", action="store_true", help="only print the table of the finished settings")
    p.add_argument("--rescore", action="store_true",
                   help="recompute the agreement of the finished settings from their masks, print the table")
    a = p.parse_args(argv)
    if a.rescore:
        rescore(a)
    elif not a.table:
        settings = a.setting or [s for s in DEFAULT_SETTINGS if a.only is None or s.name in a.only]
        label_data = subset(a.data, a.samples, Path(a.out) / f"label-first{a.samples}.jsonl")
        for s in settings:
            if (Path(a.out) / s.name / "result.json").exists():
                print(f"sweep: {s.name}: done before, skipped", file=sys.stderr, flush=True)
                continue
            print(f"sweep: {s.name}", file=sys.stderr, flush=True)
            r = run_setting(s, a, label_data)
            ni = r["agreement"]["needs_input"]
            print(f"sweep: {s.name}: SHAD {r['shad_s']:.0f}s, label {r['label_s']:.0f}s; needs-input accuracy "
                  f"{_f(ni['token_accuracy'])}, AUC {_f(ni['ld_roc_auc'])}", file=sys.stderr, flush=True)
    print(table(collect(a.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
