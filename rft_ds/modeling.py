"""Loading Hugging Face models under ZeRO-3, the per-token-loss forward, and the consolidated save."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from rft_ds.errors import ConfigError
from rft_ds.losses import chunked_token_ce


def load_tokenizer(model_dir: str):
    from transformers import AutoTokenizer

    from rft_ds.data.render import ensure_chat_template

    if not os.path.isdir(model_dir) and model_dir.startswith((os.sep, ".", "~")):
        # "org/name" may be a hub id; a path that looks local and is missing is the usual mistake.
        raise ConfigError(f"{model_dir}: model directory not found")
    try:
        tok = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"{model_dir}: no usable tokenizer ({str(e).splitlines()[0]}); "
                          "save one with tokenizer.save_pretrained(DIR)") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    ensure_chat_template(tok)
    return tok


def torch_dtype(precision: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def model_hidden_size(model_dir: str) -> int | None:
    """The model's hidden size from its config (for "auto" ZeRO bucket sizes); None if unreadable
    (loading the model then reports the real problem)."""
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError):
        return None
    cfg = getattr(cfg, "text_config", None) or cfg  # multimodal configs nest the language model's
    return getattr(cfg, "hidden_size", None)


def load_causal_lm(model_dir: str, precision: str, attn_implementation: str = "sdpa"):
    """from_pretrained; call while an HfDeepSpeedConfig for a ZeRO-3 config is alive so weights are
    loaded straight into partitions (zero.Init)."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype(precision),
                                                     attn_implementation=attn_implementation)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{model_dir}: cannot load the model: {str(e).splitlines()[0]}") from None
    model.config.use_cache = False
    return model


class TokenLossModel(nn.Module):
    """Wraps a causal LM so one engine forward returns the cross-entropy of the loss tokens only.

    Logits are computed only at positions whose next token is a loss token, `chunk` positions at a
    time, so prompt and tool-output positions never materialise vocabulary-sized logits. Every
    module runs inside the engine's forward, as ZeRO-3's parameter fetching expects."""

    def __init__(self, lm: nn.Module, chunk: int = 8192):
        super().__init__()
        self.lm = lm
        self.chunk = chunk

    def _hf(self):
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    def forward(self, input_ids, attention_mask, target_mask, targets):
        hf = self._hf()
        hidden = hf.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        h = hidden[:, :-1][target_mask]
        return chunked_token_ce(h, hf.get_output_embeddings(), targets, self.chunk)


def consolidated_state_dict(engine) -> dict | None:
    """Full 16-bit state dict of the wrapped HF model on rank 0 (None elsewhere). Every rank must
    call this: under ZeRO-3 it gathers the partitions."""
    if engine.zero_optimization_partition_weights():
        sd = engine._zero3_consolidated_16bit_state_dict()
    else:
        sd = engine.module.state_dict()
    if sd is None:
        return None
    return {k[len("lm."):] if k.startswith("lm.") else k: v for k, v in sd.items()}


def save_hf_checkpoint(hf_model, state_dict: dict, tokenizer, out_dir: str | Path) -> None:
    """Write a Hugging Face checkpoint atomically: into a temp dir beside it, then rename."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700
        hf_model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
