"""`rft-ds demo-report`: the last step of `make demo`. It measures what the demo produced and writes
`report.md` (also printed) and `report.json` (every number by name) beside it.

Inputs (the layout recipes/demo/run.sh writes under --demo-dir):
    base/final/, shad/final/            the warmed base model (also the tokenizer) and the shuffle-tuned model
    masks.jsonl (+ .meta.json)          SHAD labels of <data-dir>/train.jsonl
    sft-seed{S}/, rft-seed{S}/          training runs: metrics.jsonl and final/ (HF checkpoint), per seed S
and <data-dir>/{train,heldout,roles}.jsonl from `rft-ds demo-data`.

1. SHAD vs the ground-truth roles (train). Every loss token of the masks gets a true role: the
   majority of the roles of the message-content characters it covers (ties -> reasoning; a token
   that covers no content character, like the end-of-turn `<|im_end|>`, is boilerplate). Token
   positions come from re-tokenizing the rendered conversation with character offsets
   (`encode_conversation` says which message each token belongs to); the masks' token ids must
   equal the re-tokenized ids (a prefix of them where the labeling pass truncated a turn), else
   the report stops with an error. Metrics: token accuracy, reasoning precision and recall,
   balanced accuracy, the share of tokens labeled reasoning vs the true share, mean LD per true class.
2. SFT vs RFT (held-out). Per seed and run: teacher-forced next-token accuracy (argmax == target)
   and mean cross-entropy on the loss tokens of every assistant message, split by true role (fp32,
   one process, no DeepSpeed); and tool-call metrics of greedy generation (`rft_ds.tools.evaluate.evaluate`)
   on every held-out assistant turn that makes a tool call, generated from the conversation before
   it. (The last assistant turn of a demo sample is always its final answer, which has no call, so
   evaluating the held-out file as it is would leave the call metrics empty.) Then mean ± sample
   standard deviation over seeds, and RFT - SFT as the mean ± std of the per-seed paired differences.
3. Pictures: the loss curves of the first seed's SFT and RFT runs (`curves.png`, as `rft-ds plot`)
   and the masks page (`masks.html`, as `rft-ds view`), linked from the report with relative links.

This module is the command: it checks the inputs and runs the steps. The parts: `truths` (the true
role of each token), `agreement` (1.), `heldout` (2.), `stats` (ROC AUC, spread over seeds) and
`markdown` (report.md), all in `rft_ds/demo/`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from rft_ds.demo.agreement import three_truths
from rft_ds.demo.heldout import (MAX_NEW_TOKENS_SLACK, RUNS, check_run_tokenizer, heldout_encodings, measure_run,
                                  run_model_dir, summarize_seeds, write_call_samples)
from rft_ds.demo.markdown import fmt, render_markdown
from rft_ds.demo.truths import read_roles
from rft_ds.errors import ConfigError, MasksError


DEFAULT_DEMO_DIR = "outputs/demo"
DEFAULT_DATA_DIR = "data/demo"
DEFAULT_SEEDS = [0, 1]
DEFAULT_BATCH_SIZE = 32
DEFAULT_VIEW_SAMPLES = 200


def _check_layout(demo: Path, data: Path, seeds: list[int], base: str | None = None, shad: str | None = None,
                  masks: str | None = None) -> dict:
    paths = {
        "train": data / "train.jsonl", "heldout": data / "heldout.jsonl", "roles": data / "roles.jsonl",
        "base": Path(base) if base else demo / "base" / "final",
        "shad": Path(shad) if shad else demo / "shad" / "final",
        "masks": Path(masks) if masks else demo / "masks.jsonl",
    }
    missing = [str(p) for p in paths.values() if not p.exists()]
    for s in seeds:
        for r in RUNS:
            d = demo / f"{r}-seed{s}"
            paths[f"{r}:{s}"] = d
            for p in (d / "final", d / "metrics.jsonl"):
                if not p.exists():
                    missing.append(str(p))
    if missing:
        raise ConfigError("the demo directory is incomplete (run `make demo`, or recipes/demo/run.sh, first); "
                          "missing: " + ", ".join(missing))
    return paths


def model_description(model_dir: str | os.PathLike) -> dict:
    """What the base model is: `rft-ds fetch-model`'s record (rft_ds_fetch.json) when there is one,
    plus the architecture from config.json and the parameter count."""
    d = Path(model_dir)
    out: dict = {"path": str(d)}
    fetch = d / "rft_ds_fetch.json"
    if fetch.is_file():
        try:
            rec = json.loads(fetch.read_text(encoding="utf-8"))
            out.update({k: rec[k] for k in ("name", "note", "parameters", "dtype", "sha256") if k in rec})
            if isinstance(rec.get("source"), dict):
                out["source"] = {k: rec["source"][k] for k in ("package", "file", "pip") if k in rec["source"]}
        except (OSError, ValueError):
            pass
    try:
        cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
        out["architecture"] = {k: cfg.get(k) for k in ("model_type", "num_hidden_layers", "hidden_size",
                                                        "vocab_size", "tie_word_embeddings", "dtype")}
    except (OSError, ValueError):
        pass
    return out


def read_timings(path: Path) -> list[tuple[str, float]]:
    """`phase<TAB>seconds` lines written by recipes/demo/run.sh (missing file: none)."""
    out = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            parts = line.split("\t")
            if len(parts) == 2:
                try:
                    out.append((parts[0], float(parts[1])))
                except ValueError:
                    pass
    return out


def report_path(demo_dir: str, output: str | None) -> Path:
    """Where report.md goes (report.json beside it): --output, else DEMO_DIR/report.md."""
    return Path(output) if output else Path(demo_dir) / "report.md"


def _check_options(seeds: list[int], max_samples: int | None, max_new_tokens: int | None, batch_size: int,
                   view_samples: int, smooth: int) -> None:
    if not seeds:
        raise ConfigError("--seeds needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds has duplicates: {seeds}")
    for name, v in (("--max-samples", max_samples), ("--max-new-tokens", max_new_tokens)):
        if v is not None and v < 1:
            raise ConfigError(f"{name} must be >= 1, got {v}")
    if batch_size < 1 or view_samples < 1 or smooth < 1:
        raise ConfigError("--batch-size, --view-samples and --smooth must be >= 1")


def _read_labeled_data(paths: dict) -> tuple:
    """(base tokenizer, its fingerprint, roles, masks, masks meta, training data); the masks must have
    been made with the base model's tokenizer."""
    from rft_ds.data.formats import read_conversations
    from rft_ds.data.render import tokenizer_fingerprint
    from rft_ds.masks import read_masks, read_meta
    from rft_ds.modeling import load_tokenizer

    tok = load_tokenizer(str(paths["base"]))
    fp = tokenizer_fingerprint(tok)
    roles = read_roles(paths["roles"])
    masks = read_masks(paths["masks"])
    meta = read_meta(paths["masks"])
    fps = sorted({r["tokenizer"] for r in masks.values()})
    if fps != [fp]:
        raise MasksError(f"{paths['masks']} was made with tokenizer fingerprint {', '.join(fps)}, but "
                         f"{paths['base']} has {fp}: the masks belong to another base model")
    return tok, fp, roles, masks, meta, read_conversations(paths["train"])


def _measure_agreement(masks: dict, train: list, roles: dict, tok, log) -> dict:
    """Part 1: the semantic truth's metrics, with the other two truths under "prefix_aware" and
    "needs_input" (and the needs-input tokens by kind under "needs_input"/"breakdown")."""
    t = three_truths(masks, train, roles, tok)
    agreement = {**t["semantic"], "prefix_aware": t["prefix_aware"],
                 "needs_input": {**t["needs_input"], "breakdown": t["needs_input_breakdown"]}}
    log(f"SHAD agreement on {agreement['tokens']} tokens: accuracy {fmt(agreement['token_accuracy'])} semantic, "
        f"{fmt(agreement['prefix_aware']['token_accuracy'])} prefix-aware, "
        f"{fmt(agreement['needs_input']['token_accuracy'])} needs-input; LD ROC AUC "
        f"{fmt(agreement['ld_roc_auc'])} / {fmt(agreement['prefix_aware']['ld_roc_auc'])} / "
        f"{fmt(agreement['needs_input']['ld_roc_auc'])}")
    return agreement


def _measure_heldout(paths: dict, seeds: list[int], tok, fp: str, roles: dict, eval_dir: Path,
                     max_samples: int | None, max_new_tokens: int | None, batch_size: int, eval_dtype: str,
                     timing: dict, log) -> dict:
    """Part 2: teacher-forced and generation metrics of every run of every seed; report.json's "heldout"."""
    import torch

    heldout, encs = heldout_encodings(paths["heldout"], paths["roles"], tok, roles, max_samples)
    calls, calls_path, max_new_tokens = write_call_samples(heldout, encs, paths["heldout"], eval_dir, max_new_tokens)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    runs: dict[str, dict[str, dict]] = {r: {} for r in RUNS}
    for s in seeds:
        for r in RUNS:
            model_dir = run_model_dir(paths[f"{r}:{s}"])
            check_run_tokenizer(model_dir, fp, heldout, encs, paths["base"])
            log(f"{r}-seed{s}: teacher-forced pass and greedy generation of {len(calls)} tool-call turns ({model_dir})")
            t = {}
            m = measure_run(model_dir, encs, calls_path, eval_dir / f"{r}-seed{s}.jsonl", max_new_tokens, batch_size,
                            eval_dtype, tok.pad_token_id, device, timing=t)
            timing[f"{r}-seed{s}_teacher_forced_s"] = t["teacher_forced_s"]
            timing[f"{r}-seed{s}_generation_s"] = t["generation_s"]
            runs[r][str(s)] = m
            log(f"{r}-seed{s}: TF acc reasoning {fmt(m['tf_acc_reasoning'])}, boilerplate "
                f"{fmt(m['tf_acc_boilerplate'])}; call exact match {fmt(m['call_exact_match'])} "
                f"({t['teacher_forced_s'] + t['generation_s']:.0f}s)")
    first = runs["sft"][str(seeds[0])]
    return {
        "samples": len(heldout), "call_turns": len(calls), "max_new_tokens": max_new_tokens,
        "tokens_reasoning": first["tokens_reasoning"], "tokens_boilerplate": first["tokens_boilerplate"],
        "runs": runs, "summary": summarize_seeds(runs, seeds),
        "eval_data": str(calls_path),
    }


def _draw_pictures(paths: dict, demo: Path, seeds: list[int], masks: dict, train: list, smooth: int,
                   view_samples: int) -> dict:
    """Part 3: curves.png and masks.html in the demo directory; report.json's "pictures"."""
    from rft_ds.fsio import atomic_write
    from rft_ds.tools import plot, view

    curves = demo / "curves.png"
    html = demo / "masks.html"
    with contextlib.redirect_stdout(sys.stderr):
        plot.plot_runs([str(paths[f"sft:{seeds[0]}"]), str(paths[f"rft:{seeds[0]}"])], str(curves),
                       labels=[f"SFT (seed {seeds[0]})", f"RFT (seed {seeds[0]})"], smooth=smooth)
    vtok, source = view.load_tokenizer(str(paths["masks"]), str(paths["base"]))
    page, vsum = view.build_page(str(paths["masks"]), str(paths["train"]), masks, train, vtok, source,
                                 max_samples=view_samples)
    with atomic_write(html) as f:
        f.write(page)
    return {"curves": str(curves), "masks_html": str(html), "masks_html_samples": vsum["samples"]}


def build_report(demo_dir: str, data_dir: str, seeds: list[int], output: str | None = None,
                 max_samples: int | None = None, max_new_tokens: int | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, view_samples: int = DEFAULT_VIEW_SAMPLES,
                 smooth: int = 1, log=None, base: str | None = None, shad: str | None = None,
                 masks: str | None = None, train_data: str | None = None, settings: dict | None = None,
                 eval_dtype: str = "float32") -> tuple[dict, str]:
    """Compute everything, write the pictures, report.json and report.md; returns (report dict, markdown).

    `base`, `shad`, `masks` default to DEMO/base/final, DEMO/shad/final, DEMO/masks.jsonl; `train_data`
    (default DATA/train.jsonl) is the file that was labeled and trained on (the SmolLM2 demo uses a
    subset of the bundled data); `settings` (name -> value) is printed as the run's budget table."""
    from rft_ds.fsio import atomic_write, command_line, write_json

    log = log or (lambda msg: print(f"demo-report: {msg}", file=sys.stderr, flush=True))
    _check_options(seeds, max_samples, max_new_tokens, batch_size, view_samples, smooth)
    demo, data = Path(demo_dir), Path(data_dir)
    paths = _check_layout(demo, data, seeds, base, shad, masks)
    if train_data:
        paths["train"] = Path(train_data)
        if not paths["train"].exists():
            raise ConfigError(f"--train-data {train_data}: file not found")
    output = report_path(demo_dir, output)
    timing: dict[str, float] = {}

    t0 = time.time()
    tok, fp, roles, masks, meta, train = _read_labeled_data(paths)
    agreement = _measure_agreement(masks, train, roles, tok, log)
    timing["shad_agreement_s"] = time.time() - t0
    heldout = _measure_heldout(paths, seeds, tok, fp, roles, demo / "eval", max_samples, max_new_tokens,
                               batch_size, eval_dtype, timing, log)
    t1 = time.time()
    pictures = _draw_pictures(paths, demo, seeds, masks, train, smooth, view_samples)
    timing["pictures_s"] = time.time() - t1

    rep = {
        "command": command_line(),
        "demo_dir": str(demo), "data_dir": str(data), "seeds": list(seeds),
        "model": model_description(paths["base"]),
        "settings": dict(settings or {}),
        "phase_timings_s": read_timings(demo / "timings.tsv"),
        "inputs": {k: str(v) for k, v in paths.items() if ":" not in k},
        "masks_meta": {k: meta.get(k) for k in ("base", "shad", "margin", "max_seq_len") if k in meta},
        "tokenizer": fp,
        "shad_agreement": agreement,
        "heldout": heldout,
        "pictures": pictures,
        "spread": "sample standard deviation (n-1) over seeds; min and max also given",
        "timing_s": timing,
    }
    md = render_markdown(rep, output.parent)
    write_json(output.with_suffix(".json"), rep)
    with atomic_write(output) as f:
        f.write(md + "\n")
    return rep, md


def parse_settings(pairs: list[str] | None) -> dict[str, str]:
    """--setting NAME=VALUE (repeatable) as a dict, in order."""
    settings = {}
    for kv in pairs or []:
        if "=" not in kv:
            raise ConfigError(f"--setting {kv!r}: expected NAME=VALUE")
        k, v = kv.split("=", 1)
        settings[k] = v
    return settings


def run(args: argparse.Namespace) -> int:
    settings = parse_settings(args.setting)
    rep, md = build_report(args.demo_dir, args.data_dir, args.seeds, args.output, args.max_samples,
                           args.max_new_tokens, args.batch_size, args.view_samples, args.smooth,
                           base=args.base, shad=args.shad, masks=args.masks, train_data=args.train_data,
                           settings=settings, eval_dtype=args.eval_dtype)
    print(md, flush=True)
    out = report_path(args.demo_dir, args.output)
    print(f"\nwrote {out} and {out.with_suffix('.json')}", flush=True)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo-report", help="measure the demo: SHAD labels vs ground truth, SFT vs RFT on held-out data, pictures",
        description="The last step of `make demo`: compare the SHAD labels with the demo's ground-truth token "
                    "roles, compare the SFT and RFT runs of each seed on the held-out split (teacher-forced "
                    "accuracy by role, tool-call metrics of greedy generation), draw the loss curves and the masks "
                    "page, and write report.md (also printed) and report.json.")
    p.add_argument("--demo-dir", default=DEFAULT_DEMO_DIR, help="demo outputs (default: %(default)s)")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                   help="train.jsonl, heldout.jsonl, roles.jsonl from `rft-ds demo-data` (default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=DEFAULT_SEEDS, help="training seeds (default: 0 1)")
    p.add_argument("--output", default=None, help="report file (default: DEMO_DIR/report.md; report.json beside it)")
    p.add_argument("--max-samples", type=int, default=None,
                   help="use only the first N held-out samples (teacher-forced and generation; default: all)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"generation limit (default: the longest held-out call turn in tokens + {MAX_NEW_TOKENS_SLACK})")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help="samples per forward pass / generation batch (default: %(default)s)")
    p.add_argument("--view-samples", type=int, default=DEFAULT_VIEW_SAMPLES,
                   help="samples rendered in masks.html (default: %(default)s)")
    p.add_argument("--smooth", type=int, default=1, help="moving-average window of the loss curves (default: raw)")
    p.add_argument("--base", default=None, help="the base model (default: DEMO_DIR/base/final)")
    p.add_argument("--shad", default=None, help="the shuffle-tuned model (default: DEMO_DIR/shad/final)")
    p.add_argument("--masks", default=None, help="the SHAD masks (default: DEMO_DIR/masks.jsonl)")
    p.add_argument("--train-data", default=None,
                   help="the file that was labeled and trained on (default: DATA_DIR/train.jsonl)")
    p.add_argument("--setting", action="append", metavar="NAME=VALUE",
                   help="a budget setting of the run, shown in the report (repeatable)")
    p.add_argument("--eval-dtype", choices=["float32", "bfloat16"], default="float32",
                   help="dtype of the held-out forward passes and generation (default: %(default)s)")
    p.set_defaults(func=run)
