"""`rft-ds compare-report`: the paper's comparison of training losses (its Table 2) on one engine.
The last step of recipes/compare/run.sh; writes `compare.md` (also printed) and `compare.json`
(every per-seed number by name) beside it.

Inputs (the layout recipes/compare/run.sh writes under --compare-dir):
    <variant>-seed<S>/final/ (or final-merged/), metrics.jsonl     one training run per variant and seed
    timings.tsv                                                   the recipe's wall time per phase (optional)
and <data-dir>/{heldout,roles}.jsonl from `rft-ds demo-data`; --base is the model every run fine-tuned
(its tokenizer encodes the held-out data).

Every run is measured exactly as `rft-ds demo-report` measures SFT and RFT (`rft_ds.demo.heldout`):
teacher-forced next-token accuracy and CE on every held-out assistant token, split by the
generator's true roles, and greedy generation of every held-out assistant turn that makes a tool
call, scored by `rft_ds.tools.evaluate`. The table: one row per variant, each cell the mean ± sample
standard deviation over seeds, plus each run's training wall time (the last `elapsed_s` of its
metrics.jsonl).

Each run's measurement is saved as eval/<run>.measured.json with what it depends on (the model's
files by name, size and mtime, the held-out data, tokenizer and generation settings): a later report
(another seed added, an interrupted report) measures only the runs whose key changed; --remeasure
measures every run again."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from rft_ds.demo.heldout import (HELDOUT_METRICS, MAX_NEW_TOKENS_SLACK, check_run_tokenizer, heldout_encodings,
                                 measure_run, run_model_dir, write_call_samples)
from rft_ds.demo.markdown import fmt, md_table
from rft_ds.demo.report import model_description, parse_settings, read_timings
from rft_ds.demo.stats import spread
from rft_ds.errors import ConfigError, DataError

DEFAULT_COMPARE_DIR = "outputs/compare"
DEFAULT_DATA_DIR = "data/demo"
DEFAULT_SEEDS = [0, 1]
DEFAULT_BATCH_SIZE = 32
# variant (the run directory's prefix, recipes/compare/run.sh) -> the row's label, as in the paper
VARIANT_LABELS = {"sft": "SFT", "rft": "SHAD+RFT", "weighted": "SHAD+fixed weights", "regex-rft": "Regex+RFT",
                  "rho1": "Rho-1", "dft": "DFT"}
DEFAULT_VARIANTS = list(VARIANT_LABELS)
# the table's columns: (key in compare.json, header); all but the wall time are held-out metrics
COLUMNS = [("call_exact_match", "tool-call exact match"), ("args_exact_match", "argument exact match"),
           ("tf_acc_reasoning", "reasoning-token accuracy"), ("tf_acc_boilerplate", "boilerplate-token accuracy"),
           ("train_wall_s", "training wall time (s)")]
SUMMARY_KEYS = [k for k, _, _ in HELDOUT_METRICS] + ["train_wall_s"]
MEASURE_VERSION = 1  # of what a saved measurement (EVAL_DIR/<run>.measured.json) holds
VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def variant_label(variant: str) -> str:
    return VARIANT_LABELS.get(variant, variant)


def _check_options(variants: list[str], seeds: list[int], max_samples: int | None, max_new_tokens: int | None,
                   batch_size: int) -> None:
    for flag, xs in (("--variants", variants), ("--seeds", seeds)):
        if not xs:
            raise ConfigError(f"{flag} needs at least one value")
        if len(set(xs)) != len(xs):
            raise ConfigError(f"{flag} has duplicates: {' '.join(map(str, xs))}")
    bad = [v for v in variants if not VARIANT_NAME.match(v)]
    if bad:
        raise ConfigError(f"--variants: {', '.join(map(repr, bad))} is not a run directory prefix "
                          "(letters, digits, '_', '.', '+', '-')")
    for name, v in (("--max-samples", max_samples), ("--max-new-tokens", max_new_tokens),
                    ("--batch-size", batch_size)):
        if v is not None and v < 1:
            raise ConfigError(f"{name} must be >= 1, got {v}")


def check_layout(compare: Path, data: Path, base: str, variants: list[str], seeds: list[int],
                 train_data: str | None) -> dict:
    """Every input's path; one ConfigError naming every missing one."""
    paths = {"heldout": data / "heldout.jsonl", "roles": data / "roles.jsonl", "base": Path(base)}
    if train_data:
        paths["train"] = Path(train_data)
    missing = [str(p) for p in paths.values() if not p.exists()]
    for v in variants:
        for s in seeds:
            d = compare / f"{v}-seed{s}"
            paths[f"{v}:{s}"] = d
            if not Path(run_model_dir(d)).is_dir():
                missing.append(str(d / "final"))
            if not (d / "metrics.jsonl").is_file():
                missing.append(str(d / "metrics.jsonl"))
    if missing:
        raise ConfigError(f"the comparison directory {compare} is incomplete (run recipes/compare/run.sh first); "
                          f"missing {len(missing)}: " + ", ".join(missing))
    return paths


def train_wall(run_dir: Path) -> tuple[float, int]:
    """(the last `elapsed_s`, its `step`) of RUN_DIR/metrics.jsonl: the run's training wall time."""
    from rft_ds.fsio import iter_jsonl

    path = run_dir / "metrics.jsonl"
    last = None
    for line, row in iter_jsonl(path, lambda ln, msg: DataError(str(path), ln, None, msg), torn_tail_ok=True):
        if isinstance(row, dict) and "elapsed_s" in row:
            if not isinstance(row["elapsed_s"], (int, float)) or isinstance(row["elapsed_s"], bool):
                raise DataError(str(path), line, "elapsed_s", f"expected seconds, got {row['elapsed_s']!r}")
            last = (float(row["elapsed_s"]), int(row.get("step") or 0))
    if last is None:
        raise DataError(str(path), None, "elapsed_s", "no step row with elapsed_s (did the run take a step?)")
    return last


def summarize(runs: dict[str, dict[str, dict]], variants: list[str], seeds: list[int]) -> dict:
    """{variant: {metric: spread over seeds}} for every held-out metric and the training wall time."""
    return {v: {k: spread([runs[v][str(s)].get(k) for s in seeds]) for k in SUMMARY_KEYS} for v in variants}


def cell(s: dict, digits: int = 3) -> str:
    """A table cell: mean ± sample std (n=seeds); one seed has no std."""
    if s["mean"] is None:
        return "n/a"
    pm = f" ± {s['std']:.{digits}f}" if s["std"] is not None else ""
    return f"{fmt(s['mean'], digits)}{pm} (n={s['n']})"


def measure_key(model_dir: str, heldout_key: dict, max_new_tokens: int, batch_size: int, eval_dtype: str,
                device) -> dict:
    """What one run's measurement depends on: the model's files (name, size, mtime), the held-out data
    (heldout_key: held-out file, roles, tool-call turns, tokenizer), and the generation settings. A saved
    measurement with the same key is reused (EVAL_DIR/<run>.measured.json); any change measures the run
    again."""
    files = sorted([p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in Path(model_dir).iterdir() if p.is_file())
    return {"version": MEASURE_VERSION, "model_dir": str(Path(model_dir).resolve()), "model_files": files,
            "heldout": heldout_key, "max_new_tokens": max_new_tokens, "batch_size": batch_size,
            "eval_dtype": eval_dtype, "device": device.type}


def _measure_or_reuse(name: str, key: dict, eval_dir: Path, reuse: bool, measure) -> tuple[dict, dict]:
    """(metrics, timing) of one run: EVAL_DIR/<name>.measured.json's when its key is `key` (and its
    per-sample file is there), else `measure()`'s, saved with the key."""
    from rft_ds.fsio import write_json

    saved = eval_dir / f"{name}.measured.json"
    if reuse and saved.is_file() and (eval_dir / f"{name}.jsonl").is_file():
        try:
            got = json.loads(saved.read_text())
        except (OSError, json.JSONDecodeError):
            got = {}
        if got.get("key") == key:
            return got["metrics"], {}
    t: dict = {}
    m = measure(t)
    write_json(saved, {"key": key, "metrics": m, "timing": t})
    return m, t


def _measure_runs(paths: dict, variants: list[str], seeds: list[int], eval_dir: Path,
                  max_samples: int | None, max_new_tokens: int | None, batch_size: int, eval_dtype: str,
                  timing: dict, log, reuse: bool = True) -> tuple[dict, dict]:
    """(compare.json's "heldout", its "runs": {variant: {seed: metrics + train_wall_s, train_steps}})."""
    import torch

    from rft_ds.data.render import tokenizer_fingerprint
    from rft_ds.demo.truths import read_roles
    from rft_ds.fsio import file_digest
    from rft_ds.modeling import load_tokenizer

    tok = load_tokenizer(str(paths["base"]))
    fp = tokenizer_fingerprint(tok)
    heldout, encs = heldout_encodings(paths["heldout"], paths["roles"], tok, read_roles(paths["roles"]), max_samples)
    calls, calls_path, max_new_tokens = write_call_samples(heldout, encs, paths["heldout"], eval_dir, max_new_tokens)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    walls = {}
    for v in variants:  # every run's wall time and tokenizer checked before minutes of measuring
        for s in seeds:
            walls[v, s] = train_wall(paths[f"{v}:{s}"])
            check_run_tokenizer(run_model_dir(paths[f"{v}:{s}"]), fp, heldout, encs, paths["base"])
    heldout_key = {"heldout": file_digest(paths["heldout"], 64), "roles": file_digest(paths["roles"], 64),
                   "calls": file_digest(calls_path, 64), "max_samples": max_samples, "tokenizer": fp}
    runs: dict[str, dict[str, dict]] = {v: {} for v in variants}
    for s in seeds:
        for v in variants:
            name, model_dir = f"{v}-seed{s}", run_model_dir(paths[f"{v}:{s}"])
            wall, steps = walls[v, s]

            def measure(t: dict) -> dict:
                log(f"{name}: teacher-forced pass and greedy generation of {len(calls)} tool-call turns ({model_dir})")
                return measure_run(model_dir, encs, calls_path, eval_dir / f"{name}.jsonl", max_new_tokens, batch_size,
                                   eval_dtype, tok.pad_token_id, device, timing=t)

            key = measure_key(model_dir, heldout_key, max_new_tokens, batch_size, eval_dtype, device)
            m, t = _measure_or_reuse(name, key, eval_dir, reuse, measure)
            timing.update({f"{name}_{k}": x for k, x in t.items()})
            runs[v][str(s)] = {**m, "train_wall_s": wall, "train_steps": steps, "model_dir": model_dir,
                               "measured": "now" if t else "reused"}
            log(f"{name}: call exact match {fmt(m['call_exact_match'])}, args {fmt(m['args_exact_match'])}, TF acc "
                f"reasoning {fmt(m['tf_acc_reasoning'])}, boilerplate {fmt(m['tf_acc_boilerplate'])} "
                + (f"({sum(t.values()):.0f}s)" if t else f"(reused {name}.measured.json: same model files and settings)"))
    first = runs[variants[0]][str(seeds[0])]
    heldout_info = {"data": str(paths["heldout"]), "samples": len(heldout), "call_turns": len(calls),
                    "max_new_tokens": max_new_tokens, "tokens_reasoning": first["tokens_reasoning"],
                    "tokens_boilerplate": first["tokens_boilerplate"], "eval_data": str(calls_path),
                    "tokenizer": fp}
    return heldout_info, runs


def _main_table(rep: dict) -> str:
    rows = [[f"{variant_label(v)} (`{v}`)"] + [cell(rep["summary"][v][k], 0 if k == "train_wall_s" else 3)
                                              for k, _ in COLUMNS] for v in rep["variants"]]
    return md_table(["method"] + [h for _, h in COLUMNS], rows)


def _seed_table(rep: dict) -> str:
    rows = []
    for v in rep["variants"]:
        for s in rep["seeds"]:
            r = rep["runs"][v][str(s)]
            rows.append([variant_label(v), str(s)] + [fmt(r[k]) for k, _ in COLUMNS[:-1]]
                        + [f"{r['train_wall_s']:.0f}", str(r["train_steps"])])
    return md_table(["method", "seed"] + [h for _, h in COLUMNS[:-1]] + ["training wall time (s)", "steps"], rows)


def render_markdown(rep: dict) -> str:
    ho, seeds = rep["heldout"], rep["seeds"]
    out = ["# rft-ds loss comparison", "",
           f"Made by `{rep['command']}`. Runs in `{rep['compare_dir']}` (`<variant>-seed<S>/`), seeds "
           f"{' '.join(map(str, seeds))}; base model `{rep['model'].get('path')}`"
           + (f"; trained on `{rep['train_data']['path']}` ({rep['train_data']['samples']} samples)"
              if rep.get("train_data") else "") + ".", "",
           f"Held out: the first {ho['samples']} samples of `{ho['data']}`, {ho['call_turns']} tool-call turns "
           f"generated greedily (at most {ho['max_new_tokens']} new tokens) and scored by `rft-ds evaluate`; "
           f"teacher-forced next-token accuracy on every held-out assistant token by its true role "
           f"({ho['tokens_reasoning']} reasoning, {ho['tokens_boilerplate']} boilerplate tokens). Each cell: mean ± "
           "sample standard deviation over seeds (n = seeds); training wall time: the last `elapsed_s` of the "
           "run's metrics.jsonl.", "", _main_table(rep), "", "Per seed:", "", _seed_table(rep), ""]
    if rep.get("settings"):
        out += ["Budget (`recipes/compare/run.sh` variables):", "",
                md_table(["setting", "value"], [[f"`{k}`", f"`{v}`"] for k, v in rep["settings"].items()]), ""]
    if rep.get("phase_timings_s"):
        rows = [[name, f"{sec:.0f}"] for name, sec in rep["phase_timings_s"]]
        out += ["Wall time per phase of the recipe (seconds, this machine):", "", md_table(["phase", "s"], rows), ""]
    every = [r for v in rep["variants"] for r in rep["runs"][v].values()]
    fresh = sum(r.get("measured") != "reused" for r in every)
    out.append(f"This report took {rep['timing_s']['report_s']:.0f} s (measuring {fresh} of the {len(every)} runs"
               + (f"; {len(every) - fresh} measurements reused from `eval/<run>.measured.json`" if fresh < len(every)
                  else "") + ").")
    return "\n".join(out)


def build_compare(compare_dir: str, data_dir: str, base: str, variants: list[str], seeds: list[int],
                  output: str | None = None, train_data: str | None = None, max_samples: int | None = None,
                  max_new_tokens: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                  eval_dtype: str = "float32", settings: dict | None = None, log=None,
                  reuse: bool = True) -> tuple[dict, str]:
    """Measure every run, write compare.json and compare.md (default COMPARE_DIR/compare.md);
    returns (the compare.json dict, the markdown)."""
    from rft_ds.data.formats import read_conversations
    from rft_ds.fsio import atomic_write, command_line, write_json

    t0 = time.time()
    log = log or (lambda msg: print(f"compare-report: {msg}", file=sys.stderr, flush=True))
    _check_options(variants, seeds, max_samples, max_new_tokens, batch_size)
    compare, data = Path(compare_dir), Path(data_dir)
    paths = check_layout(compare, data, base, variants, seeds, train_data)
    output = Path(output) if output else compare / "compare.md"
    timing: dict[str, float] = {}
    heldout, runs = _measure_runs(paths, variants, seeds, compare / "eval", max_samples, max_new_tokens,
                                  batch_size, eval_dtype, timing, log, reuse)
    rep = {
        "command": command_line(), "compare_dir": str(compare), "data_dir": str(data),
        "model": model_description(paths["base"]),
        "train_data": ({"path": str(paths["train"]), "samples": len(read_conversations(paths["train"]))}
                       if train_data else None),
        "variants": list(variants), "labels": {v: variant_label(v) for v in variants}, "seeds": list(seeds),
        "columns": [{"key": k, "header": h} for k, h in COLUMNS],
        "settings": dict(settings or {}), "phase_timings_s": read_timings(compare / "timings.tsv"),
        "heldout": heldout, "runs": runs, "summary": summarize(runs, variants, seeds),
        "spread": "sample standard deviation (n-1) over seeds; min and max also given",
        "timing_s": timing,
    }
    timing["report_s"] = time.time() - t0
    md = render_markdown(rep)
    write_json(output.with_suffix(".json"), rep)
    with atomic_write(output) as f:
        f.write(md + "\n")
    return rep, md


def run(args: argparse.Namespace) -> int:
    settings = parse_settings(args.setting)
    _, md = build_compare(args.compare_dir, args.data_dir, args.base, args.variants, args.seeds, args.output,
                          args.train_data, args.max_samples, args.max_new_tokens, args.batch_size, args.eval_dtype,
                          settings, reuse=not args.remeasure)
    out = Path(args.output) if args.output else Path(args.compare_dir) / "compare.md"
    print(md + f"\n\nwrote {out} and {out.with_suffix('.json')}", flush=True)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare-report", help="the losses side by side: every variant x seed on the held-out split (Table 2)",
        description="The last step of recipes/compare/run.sh: measure every training run "
                    "COMPARE_DIR/<variant>-seed<S> on the held-out split (tool-call and argument exact match of "
                    "greedy generation, teacher-forced accuracy by true token role), and write one table, mean ± "
                    "std over seeds per variant, with each run's training wall time: compare.md (also printed) "
                    "and compare.json (every per-seed number).")
    p.add_argument("--compare-dir", default=DEFAULT_COMPARE_DIR, help="the runs (default: %(default)s)")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                   help="heldout.jsonl, roles.jsonl from `rft-ds demo-data` (default: %(default)s)")
    p.add_argument("--base", required=True, help="the base model every run fine-tuned (its tokenizer)")
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS,
                   help=f"run directory prefixes, one table row each, in this order (default: {' '.join(DEFAULT_VARIANTS)})")
    p.add_argument("--seeds", type=int, nargs="+", default=DEFAULT_SEEDS, help="training seeds (default: 0 1)")
    p.add_argument("--train-data", default=None, help="the file the runs trained on (recorded in the report)")
    p.add_argument("--max-samples", type=int, default=None, help="use only the first N held-out samples")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"generation limit (default: the longest held-out call turn in tokens + {MAX_NEW_TOKENS_SLACK})")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help="samples per forward pass / generation batch (default: %(default)s)")
    p.add_argument("--output", default=None, help="report file (default: COMPARE_DIR/compare.md; .json beside it)")
    p.add_argument("--setting", action="append", metavar="NAME=VALUE",
                   help="a budget setting of the runs, shown in the report (repeatable)")
    p.add_argument("--eval-dtype", choices=["float32", "bfloat16"], default="float32",
                   help="dtype of the held-out forward passes and generation (default: %(default)s)")
    p.add_argument("--remeasure", action="store_true",
                   help="measure every run again; by default a run whose model files and settings are those of "
                        "its saved measurement (COMPARE_DIR/eval/<run>.measured.json) is not measured twice")
    p.set_defaults(func=run)
