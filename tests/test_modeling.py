"""The per-token-loss forward against each architecture's own forward: Gemma-2 soft-caps its
final logits, Cohere scales them, Granite divides them. rft-ds computes the loss from the decoder
and the head itself (logits only at loss positions), so it must apply the same processing, and
refuse at start-up an architecture whose processing it does not know."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rft_ds.errors import ConfigError
from rft_ds.modeling import TokenLossModel

SMALL = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=1, head_dim=16, max_position_embeddings=64)


def _model(kind: str):
    import transformers as T

    torch.manual_seed(0)
    if kind == "gemma2":
        cfg = T.Gemma2Config(**SMALL, final_logit_softcapping=0.05, attn_logit_softcapping=5.0)
        return T.Gemma2ForCausalLM(cfg)
    if kind == "cohere":
        return T.CohereForCausalLM(T.CohereConfig(**SMALL, logit_scale=0.25))
    if kind == "granite":
        return T.GraniteForCausalLM(T.GraniteConfig(**SMALL, logits_scaling=4.0))
    return T.LlamaForCausalLM(T.LlamaConfig(**SMALL))


def _ours_and_ref(model, chunk=3):
    model.eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 97, (2, 9), generator=g)
    att = torch.ones_like(ids)
    att[1, 7:] = 0  # a padded row
    tmask = torch.zeros(2, 8, dtype=torch.bool)
    tmask[0, 2:] = True
    tmask[1, 1:6] = True
    targets = ids[:, 1:][tmask]
    with torch.no_grad():
        ours = TokenLossModel(model, chunk)(ids, att, tmask, targets)
        logits = model(input_ids=ids, attention_mask=att).logits[:, :-1][tmask].float()
    return ours, F.cross_entropy(logits, targets, reduction="none")


@pytest.mark.parametrize("kind", ["llama", "gemma2", "cohere", "granite"])
def test_token_loss_equals_the_models_own_forward(kind):
    ours, ref = _ours_and_ref(_model(kind))
    assert ours.shape == ref.shape == (11,)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-5), (ours - ref).abs().max()
    TokenLossModel(_model(kind)).check_logits(torch.device("cpu"), "fp32")  # the start-up check agrees


@pytest.mark.parametrize("kind,field", [("gemma2", "final_logit_softcapping"), ("cohere", "logit_scale"),
                                        ("granite", "logits_scaling")])
def test_the_transform_matters_and_the_startup_check_names_the_field(kind, field):
    """Without the architecture's processing the CE really differs, and `check_logits` (run by train
    and label on every rank before the first step) refuses, naming the config field."""
    model = _model(kind)
    wrapped = TokenLossModel(model)
    wrapped.transform = None  # as if rft-ds did not know this architecture
    ids = torch.randint(1, 97, (1, 9))
    with torch.no_grad():
        plain_ce = wrapped(ids, torch.ones_like(ids), torch.ones(1, 8, dtype=torch.bool), ids[0, 1:])
    assert not torch.allclose(plain_ce, F.cross_entropy(model(input_ids=ids).logits[0, :-1], ids[0, 1:],
                                                        reduction="none"), atol=1e-3)
    with pytest.raises(ConfigError, match=field):
        wrapped.check_logits(torch.device("cpu"), "fp32")
