"""LoRA under ZeRO-3: save the adapter from the gathered (consolidated) weights, and merge it.

Under ZeRO-3 every parameter of the live model is a partition (a rank holds a 1/W slice; the module
sees an empty tensor), so `PeftModel.save_pretrained()` on the live model writes an adapter whose
tensors are empty or missing. The engine therefore gathers the full 16-bit state dict on rank 0
(every rank takes part) and hands it here; only rank 0 calls `save_lora`.

    OUT/final/            adapter_config.json + adapter_model.safetensors (LoRA tensors only, keys as
                          peft writes them: "base_model.model.<module>.lora_A.weight", adapter name
                          removed) + the tokenizer. Load with
                          `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), OUT/final)`.
    OUT/final-merged/     (merge=True) the full Hugging Face model with W + (alpha/r) B A folded in,
                          computed from the same gathered state dict: no second model in memory.

Both directories are written into a temp dir beside the target and renamed into place, so a crash
never leaves a half-written adapter that looks whole.

Merge an adapter later, in a plain process (CPU is fine; a 70B model needs ~140 GB of host memory
in bf16):
    python -m rft_ds.train.lora merge --adapter OUT/final --output OUT/final-merged [--base BASE_DIR]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

from rft_ds.errors import ConfigError
from rft_ds.fsio import atomic_dir

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class EmptyAdapterError(RuntimeError):
    pass


def adapter_state_dict(lm, state_dict: dict, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The LoRA tensors of `state_dict` (the gathered state dict of the PeftModel `lm`), keyed as
    peft saves them. Raises EmptyAdapterError when there are none or one is empty (an ungathered
    ZeRO-3 partition)."""
    from peft import get_peft_model_state_dict

    sd = get_peft_model_state_dict(lm, state_dict=state_dict, adapter_name=adapter_name,
                                   save_embedding_layers=False)
    out = {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}
    lora = [k for k in out if "lora_" in k]
    if not lora:
        raise EmptyAdapterError(
            f"no LoRA tensors in the state dict ({len(state_dict)} keys, e.g. {list(state_dict)[:3]}); "
            "was --lora-targets matching no module, or was the state dict not the PeftModel's?")
    empty = [k for k in lora if out[k].numel() == 0]
    if empty:
        raise EmptyAdapterError(
            f"{len(empty)} LoRA tensors are empty (e.g. {empty[0]}): these are ZeRO-3 partitions, not gathered "
            "weights; save from the consolidated state dict (stage3_gather_16bit_weights_on_model_save: true)")
    return out


def save_lora(lm, state_dict: dict | None, tokenizer, out: str | Path, merge: bool = False) -> Path:
    """Write OUT/final as a peft adapter (+ tokenizer); with merge=True also OUT/final-merged.

    `lm` is the PeftModel that was trained (its live parameters may be ZeRO-3 partitions: only its
    config and module names are used). `state_dict` is the consolidated state dict of `lm` (keys
    "base_model.model....lora_A.default.weight", "...base_layer.weight", ...). Call on rank 0 only.
    """
    from safetensors.torch import save_file

    out = Path(out)
    if state_dict is None:
        raise EmptyAdapterError("save_lora got no state dict: call it on rank 0 with the consolidated weights")
    adapter_name = getattr(lm, "active_adapter", "default")
    if not isinstance(adapter_name, str):
        adapter_name = adapter_name[0]
    weights = adapter_state_dict(lm, state_dict, adapter_name)
    b = [k for k in weights if "lora_B" in k]
    if b and all(float(weights[k].abs().max()) == 0.0 for k in b):
        print("save_lora: warning: every lora_B tensor is zero, so the adapter does nothing (peft initialises "
              "lora_B to 0: did training take any step with a nonzero learning rate?)", file=sys.stderr, flush=True)

    cfg = copy.deepcopy(lm.peft_config[adapter_name])
    cfg.inference_mode = True
    if not cfg.base_model_name_or_path:
        cfg.base_model_name_or_path = getattr(lm.get_base_model().config, "_name_or_path", None) or None

    def write_adapter(tmp: Path) -> None:
        save_file(weights, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        cfg.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))

    atomic_dir(out / "final", write_adapter)
    n = sum(v.numel() for v in weights.values())
    print(f"save_lora: adapter with {len(weights)} tensors ({n:,} parameters) -> {out / 'final'}",
          flush=True)

    if merge:
        from rft_ds.modeling import save_hf_checkpoint

        merged = merge_lora_state_dict(state_dict, cfg, adapter_name)
        save_hf_checkpoint(lm.get_base_model(), merged, tokenizer, out / "final-merged")
        print(f"save_lora: merged model -> {out / 'final-merged'}", flush=True)
    return out / "final"


def _scaling(cfg, module: str) -> float:
    """alpha / r (or alpha / sqrt(r) with rslora), with peft's per-module rank/alpha patterns."""
    import re

    r, alpha = cfg.r, cfg.lora_alpha
    for pat, v in (cfg.rank_pattern or {}).items():
        if re.search(rf"(^|\.){pat}$", module):
            r = v
    for pat, v in (cfg.alpha_pattern or {}).items():
        if re.search(rf"(^|\.){pat}$", module):
            alpha = v
    return alpha / (r ** 0.5) if cfg.use_rslora else alpha / r


def merge_lora_state_dict(state_dict: dict, cfg, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """A plain Hugging Face state dict (keys "model.layers.0.self_attn.q_proj.weight", ...) with each
    LoRA pair folded into its base weight: W' = W + scaling * B @ A (in fp32, cast back to W's dtype).

    `state_dict` is the PeftModel's full state dict (with "base_model.model." prefixes, base weights
    under ".base_layer.", adapter tensors under ".lora_A.<adapter>."). Only plain Linear LoRA is
    supported (no DoRA, no fan_in_fan_out, no embedding adapters)."""
    if getattr(cfg, "use_dora", False):
        raise ConfigError("merging a DoRA adapter from a state dict is not supported; merge with peft instead")
    if getattr(cfg, "fan_in_fan_out", False):
        raise ConfigError("merging with fan_in_fan_out is not supported")
    prefix = "base_model.model."
    a_tag, b_tag = f".lora_A.{adapter_name}.weight", f".lora_B.{adapter_name}.weight"
    out: dict[str, torch.Tensor] = {}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in state_dict.items():
        key = k[len(prefix):] if k.startswith(prefix) else k
        if key.endswith(a_tag):
            pairs.setdefault(key[: -len(a_tag)], {})["A"] = v
        elif key.endswith(b_tag):
            pairs.setdefault(key[: -len(b_tag)], {})["B"] = v
        elif ".lora_" in key or ".lora_magnitude_vector" in key:
            continue  # other adapters' tensors
        else:
            out[key.replace(".base_layer.", ".")] = v
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise EmptyAdapterError(f"{module}: LoRA A/B pair incomplete in the state dict")
        wkey = f"{module}.weight"
        if wkey not in out:
            raise ConfigError(f"{module}: LoRA on a module without a base weight ({wkey} not found)")
        w = out[wkey]
        delta = (ab["B"].float() @ ab["A"].float()) * _scaling(cfg, module)
        if delta.shape != w.shape:
            raise ConfigError(f"{module}: LoRA delta {tuple(delta.shape)} does not match weight {tuple(w.shape)}")
        out[wkey] = (w.float() + delta).to(w.dtype)
    if not pairs:
        raise EmptyAdapterError("no LoRA A/B pairs to merge in the state dict")
    return out


def merge_adapter_dir(adapter: str | Path, output: str | Path, base: str | None = None,
                      dtype: str = "auto") -> Path:
    """Load BASE + the adapter with peft in this process, merge, save a full HF model atomically."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter, output = Path(adapter), Path(output)
    if not (adapter / ADAPTER_CONFIG).exists():
        raise ConfigError(f"{adapter}: no {ADAPTER_CONFIG}: not a LoRA adapter directory")
    base = base or json.loads((adapter / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base:
        raise ConfigError(f"{adapter}/{ADAPTER_CONFIG} names no base model; pass --base")
    torch_dtype = {"auto": "auto", "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    tok = AutoTokenizer.from_pretrained(str(adapter) if (adapter / "tokenizer_config.json").exists() else base)

    def write(tmp: Path) -> None:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))

    atomic_dir(output, write)
    return output


def _add_merge_flags(m: argparse.ArgumentParser) -> None:
    m.add_argument("--adapter", required=True, help="adapter directory (a LoRA run's OUT/final)")
    m.add_argument("--output", required=True, help="directory for the merged Hugging Face model")
    m.add_argument("--base", default=None, help="base model directory (default: adapter_config.json's)")
    m.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto")


def _run_merge(a: argparse.Namespace) -> int:
    out = merge_adapter_dir(a.adapter, a.output, a.base, a.dtype)
    print(f"merged {a.adapter} -> {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """`rft-ds merge-lora` (once "rft_ds.train.lora" is listed in rft_ds.cli.COMMAND_MODULES)."""
    m = sub.add_parser("merge-lora", help="fold a LoRA adapter (a LoRA run's OUT/final) into its base model")
    _add_merge_flags(m)
    m.set_defaults(func=_run_merge)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rft_ds.train.lora", description="LoRA adapter tools")
    sub = p.add_subparsers(dest="cmd", required=True)
    _add_merge_flags(sub.add_parser("merge", help="fold a LoRA adapter (OUT/final) into its base model"))
    a = p.parse_args(argv)
    try:
        return _run_merge(a)
    except ConfigError as e:
        print(f"rft_ds.train.lora merge: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
