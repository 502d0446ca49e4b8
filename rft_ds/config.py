"""Typed run configuration and the one place where flags and the DeepSpeed JSON are reconciled.

`resolve_ds_config` fills the DeepSpeed JSON's "auto" values from the command line and turns every
contradiction (batch arithmetic, learning rate, precision) into a ConfigError naming both sides.
Batch flags left unset on the command line take the JSON's concrete value, so a config that pins
`train_micro_batch_size_per_gpu: 4` works without repeating it.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass, field

from rft_ds.errors import ConfigError

DEFAULT_LR = 1e-5
DEFAULT_TAU = 2.0  # 1/tau = 0.5, the top of the paper's robust range [0.2, 0.5]


@dataclass
class TrainConfig:
    model: str
    data: str
    output: str
    deepspeed: str | None = None
    micro_batch_size: int | None = None  # None: from the ds_config, else 1
    grad_accum: int | None = None        # None: from the ds_config, else 1
    max_steps: int | None = None
    epochs: float | None = None
    lr: float | None = None              # None: the JSON's value, else DEFAULT_LR
    weight_decay: float | None = None    # None: the JSON's value, else 0
    warmup_ratio: float = 0.03
    lr_scheduler: str = "cosine"         # cosine | linear | constant
    grad_clip: float | None = None       # None: the JSON's gradient_clipping, else 1.0
    seed: int = 42
    loss: str = "sft"                    # sft | rft
    max_seq_len: int = 4096
    on_overflow: str = "truncate"        # truncate | error
    save_steps: int = 0                  # 0: only the final save
    save_total_limit: int = 2
    resume: bool = False
    overwrite: bool = False
    precision: str = "auto"              # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    group_by_length: bool = True
    logits_chunk: int = 1024            # loss positions per lm_head call; = estimate-memory --loss-chunk-tokens
    grad_ckpt: bool = False
    attn_implementation: str = "sdpa"
    dist_timeout_min: float = 120.0
    # observability
    report_to: str = "none"              # none | tensorboard | wandb | csv (DeepSpeed's monitor)
    log_every_s: float = 30.0            # plain progress line every N s when stderr is not a terminal
    peak_tflops: float | None = None     # per-device peak for MFU; default: table by GPU name (GPU only)
    # RFT
    masks: str | None = None
    tau: float = DEFAULT_TAU
    rft_granularity: str = "sample"      # sample | batch
    detach_weights: bool = True
    missing_masks: str = "error"         # error | sft
    # SHAD tuning
    shuffle_fraction: float | None = None
    shuffle_seed: int = 0
    # LoRA
    lora_rank: int = 0
    lora_alpha: float | None = None
    lora_targets: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    merge_lora: bool = False             # also write OUTPUT/final-merged (full model)
    command: str = ""

    def check(self) -> None:
        """Cross-field checks that need no files."""
        if (self.max_steps is None) == (self.epochs is None):
            raise ConfigError("give exactly one of --max-steps and --epochs")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError("--max-steps must be >= 1")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError("--epochs must be > 0")
        for name in ("micro_batch_size", "grad_accum"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
        if self.loss == "rft" and not self.masks:
            raise ConfigError("--loss rft needs --masks (from `rft-ds label`)")
        if self.tau <= 0:
            raise ConfigError("--tau must be > 0")
        if self.loss == "rft" and self.rft_granularity == "batch" and self.missing_masks == "sft":
            raise ConfigError("--missing-masks sft is supported with --rft-granularity sample only")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other")
        if self.shuffle_fraction is not None and not 0 < self.shuffle_fraction <= 1:
            raise ConfigError("--shuffle-fraction must be in (0, 1]")

    def to_json(self) -> dict:
        return asdict(self)


def load_ds_config(path: str) -> dict:
    if not os.path.exists(path):
        raise ConfigError(f"{path}: DeepSpeed config not found")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: malformed DeepSpeed JSON: {e.msg}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: a DeepSpeed config must be a JSON object")
    return cfg


def default_ds_config() -> dict:
    """What a run without --deepspeed uses: ZeRO-3, everything else from the flags."""
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True},
        "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto", "betas": [0.9, 0.999], "eps": 1e-8}},
    }


def _take(where: str, json_val, flag: str, flag_val, default):
    """Reconcile one setting: 'auto'/absent -> flag or default; concrete -> must equal the flag."""
    if json_val in (None, "auto"):
        return flag_val if flag_val is not None else default
    if flag_val is not None and json_val != flag_val:
        raise ConfigError(f"{where} = {json_val!r} contradicts {flag} {flag_val!r}: "
                          f"set it to \"auto\" or drop the flag")
    return json_val


def resolve_precision(cfg: TrainConfig, on_gpu: bool) -> str:
    if cfg.precision == "auto":
        return "bf16" if on_gpu else "fp32"
    return cfg.precision


# ZeRO sizes that Hugging Face's DeepSpeed integration fills from the model when they are "auto"
# (transformers.integrations.deepspeed): configs written for HF Trainer work here unchanged.
ZERO_AUTO_FROM_HIDDEN = {
    "reduce_bucket_size": lambda h: h * h,
    "stage3_prefetch_bucket_size": lambda h: int(0.9 * h * h),
    "stage3_param_persistence_threshold": lambda h: 10 * h,
}


def fill_zero_auto(ds: dict, hidden_size: int | None) -> dict:
    """Replace "auto" ZeRO bucket sizes with Hugging Face's rules from the model's hidden size
    (in place; returns ds). Without a hidden size they stay "auto" and the caller's check names them."""
    zero = ds.get("zero_optimization") or {}
    for key, rule in ZERO_AUTO_FROM_HIDDEN.items():
        if zero.get(key) == "auto" and hidden_size:
            zero[key] = rule(int(hidden_size))
    return ds


def resolve_ds_config(raw: dict, cfg: TrainConfig, world: int, on_gpu: bool, src: str = "ds_config",
                      training: bool = True, hidden_size: int | None = None) -> dict:
    """Fill "auto" values and check the JSON against the flags. Mutates nothing; returns a copy.
    Also sets cfg.micro_batch_size / cfg.grad_accum to the resolved values. `hidden_size` (the
    model's) fills "auto" ZeRO bucket sizes as Hugging Face does (ZERO_AUTO_FROM_HIDDEN)."""
    ds = copy.deepcopy(raw)
    mb = _take(f"{src}: train_micro_batch_size_per_gpu", ds.get("train_micro_batch_size_per_gpu"),
               "--micro-batch-size", cfg.micro_batch_size, 1)
    ga = _take(f"{src}: gradient_accumulation_steps", ds.get("gradient_accumulation_steps"),
               "--grad-accum", cfg.grad_accum, 1)
    tb = ds.get("train_batch_size")
    if tb not in (None, "auto") and tb != mb * ga * world:
        raise ConfigError(f"{src}: train_batch_size = {tb} but micro-batch {mb} x accumulation {ga} x "
                          f"{world} ranks = {mb * ga * world}; set it to \"auto\"")
    ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"] = mb, ga
    ds["train_batch_size"] = mb * ga * world
    cfg.micro_batch_size, cfg.grad_accum = mb, ga
    ds["gradient_clipping"] = cfg.grad_clip = _take(f"{src}: gradient_clipping", ds.get("gradient_clipping"),
                                                    "--grad-clip", cfg.grad_clip, 1.0)
    opt = ds.get("optimizer")
    if training and opt is not None:
        params = opt.setdefault("params", {})
        params["lr"] = _take(f"{src}: optimizer.params.lr", params.get("lr"), "--lr", cfg.lr, DEFAULT_LR)
        params["weight_decay"] = _take(f"{src}: optimizer.params.weight_decay", params.get("weight_decay"),
                                       "--weight-decay", cfg.weight_decay, 0.0)
        cfg.lr, cfg.weight_decay = params["lr"], params["weight_decay"]
    else:
        cfg.lr = DEFAULT_LR if cfg.lr is None else cfg.lr
        cfg.weight_decay = 0.0 if cfg.weight_decay is None else cfg.weight_decay
    prec = resolve_precision(cfg, on_gpu)
    sects = {key: ds.setdefault(key, {}) for key in ("bf16", "fp16")}
    if cfg.precision == "auto":
        pinned = [k for k, sect in sects.items() if sect.get("enabled", "auto") != "auto" and bool(sect["enabled"])]
        if pinned:
            prec = pinned[0]  # the JSON pins the precision; its "auto" sections follow
    for key, sect in sects.items():
        want = prec == key
        en = sect.get("enabled", "auto")  # an absent setting is ours to fill, like "auto"
        if en == "auto":
            sect["enabled"] = want
        elif bool(en) != want and cfg.precision != "auto":
            raise ConfigError(f"{src}: {key}.enabled = {en} contradicts --precision {cfg.precision}")
    if ds["bf16"].get("enabled") and ds["fp16"].get("enabled"):
        raise ConfigError(f"{src}: bf16 and fp16 are both enabled")
    if not on_gpu and prec == "fp16":
        raise ConfigError(f"{src}: fp16 needs a GPU; use --precision fp32 or bf16 on CPU")
    zero = ds.setdefault("zero_optimization", {})
    fill_zero_auto(ds, hidden_size)
    if zero.get("stage") == 3:
        if zero.get("stage3_gather_16bit_weights_on_model_save") is False:
            raise ConfigError(f"{src}: stage3_gather_16bit_weights_on_model_save is false, so the final "
                              "save would be empty; set it to true")
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    for k, v in list(_walk(ds)):
        if v == "auto":
            raise ConfigError(f"{src}: '{k}' is \"auto\" but rft-ds does not know how to fill it; give a value")
    ds.setdefault("steps_per_print", 10**9)
    ds.setdefault("wall_clock_breakdown", False)
    return ds


def _walk(d, prefix=""):
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _walk(v, f"{prefix}{k}.")
    else:
        yield prefix.rstrip("."), d
