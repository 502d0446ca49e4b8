"""`rft-ds label`: flags -> LabelConfig -> rft_ds.label.run.label (SHAD, the default) or
rft_ds.label.regex.label_regex (`--method regex`). Every default comes from LabelConfig
(`D(name)`), so it is written once."""

from __future__ import annotations

import argparse
import dataclasses

from rft_ds.config import LabelConfig, default_of
from rft_ds.data.cache import add_cache_flags
from rft_ds.data.sources import DATA_HELP, SPLIT_HELP


def D(name: str):
    return default_of(LabelConfig, name)


def run_label(a: argparse.Namespace) -> int:
    cfg = LabelConfig(**{f.name: getattr(a, f.name) for f in dataclasses.fields(LabelConfig)})
    cfg.check()  # flag errors before any heavy import (each pass checks again)
    if cfg.method == "regex":
        from rft_ds.label.regex import label_regex

        return label_regex(cfg)
    from rft_ds.label.run import label

    return label(cfg)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("label", help="SHAD step 3: per-token LD = l_shad - l_base -> masks.jsonl (sharded, resumable); "
                                     "--method regex: labels from a boilerplate regex instead")
    p.add_argument("--method", choices=["shad", "regex"], default=D("method"),
                   help="shad: the SHAD pass (two models); regex: the paper's Regex baseline, the base model's "
                        "tokenizer only, one plain process, the same masks file (docs/regex-labels.md)")
    p.add_argument("--base", required=True, help="the original base model directory (regex: only its tokenizer)")
    p.add_argument("--shad", default=None, help="the shuffle-tuned model (shad-train OUTPUT/final); "
                                                "required with --method shad")
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--data-split", default=D("data_split"), help=SPLIT_HELP)
    p.add_argument("--output", required=True, help="masks JSONL to write")
    p.add_argument("--batch-size", type=int, default=D("batch_size"), help="samples per forward pass per rank")
    p.add_argument("--max-seq-len", type=int, default=D("max_seq_len"), help="must equal the RFT run's --max-seq-len")
    p.add_argument("--on-overflow", choices=["truncate", "error"], default=D("on_overflow"))
    p.add_argument("--margin", type=float, default=D("margin"), help="label 1 iff LD > margin (paper: 0)")
    p.add_argument("--boilerplate-regex", default=D("boilerplate_regex"), metavar="PATTERN",
                   help="--method regex: a Python regex; content characters inside a match are boilerplate "
                        "(default: ReAct keywords, JSON punctuation and keys; docs/regex-labels.md)")
    add_cache_flags(p, passes=True)
    p.add_argument("--deepspeed", default=None, help="DeepSpeed JSON (its ZeRO section is used); default ZeRO-3")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=D("precision"))
    p.add_argument("--logits-chunk", type=int, default=D("logits_chunk"),
                   help="loss positions per lm_head call (the same default as train and estimate-memory)")
    p.add_argument("--attn-implementation", default=D("attn_implementation"))
    p.add_argument("--rounds-per-chunk", type=int, default=D("rounds_per_chunk"), help="rounds (one batch per rank) per chunk file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing masks file / unfinished work")
    p.add_argument("--dist-timeout-min", type=float, default=D("dist_timeout_min"))
    p.add_argument("--log-every-s", type=float, default=D("log_every_s"),
                   help="when stderr is not a terminal: one progress line every N seconds (a bar otherwise)")
    p.set_defaults(func=run_label)
