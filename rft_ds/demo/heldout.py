"""Part 2 of `rft-ds demo-report`: the SFT and RFT runs on the held-out split. Teacher-forced
next-token accuracy and mean cross-entropy by true role (`teacher_forced`), the tool-call turns that
greedy generation is scored on (`call_turn_samples`), and the per-metric summary over seeds
(`summarize_seeds`): mean ± sample std of each run and of the per-seed RFT - SFT differences."""

from __future__ import annotations

import sys
import time

from rft_ds.demo.stats import ratio, spread
from rft_ds.errors import ConfigError

RUNS = ("sft", "rft")

# (key in report.json, label in report.md, higher is better)
HELDOUT_METRICS = [
    ("tf_acc_reasoning", "teacher-forced accuracy, reasoning tokens", True),
    ("tf_acc_boilerplate", "teacher-forced accuracy, boilerplate tokens", True),
    ("tf_acc_all", "teacher-forced accuracy, all loss tokens", True),
    ("tf_ce_reasoning", "mean CE, reasoning tokens (nats)", False),
    ("tf_ce_boilerplate", "mean CE, boilerplate tokens (nats)", False),
    ("tf_ce_all", "mean CE, all loss tokens (nats)", False),
    ("call_exact_match", "call exact match", True),
    ("name_accuracy", "function-name accuracy", True),
    ("args_exact_match", "argument exact match", True),
    ("turn_exact_match", "whole-turn exact match", True),
    ("parse_failure_rate", "parse-failure rate", False),
]


def teacher_forced(model_dir: str, encs: list, pad_id: int, batch_size: int, device, chunk: int = 4096,
                   dtype: str = "float32") -> dict:
    """Next-token argmax accuracy and mean CE of the loss tokens, split by `Encoded.classes` (the
    model in `dtype`, fp32 by default; logits and CE always in fp32)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from rft_ds.data.batching import collate

    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{model_dir}: cannot load the model: {str(e).splitlines()[0]}") from None
    model.to(device).eval()
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    acc = {c: [0, 0, 0.0] for c in (0, 1)}  # class -> [tokens, correct, CE sum]
    order = sorted(range(len(encs)), key=lambda i: (-len(encs[i].input_ids), i))
    t0 = last = time.time()
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            if time.time() - last > 20:
                last = time.time()
                print(f"demo-report: teacher-forced {s}/{len(order)} samples ({last - t0:.0f}s)", file=sys.stderr,
                      flush=True)
            mb = collate([encs[i] for i in order[s:s + batch_size]], pad_id).to(device)
            hidden = decoder(input_ids=mb.input_ids, attention_mask=mb.attention_mask, use_cache=False).last_hidden_state
            h = hidden[:, :-1][mb.target_mask]
            for c0 in range(0, h.shape[0], chunk):
                logits = head(h[c0:c0 + chunk]).float()
                tgt, cls = mb.targets[c0:c0 + chunk], mb.classes[c0:c0 + chunk]
                ce = F.cross_entropy(logits, tgt, reduction="none").double()
                hit = logits.argmax(-1) == tgt
                for c in (0, 1):
                    sel = cls == c
                    acc[c][0] += int(sel.sum())
                    acc[c][1] += int((hit & sel).sum())
                    acc[c][2] += float(ce[sel].sum())
    del model
    n_all = acc[0][0] + acc[1][0]
    return {
        "tokens_reasoning": acc[1][0], "tokens_boilerplate": acc[0][0],
        "tf_acc_reasoning": ratio(acc[1][1], acc[1][0]),
        "tf_acc_boilerplate": ratio(acc[0][1], acc[0][0]),
        "tf_acc_all": ratio(acc[0][1] + acc[1][1], n_all),
        "tf_ce_reasoning": ratio(acc[1][2], acc[1][0]),
        "tf_ce_boilerplate": ratio(acc[0][2], acc[0][0]),
        "tf_ce_all": ratio(acc[0][2] + acc[1][2], n_all),
    }


def call_turn_samples(convs: list) -> list[dict]:
    """One evaluation sample per assistant turn that makes a tool call: the conversation up to and
    including that turn (so `evaluate` generates it from everything before it)."""
    from rft_ds.tools.toolcalls import parse_turn

    out = []
    for c in convs:
        for k, m in enumerate(c.messages):
            if k > 0 and m["role"] == "assistant" and parse_turn(m["content"]).calls:
                out.append({"id": f"{c.id}@{k}", "messages": c.messages[:k + 1]})
    return out


def summarize_seeds(per_run: dict[str, dict[str, dict]], seeds: list[int]) -> dict:
    """{metric: {"sft": spread, "rft": spread, "rft_minus_sft": spread of per-seed differences}}."""
    out = {}
    for key, _, _ in HELDOUT_METRICS:
        vals = {r: [per_run[r][str(s)].get(key) for s in seeds] for r in RUNS}
        diffs = [b - a if a is not None and b is not None else None for a, b in zip(vals["sft"], vals["rft"])]
        out[key] = {"sft": spread(vals["sft"]), "rft": spread(vals["rft"]), "rft_minus_sft": spread(diffs)}
    return out
