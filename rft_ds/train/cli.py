"""`rft-ds train` and `rft-ds shad-train`: flags -> TrainConfig -> rft_ds.train.loop.train.

Every default comes from TrainConfig (`D(name)`), so it is written once."""

from __future__ import annotations

import argparse

from rft_ds.fsio import command_line

from rft_ds.config import DEFAULT_SHUFFLE_FRACTION, DEFAULT_TAU, LOSSES, TrainConfig, default_of
from rft_ds.data.cache import add_cache_flags
from rft_ds.data.sources import DATA_HELP, SPLIT_HELP
from rft_ds.monitor import REPORT_TO


def D(name: str):
    return default_of(TrainConfig, name)


def add_train_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data and model")
    g.add_argument("--model", required=True, help="Hugging Face model directory (or hub id) to fine-tune")
    g.add_argument("--data", required=True, help=DATA_HELP)
    g.add_argument("--data-split", default=D("data_split"), help=SPLIT_HELP)
    g.add_argument("--output", required=True, help="run directory: metrics.jsonl, checkpoints/, final/")
    g.add_argument("--max-seq-len", type=int, default=D("max_seq_len"), help="tokens per sample; longer samples are truncated (counted)")
    g.add_argument("--on-overflow", choices=["truncate", "error"], default=D("on_overflow"))
    g = p.add_argument_group("optimisation")
    g.add_argument("--deepspeed", default=None, help="DeepSpeed JSON (ds_configs/zero3.json ...); default: ZeRO-3")
    g.add_argument("--micro-batch-size", type=int, default=None, help="per rank; default: the JSON's value or 1")
    g.add_argument("--grad-accum", type=int, default=None, help="default: the JSON's value or 1")
    g.add_argument("--max-steps", type=int, default=None)
    g.add_argument("--epochs", type=float, default=None)
    g.add_argument("--lr", type=float, default=None, help="default: the JSON's optimizer lr, else 1e-5")
    g.add_argument("--weight-decay", type=float, default=None, help="default: the JSON's value, else 0")
    g.add_argument("--warmup-ratio", type=float, default=D("warmup_ratio"))
    g.add_argument("--lr-scheduler", choices=["cosine", "linear", "constant"], default=D("lr_scheduler"))
    g.add_argument("--grad-clip", type=float, default=None, help="default: the JSON's gradient_clipping or 1.0")
    g.add_argument("--seed", type=int, default=D("seed"))
    g.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=D("precision"),
                   help="auto: bf16 on GPU, fp32 on CPU (or what the JSON pins)")
    g.add_argument("--no-group-by-length", dest="group_by_length", action="store_false")
    g.add_argument("--logits-chunk", type=int, default=D("logits_chunk"),
                   help="loss positions per lm_head call: at most this many x vocab fp32 logits are alive at once "
                        "(recomputed per chunk in backward)")
    g.add_argument("--grad-ckpt", action="store_true", help="non-reentrant gradient checkpointing")
    g.add_argument("--attn-implementation", default=D("attn_implementation"), help="sdpa | flash_attention_2 | eager")
    g.add_argument("--lora-rank", type=int, default=D("lora_rank"), help="> 0: train a LoRA adapter (peft) instead of all weights")
    g.add_argument("--lora-alpha", type=float, default=None, help="default 2 x rank")
    g.add_argument("--lora-targets", default=D("lora_targets"))
    g.add_argument("--merge-lora", action="store_true", help="also save OUTPUT/final-merged (adapter merged in)")
    g = p.add_argument_group("run control")
    g.add_argument("--save-steps", type=int, default=D("save_steps"), help="DeepSpeed checkpoint every N steps (0: only final/)")
    g.add_argument("--save-total-limit", type=int, default=D("save_total_limit"))
    g.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoints/latest")
    g.add_argument("--overwrite", action="store_true", help="replace a finished run in OUTPUT")
    g.add_argument("--dist-timeout-min", type=float, default=D("dist_timeout_min"),
                   help="process-group timeout (minutes): a dead rank is reported after this long")
    g = p.add_argument_group("tokenized data cache")
    add_cache_flags(g, passes=True)
    g = p.add_argument_group("observability")
    g.add_argument("--report-to", choices=list(REPORT_TO), default=D("report_to"),
                   help="also send every metrics.jsonl scalar to TensorBoard, W&B (offline without WANDB_API_KEY) "
                        "or CSV files through DeepSpeed's monitor; a section already in the JSON is respected")
    g.add_argument("--log-every-s", type=float, default=D("log_every_s"),
                   help="when stderr is not a terminal: one progress line every N seconds (a bar otherwise)")
    g.add_argument("--peak-tflops", type=float, default=None,
                   help="per-device peak TFLOP/s for MFU (default: bf16 peak by GPU name; none on CPU)")


def add_rft_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("loss")
    g.add_argument("--loss", choices=list(LOSSES), default=D("loss"),
                   help="sft: token-mean CE; rft: class means weighted by softmax(losses/tau) (the paper); "
                        "weighted: class means with fixed weights (--w-reasoning); dft: CE x detached token "
                        "probability; rho1: CE of the tokens with the top --keep-ratio excess loss over "
                        "--reference (docs/losses.md)")
    g.add_argument("--masks", default=None,
                   help="masks.jsonl from `rft-ds label` (rft, weighted; with sft, dft: per-class metrics)")
    g.add_argument("--tau", type=float, default=D("tau"), help=f"RFT temperature (default {DEFAULT_TAU}: 1/tau = 0.5)")
    g.add_argument("--w-reasoning", type=float, default=D("w_reasoning"),
                   help="--loss weighted: reasoning weight A in [0, 1], boilerplate 1 - A (default %(default)s)")
    g.add_argument("--rft-granularity", choices=["sample", "batch"], default=D("rft_granularity"),
                   help="rft, weighted: sample: per-sample class means and weights (the paper); "
                        "batch: global class means")
    g.add_argument("--no-detach-weights", dest="detach_weights", action="store_false",
                   help="let gradients flow through the RFT weights")
    g.add_argument("--missing-masks", choices=["error", "sft"], default=D("missing_masks"))
    g.add_argument("--reference", default=None,
                   help="--loss rho1: the reference model (HF directory with the same tokenizer) whose per-token "
                        "CE, computed on the fly, gives each token's excess loss CE - CE_ref")
    g.add_argument("--keep-ratio", type=float, default=D("keep_ratio"),
                   help="--loss rho1: share K of the global batch's loss tokens trained on, those with the "
                        "largest excess loss (default %(default)s)")


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    fields = TrainConfig.__dataclass_fields__
    kw = {k: getattr(a, k) for k in fields if hasattr(a, k)}
    cfg = TrainConfig(**kw)
    cfg.command = command_line()
    return cfg


def run_train(a: argparse.Namespace) -> int:
    from rft_ds.train.loop import train

    train(config_from_args(a))
    return 0


def run_shad(a: argparse.Namespace) -> int:
    from rft_ds import dist
    from rft_ds.data.shuffle import shuffled_subset
    from rft_ds.data.sources import read_source, resolve
    from rft_ds.train.loop import train

    cfg = config_from_args(a)
    cfg.loss, cfg.masks = "sft", None
    convs, audit = shuffled_subset(read_source(resolve(cfg.data, cfg.data_split)), cfg.shuffle_fraction, cfg.shuffle_seed)
    dist.log(f"shad-train: {len(convs)} shuffled (context -> assistant turn) pairs "
             f"(--shuffle-fraction {cfg.shuffle_fraction}, seed {cfg.shuffle_seed}); audit in shuffle.jsonl")
    train(cfg, convs=convs, extra_files={"shuffle.jsonl": audit})
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fine-tune with the SFT, RFT, fixed-weight, DFT or Rho-1 loss (one ZeRO-3 training loop)")
    add_train_flags(p)
    add_rft_flags(p)
    p.set_defaults(func=run_train)
    p = sub.add_parser("shad-train", help="SHAD step 1+2: fine-tune a copy of the base model on shuffled pairs")
    add_train_flags(p)
    g = p.add_argument_group("SHAD")
    g.add_argument("--shuffle-fraction", type=float, default=DEFAULT_SHUFFLE_FRACTION, help="share of (context -> turn) pairs (paper: 1%%)")
    g.add_argument("--shuffle-seed", type=int, default=D("shuffle_seed"))
    p.set_defaults(func=run_shad)
