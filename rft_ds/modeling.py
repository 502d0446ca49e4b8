"""Loading Hugging Face models under ZeRO-3, the per-token-loss forward, and the consolidated save."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from rft_ds.errors import ConfigError
from rft_ds.losses import chunked_token_ce, n_head_calls


def load_tokenizer(model_dir: str):
    from transformers import AutoTokenizer

    if not os.path.isdir(model_dir) and model_dir.startswith((os.sep, ".", "~")):
        # "org/name" may be a hub id; a path that looks local and is missing is the usual mistake.
        raise ConfigError(f"{model_dir}: model directory not found")
    try:
        tok = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"{model_dir}: no usable tokenizer ({str(e).splitlines()[0]}); "
                          "save one with tokenizer.save_pretrained(DIR)") from None
    return prepare_tokenizer(tok)


def prepare_tokenizer(tok):
    """What every pass and tool does to a loaded tokenizer, so fingerprints compare: a pad token
    (the EOS token when it has none) and a chat template (rft_ds.data.render.ensure_chat_template)."""
    from rft_ds.data.render import ensure_chat_template

    if tok.pad_token_id is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    ensure_chat_template(tok)
    return tok


def check_same_tokenizer(tok, model_dir: str, other_dir: str, flag: str, why: str) -> str:
    """`tok` (loaded from model_dir) and other_dir's tokenizer must be the same (rft_ds.data.render's
    fingerprint: vocabulary, special tokens, chat template); a ConfigError naming both otherwise.
    Returns the fingerprint."""
    from rft_ds.data.render import tokenizer_fingerprint

    fp, other = tokenizer_fingerprint(tok), tokenizer_fingerprint(load_tokenizer(other_dir))
    if other != fp:
        raise ConfigError(f"{flag} {other_dir}: its tokenizer ({other}) differs from the base model's "
                          f"({model_dir}: {fp}); {why}")
    return fp


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


def logit_transform(config):
    """The architecture's own processing of the head's output before the softmax, from its config
    (None when there is none): Gemma-2/3 `final_logit_softcapping`, Cohere `logit_scale`, Granite
    `logits_scaling`. `TokenLossModel.check_logits` catches any other kind at start-up."""
    cfg = getattr(config, "text_config", None) or config
    cap = getattr(cfg, "final_logit_softcapping", None)
    scale = getattr(cfg, "logit_scale", None)
    div = getattr(cfg, "logits_scaling", None)
    fns = []
    if scale not in (None, 1, 1.0):
        fns.append(lambda x: x * scale)
    if div not in (None, 1, 1.0):
        fns.append(lambda x: x / div)
    if cap:
        fns.append(lambda x: torch.tanh(x / cap) * cap)
    if not fns:
        return None

    def transform(x):
        for f in fns:
            x = f(x)
        return x

    return transform


class TokenLossModel(nn.Module):
    """Wraps a causal LM so one engine forward returns the cross-entropy of the loss tokens only.

    Logits are computed only at positions whose next token is a loss token, `chunk` positions at a
    time and recomputed per chunk in backward (rft_ds/losses.py), so prompt and tool-output
    positions never materialise vocabulary-sized logits and at most one chunk's logits are alive.
    Every rank makes the same number of head calls per forward (the maximum over the ranks, one
    tiny all-reduce), as ZeRO-3's parameter fetching needs. Every module runs inside the engine's
    forward, as ZeRO-3 expects."""

    def __init__(self, lm: nn.Module, chunk: int = 1024):
        super().__init__()
        self.lm = lm
        self.chunk = chunk
        self.transform = logit_transform(self._hf().config)

    def _hf(self):
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    def forward(self, input_ids, attention_mask, target_mask, targets):
        from rft_ds import dist

        hf = self._hf()
        hidden = hf.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        h = hidden[:, :-1][target_mask]
        calls = dist.all_reduce_max_int(n_head_calls(h.shape[0], self.chunk), hidden.device)
        return chunked_token_ce(h, hf.get_output_embeddings(), targets, self.chunk, calls, self.transform)

    @torch.no_grad()
    def check_logits(self, device, precision: str) -> None:
        """Compare this loss path with the model's own forward on a short probe sequence; a
        difference means the architecture processes its logits in a way `logit_transform` does not
        know, and every CE and LD would be silently wrong. Every rank calls this (ZeRO-3)."""
        hf = self._hf()
        was_training = self.training
        self.eval()  # no dropout: both paths must see the same function
        vocab = hf.get_output_embeddings().out_features if hasattr(hf.get_output_embeddings(), "out_features") \
            else hf.config.vocab_size
        ids = (torch.arange(1, 9, device=device) * 7919 % max(2, vocab - 1) + 1).unsqueeze(0)
        att = torch.ones_like(ids)
        mask = torch.ones(1, ids.shape[1] - 1, dtype=torch.bool, device=device)
        ours = self(ids, att, mask, ids[0, 1:]).float()
        ref = torch.nn.functional.cross_entropy(hf(input_ids=ids, attention_mask=att).logits[0, :-1].float(),
                                                ids[0, 1:], reduction="none")
        self.train(was_training)
        tol = 1e-3 if precision == "fp32" else 3e-2
        if not torch.allclose(ours, ref, rtol=tol, atol=tol):
            cfg = getattr(hf.config, "text_config", None) or hf.config
            fields = sorted(k for k in cfg.to_dict() if "logit" in k.lower() or "lm_head" in k.lower())
            raise ConfigError(f"{type(hf).__name__}: its forward post-processes the logits in a way rft-ds does not "
                              f"apply (token CE {ours.tolist()[:3]} here vs {ref.tolist()[:3]} from the model's own "
                              f"forward; config fields that may say how: {fields or 'none'}); this architecture is not "
                              "supported until rft_ds/modeling.py:logit_transform handles it")


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
    from rft_ds.fsio import atomic_dir

    def write(tmp: Path) -> None:
        hf_model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    atomic_dir(out_dir, write)
