"""The DeepSpeed JSON: load it, fill its "auto" values, reconcile it with the flags.

`resolve_ds_config` fills the JSON's "auto" values from the command line and turns every
contradiction (batch arithmetic, learning rate, precision) into a ConfigError naming both sides.
Batch flags left unset on the command line take the JSON's concrete value, so a config that pins
`train_micro_batch_size_per_gpu: 4` works without repeating it. Nothing here mutates its inputs:
`resolve_ds_config` returns a new dict, and `resolved_flags` reads back from it the values a run
goes on with (micro-batch, accumulation, lr, ...), which the caller applies with
`dataclasses.replace`. `inference_ds_config` is the label pass's: the ZeRO section only.
"""

from __future__ import annotations

import copy
import json
import os

from rft_ds.config import DEFAULT_LR, TrainConfig
from rft_ds.errors import ConfigError


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
                      hidden_size: int | None = None) -> dict:
    """Fill "auto" values and check the JSON against the flags. Mutates nothing; returns a copy
    (`resolved_flags` reads the values the run goes on with back from it). `hidden_size` (the
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
    ds["gradient_clipping"] = _take(f"{src}: gradient_clipping", ds.get("gradient_clipping"), "--grad-clip",
                                    cfg.grad_clip, 1.0)
    opt = ds.get("optimizer")
    if opt is not None:
        params = opt.setdefault("params", {})
        params["lr"] = _take(f"{src}: optimizer.params.lr", params.get("lr"), "--lr", cfg.lr, DEFAULT_LR)
        params["weight_decay"] = _take(f"{src}: optimizer.params.weight_decay", params.get("weight_decay"),
                                       "--weight-decay", cfg.weight_decay, 0.0)
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


def resolved_flags(ds: dict, cfg: TrainConfig) -> dict:
    """The TrainConfig values a run goes on with, read from a resolved ds_config (with the flags'
    values or defaults where the JSON has no optimizer): apply with dataclasses.replace(cfg, **...)."""
    params = (ds.get("optimizer") or {}).get("params") or {}
    lr = params.get("lr", "auto")
    wd = params.get("weight_decay", "auto")
    return {"micro_batch_size": ds["train_micro_batch_size_per_gpu"], "grad_accum": ds["gradient_accumulation_steps"],
            "grad_clip": ds["gradient_clipping"],
            "lr": lr if lr != "auto" else (DEFAULT_LR if cfg.lr is None else cfg.lr),
            "weight_decay": wd if wd != "auto" else (0.0 if cfg.weight_decay is None else cfg.weight_decay)}


def precision_of(ds: dict) -> str:
    """bf16 | fp16 | fp32, as a resolved ds_config enables it."""
    return "bf16" if ds.get("bf16", {}).get("enabled") else "fp16" if ds.get("fp16", {}).get("enabled") else "fp32"


def inference_ds_config(raw: dict | None, world: int, precision: str, hidden_size: int | None,
                        src: str | None) -> dict:
    """The label pass's DeepSpeed config: the JSON's ZeRO section (default ZeRO-3) with no optimizer,
    scheduler or clipping, one sample per rank per engine call, the given precision."""
    ds = {k: v for k, v in copy.deepcopy(raw).items() if k not in ("optimizer", "scheduler")} if raw else \
        {"zero_optimization": {"stage": 3}}
    ds.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1, train_batch_size=world,
              steps_per_print=10**9)
    ds["bf16"] = {"enabled": precision == "bf16"}
    ds["fp16"] = {"enabled": precision == "fp16"}
    ds.pop("gradient_clipping", None)
    fill_zero_auto(ds, hidden_size)
    left = sorted(k for k, v in (ds.get("zero_optimization") or {}).items() if v == "auto")
    if left:
        raise ConfigError(f"{src}: zero_optimization {', '.join(left)} \"auto\" but the base model's config "
                          "has no hidden_size to fill them from; give values")
    return ds


def _walk(d, prefix=""):
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _walk(v, f"{prefix}{k}.")
    else:
        yield prefix.rstrip("."), d
