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
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import os
import sys
import time
from pathlib import Path

from rft_ds.errors import ConfigError, DataError, MasksError

DEFAULT_DEMO_DIR = "outputs/demo"
DEFAULT_DATA_DIR = "data/demo"
DEFAULT_SEEDS = [0, 1]
DEFAULT_BATCH_SIZE = 32
DEFAULT_VIEW_SAMPLES = 200
MAX_NEW_TOKENS_SLACK = 8  # auto --max-new-tokens = the longest reference call turn (tokens) + this
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


# --------------------------------------------------------------------------------------------------
# ground-truth role of each token
# --------------------------------------------------------------------------------------------------

def read_roles(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """{sample id: {str(message index): one '0'/'1' per content character}} from roles.jsonl."""
    path = str(path)
    if not os.path.exists(path):
        raise DataError(path, None, None, "file not found", "run `rft-ds demo-data` to write the demo data")
    out: dict[str, dict[str, str]] = {}
    with open(path, encoding="utf-8") as f:
        for line, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as e:
                raise DataError(path, line, None, f"malformed JSON: {e.msg}") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("id"), str) or not isinstance(obj.get("roles"), dict):
                raise DataError(path, line, None, "expected {\"id\": str, \"roles\": {message index: '0'/'1' string}}")
            out[obj["id"]] = obj["roles"]
    return out


def role_of_span(roles: str, a: int, b: int, rule: str = "majority", end: int = 0) -> int:
    """The true role of a token covering content characters [a, b).

    rule "majority" (the semantic and prefix-aware truths): the majority role, ties -> 1 (reasoning).
    rule "any" (the needs-input truth): 1 if any covered character is 1 -- a token is predictable
    from the message so far only if every one of its characters is.
    No character (a >= b, e.g. the end-of-turn token): `end` (0 = boilerplate unless the truth says
    whether the end of the message is predictable)."""
    seg = roles[max(a, 0):max(b, 0)]
    if not seg:
        return end
    ones = seg.count("1")
    if rule == "any":
        return 1 if ones else 0
    return 1 if 2 * ones >= len(seg) else 0


def prefix_aware(content: str, roles: str) -> str:
    """The generator's semantic roles minus what the message's own earlier text already determines.

    SHAD compares a model that ignores the input with one that reads it, teacher-forced on the
    output: text the output prefix already fixes is predictable without the input, so SHAD calls it
    boilerplate even inside an input-dependent slot. This derived truth marks as boilerplate
      * a word or value inside a '1' run that already occurred earlier in the same message (the
        Action Input values repeat the Thought's values; an answer repeats its own words), and
      * non-alphanumeric characters inside '1' runs (the separators of dates and times, spaces,
        quotes), which the value's format fixes.
    Both truths are reported; neither is tuned to SHAD's output."""
    out = list(roles)
    for run in re.finditer(r"1+", roles):
        a, b = run.span()
        for w in re.finditer(r"[A-Za-z0-9_.]+", content[a:b]):
            wa, wb = a + w.start(), a + w.end()
            if wb - wa > 1 and content[wa:wb] in content[:wa]:
                out[wa:wb] = "0" * (wb - wa)
        for k in range(a, b):
            if not content[k].isalnum():
                out[k] = "0"
    return "".join(out)


def prefix_aware_roles(conv, roles: dict[str, str]) -> dict[str, str]:
    return {m: prefix_aware(conv.messages[int(m)]["content"], r) if int(m) < len(conv.messages) else r
            for m, r in roles.items()}


def needs_input_roles(conv, roles: dict[str, str]) -> dict[str, str]:
    """The third truth, computed by the generator from each assistant message's text
    (`rft_ds.demo.generate.needs_input`): '1' where the message's own earlier text does not determine
    the character; one extra character for the end of the message. Use with rule="any"."""
    from rft_ds.demo.generate import needs_input

    out = {}
    for m in roles:
        try:
            out[m] = needs_input(conv.messages[int(m)]["content"])
        except (ValueError, IndexError) as e:
            raise DataError(conv.path, conv.line, f"messages[{m}]", f"sample {conv.id!r}: {e}",
                            "the needs-input truth exists only for data written by `rft-ds demo-data`") from None
    return out


def token_truth(conv, tokenizer, roles: dict[str, str], rule: str = "majority"):
    """(Encoded, offsets, classes) for one conversation, untruncated. classes[t] is the true role of
    loss token t (0/1) and -1 for every other token. A role string may carry one extra character for
    the end of the message (the needs-input truth): it is the role of the loss tokens that cover no
    content character (the end-of-turn token). `rule`: see `role_of_span`. Raises DataError when the
    rendered text does not contain a message's content where the template puts it, or the roles do
    not fit."""
    from rft_ds.data.render import _render, encode_conversation

    enc = encode_conversation(conv, tokenizer)
    text = _render(tokenizer, conv.messages, False)
    r = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if list(r["input_ids"]) != enc.input_ids:  # encode_conversation tokenizes the same text the same way
        raise DataError(conv.path, conv.line, "messages", f"sample {conv.id!r}: re-tokenizing the rendered text "
                        "gave different token ids than encode_conversation")
    offsets = [tuple(o) for o in r["offset_mapping"]]
    classes = [-1] * len(enc.input_ids)
    for m in enc.assistant_messages:
        content = conv.messages[m]["content"]
        start = len(_render(tokenizer, conv.messages[:m], True))
        if text[start:start + len(content)] != content:
            raise DataError(conv.path, conv.line, f"messages[{m}].content",
                            f"sample {conv.id!r}: the chat template does not put the message content right after "
                            "the rendered prefix (with the generation prompt), so characters cannot be mapped to tokens")
        role = roles.get(str(m))
        if not isinstance(role, str) or len(role) not in (len(content), len(content) + 1) or set(role) - {"0", "1"}:
            got = "missing" if role is None else (f"{len(role)} characters" if isinstance(role, str) else repr(role))
            raise DataError(conv.path, conv.line, f"messages[{m}]",
                            f"sample {conv.id!r}: roles.jsonl must give one '0'/'1' per content character "
                            f"({len(content)}), got {got}", "regenerate the data with `rft-ds demo-data`")
        for t, mi in enumerate(enc.msg_index):
            if mi == m and t >= 1:
                a, b = offsets[t]
                classes[t] = role_of_span(role[:len(content)], a - start, min(b, start + len(content)) - start,
                                          rule, int(role[len(content)]) if len(role) > len(content) else 0)
    return enc, offsets, classes


# --------------------------------------------------------------------------------------------------
# 1. SHAD agreement
# --------------------------------------------------------------------------------------------------

def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def roc_auc(scores, truth) -> float | None:
    """ROC AUC of `scores` for the positives of `truth` (1 = reasoning): the probability that a random
    positive scores higher than a random negative, ties counted one half (the Mann-Whitney U
    statistic over mid-ranks). None when a class is empty."""
    import numpy as np

    x = np.asarray(scores, dtype=np.float64)
    y = np.asarray(truth, dtype=np.int64) == 1
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # mid-rank (1-based) of every run of equal scores
    starts = np.r_[0, np.flatnonzero(np.diff(xs)) + 1]
    ends = np.r_[starts[1:], len(xs)]
    ranks = np.empty(len(xs), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def agreement_metrics(truth: list[int], labels: list[int], lds: list[float | None]) -> dict:
    """Confusion counts and rates of SHAD labels against the true roles (1 = reasoning)."""
    tp = sum(1 for t, p in zip(truth, labels) if t == 1 and p == 1)
    fp = sum(1 for t, p in zip(truth, labels) if t == 0 and p == 1)
    fn = sum(1 for t, p in zip(truth, labels) if t == 1 and p == 0)
    tn = sum(1 for t, p in zip(truth, labels) if t == 0 and p == 0)
    n = len(truth)
    recall, specificity = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    ld = {c: [x for t, x in zip(truth, lds) if t == c and isinstance(x, (int, float)) and math.isfinite(x)]
          for c in (0, 1)}
    return {
        "tokens": n,
        "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
        "token_accuracy": _ratio(tp + tn, n),
        "reasoning_precision": _ratio(tp, tp + fp),
        "reasoning_recall": recall,
        "boilerplate_recall": specificity,
        "balanced_accuracy": (recall + specificity) / 2 if recall is not None and specificity is not None else None,
        "labeled_reasoning_share": _ratio(tp + fp, n),
        "true_reasoning_share": _ratio(tp + fn, n),
        "mean_ld_true_reasoning": _mean(ld[1]),
        "mean_ld_true_boilerplate": _mean(ld[0]),
        "ld_roc_auc": roc_auc(ld[1] + ld[0], [1] * len(ld[1]) + [0] * len(ld[0])),
        "ld_tokens": len(ld[0]) + len(ld[1]),
    }


def shad_agreement(masks: dict, convs: list, roles: dict, tokenizer, derive=None, rule: str = "majority") -> dict:
    """Compare the masks' labels with the true roles of the same tokens. `derive(conv, roles)` maps
    a sample's roles to another truth (e.g. prefix_aware_roles, needs_input_roles) first; `rule`
    maps characters to tokens (`role_of_span`)."""
    by_id = {c.id: c for c in convs}
    truth, labels, lds = [], [], []
    truncated = 0
    for sid, rec in masks.items():
        conv = by_id.get(sid)
        if conv is None:
            raise MasksError(f"masks sample {sid!r} is not in the training data {convs[0].path if convs else ''}: "
                             "the masks were made from another file")
        if sid not in roles:
            raise MasksError(f"no ground-truth roles for masks sample {sid!r} in roles.jsonl")
        enc, _, classes = token_truth(conv, tokenizer, derive(conv, roles[sid]) if derive else roles[sid], rule)
        for turn in rec["turns"]:
            m = turn["message"]
            pos = [t for t, mi in enumerate(enc.msg_index) if mi == m and t >= 1]
            ref = [enc.input_ids[t] for t in pos]
            ids = turn["token_ids"]
            if not pos:
                raise MasksError(f"masks sample {sid!r} labels message {m}, which is not a trained assistant "
                                 "message of the sample in the data")
            if ids != ref[:len(ids)] or len(ids) > len(ref):
                k = next((j for j, (x, y) in enumerate(zip(ids, ref)) if x != y), min(len(ids), len(ref)))
                raise MasksError(f"masks sample {sid!r} message {m}: the masks' token ids differ from re-tokenizing "
                                 f"the data with the base tokenizer at token {k} ({len(ids)} masks tokens, "
                                 f"{len(ref)} re-tokenized): the masks were made with another tokenizer or data")
            truncated += len(ids) < len(ref)
            ld = turn.get("loss_diff") or [None] * len(ids)
            for j, t in enumerate(pos[:len(ids)]):
                truth.append(classes[t])
                labels.append(turn["labels"][j])
                lds.append(ld[j])
    out = agreement_metrics(truth, labels, lds)
    out.update({"samples": len(masks), "truncated_turns": truncated,
                "data_samples_without_masks": sum(1 for c in convs if c.id not in masks)})
    return out


def needs_input_breakdown(masks: dict, convs: list, tokenizer) -> dict:
    """The needs-input reasoning tokens split by kind (`rft_ds.demo.generate.needs_input_kinds`): a
    *value* token picks a value inside a slot (which city, which digit); a *template-choice* token
    picks the template itself (call or answer, which tool's phrase, one or two answer sentences,
    where a number ends: 't' in any character). Per kind: tokens, SHAD's recall, mean LD; and the LD
    ROC AUC of value tokens against the needs-input boilerplate tokens (template choices left out)."""
    from rft_ds.demo.generate import needs_input_kinds

    by_id = {c.id: c for c in convs}
    ld = {"0": [], "v": [], "t": []}
    hit = {"v": 0, "t": 0}
    for sid, rec in masks.items():
        conv = by_id[sid]
        kinds = {str(t["message"]): needs_input_kinds(conv.messages[t["message"]]["content"]) for t in rec["turns"]}
        enc, offsets, _ = token_truth(conv, tokenizer, {m: k.replace("v", "1").replace("t", "1") for m, k in kinds.items()},
                                      "any")
        for turn in rec["turns"]:
            m = turn["message"]
            content, k = conv.messages[m]["content"], kinds[str(m)]
            start = len(_render_prefix(tokenizer, conv.messages[:m]))
            pos = [t for t, mi in enumerate(enc.msg_index) if mi == m and t >= 1]
            for j, t in enumerate(pos[:len(turn["token_ids"])]):
                a, b = offsets[t][0] - start, min(offsets[t][1] - start, len(content))
                seg = k[max(a, 0):max(b, 0)] if b > a else k[len(content)]
                kind = "t" if "t" in seg else "v" if "v" in seg else "0"
                x = turn["loss_diff"][j]
                ld[kind].append(x)
                if kind != "0" and turn["labels"][j] == 1:
                    hit[kind] += 1
    out = {}
    for kind, name in (("v", "value"), ("t", "template_choice")):
        n = len(ld[kind])
        out[name] = {"tokens": n, "reasoning_recall": _ratio(hit[kind], n), "mean_ld": _mean(ld[kind])}
    out["ld_roc_auc_values_only"] = roc_auc(ld["v"] + ld["0"], [1] * len(ld["v"]) + [0] * len(ld["0"]))
    return out


def _render_prefix(tokenizer, messages) -> str:
    from rft_ds.data.render import _render

    return _render(tokenizer, messages, True)


# --------------------------------------------------------------------------------------------------
# 2. held-out: teacher-forced accuracy and generation
# --------------------------------------------------------------------------------------------------

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
        "tf_acc_reasoning": _ratio(acc[1][1], acc[1][0]),
        "tf_acc_boilerplate": _ratio(acc[0][1], acc[0][0]),
        "tf_acc_all": _ratio(acc[0][1] + acc[1][1], n_all),
        "tf_ce_reasoning": _ratio(acc[1][2], acc[1][0]),
        "tf_ce_boilerplate": _ratio(acc[0][2], acc[0][0]),
        "tf_ce_all": _ratio(acc[0][2] + acc[1][2], n_all),
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


def spread(values: list) -> dict:
    """mean, sample std (n-1; None for one value), min, max over the non-None values."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return {"mean": m, "std": sd, "min": min(xs), "max": max(xs), "n": len(xs)}


def summarize_seeds(per_run: dict[str, dict[str, dict]], seeds: list[int]) -> dict:
    """{metric: {"sft": spread, "rft": spread, "rft_minus_sft": spread of per-seed differences}}."""
    out = {}
    for key, _, _ in HELDOUT_METRICS:
        vals = {r: [per_run[r][str(s)].get(key) for s in seeds] for r in RUNS}
        diffs = [b - a if a is not None and b is not None else None for a, b in zip(vals["sft"], vals["rft"])]
        out[key] = {"sft": spread(vals["sft"]), "rft": spread(vals["rft"]), "rft_minus_sft": spread(diffs)}
    return out


# --------------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------------

def _f(x, digits: int = 3, signed: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _pm(s: dict, signed: bool = False) -> str:
    if s["mean"] is None:
        return "n/a"
    return _f(s["mean"], signed=signed) + (f" ± {s['std']:.3f}" if s["std"] is not None else "")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def report_header(rep: dict) -> str:
    """The title, the base model, the run's budget settings and the wall time per phase."""
    out = ["# rft-ds demo report", "",
           f"Made by `{rep['command']}`. Demo directory `{rep['demo_dir']}`, data `{rep['data_dir']}`.", ""]
    model = rep.get("model") or {}
    if model:
        arch = model.get("architecture") or {}
        desc = f"Base model: `{model.get('path')}`"
        if model.get("name"):
            desc += f" ({model['name']})"
        if arch:
            desc += (f": {arch.get('model_type')}, {arch.get('num_hidden_layers')} layers, hidden "
                     f"{arch.get('hidden_size')}, vocabulary {arch.get('vocab_size')}"
                     + (", tied embeddings" if arch.get("tie_word_embeddings") else "")
                     + (f", {model['parameters']:,} parameters" if isinstance(model.get("parameters"), int) else "")
                     + (f", weights {arch.get('dtype')}" if arch.get("dtype") else ""))
        out += [desc + ".", ""]
        if model.get("note"):
            out += [f"> {model['note']}", ""]
        if model.get("name"):
            out += ["The base model is used as it comes: no warm-up step. It is pretrained and has never seen this "
                    "data's template, so SHAD and both fine-tunes start from the same pretrained weights.", ""]
    if rep.get("settings"):
        out += ["Budget of this run (`recipes/demo/run.sh` variables):", "",
                _table(["setting", "value"], [[f"`{k}`", f"`{v}`"] for k, v in rep["settings"].items()]), ""]
    if rep.get("phase_timings_s"):
        rows = [[name, f"{sec:.0f}"] for name, sec in rep["phase_timings_s"]]
        rows.append(["total (phases so far)", f"{sum(x for _, x in rep['phase_timings_s']):.0f}"])
        out += ["Wall time per phase (seconds, this machine):", "", _table(["phase", "s"], rows), ""]

    return "\n".join(out)


def render_markdown(rep: dict, report_dir: Path) -> str:
    ag, ho, pics = rep["shad_agreement"], rep["heldout"], rep["pictures"]
    seeds = rep["seeds"]
    c = ag["confusion"]
    out = report_header(rep).split("\n")
    out += ["## 1. SHAD labels vs the ground-truth roles (training data)", "",
            f"{ag['samples']} labeled samples of `{rep['inputs']['train']}`, {ag['tokens']} assistant loss tokens "
            f"(the tokens in `{rep['inputs']['masks']}`"
            + (f", SHAD margin {rep['masks_meta']['margin']}" if rep["masks_meta"].get("margin") is not None else "")
            + "). The true role of a token is the majority role of the message-content characters it covers "
            "(ties count as reasoning; a token with no content character, such as the end-of-turn marker, is "
            "boilerplate), except under the needs-input truth (below). Positive class: reasoning."
            + (f" {ag['truncated_turns']} turn(s) were truncated by the labeling pass; their labeled tokens are "
               "compared." if ag["truncated_turns"] else ""), ""]
    out += ["Three truths, each reported (none is tuned to SHAD's output):", "",
            "- **semantic**: the generator's roles (`roles.jsonl`): every character of an input-dependent slot "
            "(intent phrase, tool name, argument values, answer sentence) is reasoning;",
            "- **prefix-aware**: the semantic roles minus what the message's own earlier text repeats (a value "
            "repeated from the Thought into the Action Input, any word seen earlier in the message) and the "
            "non-alphanumeric characters inside slots (`rft_ds/demo/report.py:prefix_aware`);",
            "- **needs-input**: computed by the generator from the message text "
            "(`rft_ds/demo/generate.py:needs_input`): a character is reasoning iff the message's own earlier "
            "text does not determine it among all messages the generator can write; so the tool name after a "
            "Thought that names the task, the Action Input's copied values, the fixed words of an intent "
            "phrase or answer sentence once the first word has named the tool, and the year of a date are "
            "boilerplate, while the call-or-answer word (`need`/`have`) and the end of a one-sentence answer "
            "are reasoning. A token is reasoning if any of its characters is (the other two truths: the "
            "majority).", "",
            "LD ROC AUC: the probability that a random true-reasoning token has a higher LD than a random "
            "true-boilerplate token (ties count one half): threshold-free, 0.5 is chance.", ""]
    pa = ag.get("prefix_aware") or ag
    ni = ag.get("needs_input") or ag
    keys = [("token accuracy", "token_accuracy", False), ("reasoning precision", "reasoning_precision", False),
            ("reasoning recall", "reasoning_recall", False), ("boilerplate recall", "boilerplate_recall", False),
            ("balanced accuracy", "balanced_accuracy", False), ("LD ROC AUC", "ld_roc_auc", False),
            ("share of tokens labeled reasoning (SHAD)", "labeled_reasoning_share", False),
            ("share of tokens that are reasoning (truth)", "true_reasoning_share", False),
            ("mean LD of true reasoning tokens (nats)", "mean_ld_true_reasoning", True),
            ("mean LD of true boilerplate tokens (nats)", "mean_ld_true_boilerplate", True)]
    out.append(_table(["metric", "semantic truth", "prefix-aware truth", "needs-input truth"],
                      [[name, _f(ag.get(k), signed=sg), _f(pa.get(k), signed=sg), _f(ni.get(k), signed=sg)]
                       for name, k, sg in keys]))
    bd = ni.get("breakdown")
    if bd:
        v, t = bd["value"], bd["template_choice"]
        out += ["", f"Needs-input reasoning tokens by kind (`generate.py:needs_input_kinds`): {v['tokens']} *value* "
                f"tokens (which city, which digit) with SHAD recall {_f(v['reasoning_recall'])} and mean LD "
                f"{_f(v['mean_ld'], signed=True)}; {t['tokens']} *template-choice* tokens (call or answer, which tool's "
                f"phrase, one or two answer sentences, where a number ends) with recall {_f(t['reasoning_recall'])} "
                f"and mean LD {_f(t['mean_ld'], signed=True)}. LD ROC AUC of value tokens against needs-input "
                f"boilerplate, template choices left out: **{_f(bd['ld_roc_auc_values_only'])}**. A template choice "
                "needs the input, but only a model that knows the template's conventions can use the input there; "
                "the base model has never seen them, so SHAD cannot tell these tokens from boilerplate."]
    out += ["", "Confusion (tokens; semantic / prefix-aware / needs-input truth):", ""]
    cs = [x["confusion"] for x in (ag, pa, ni)]
    out += [_table(["", "SHAD: reasoning", "SHAD: boilerplate"],
                   [["true reasoning", " / ".join(str(c["tp"]) for c in cs), " / ".join(str(c["fn"]) for c in cs)],
                    ["true boilerplate", " / ".join(str(c["fp"]) for c in cs), " / ".join(str(c["tn"]) for c in cs)]]),
            ""]

    out += ["## 2. SFT vs RFT on the held-out split", "",
            f"{ho['samples']} held-out samples of `{rep['inputs']['heldout']}`. Teacher-forced: next-token argmax "
            f"accuracy and mean cross-entropy over the loss tokens of every assistant message ({ho['tokens_reasoning']} "
            f"reasoning, {ho['tokens_boilerplate']} boilerplate tokens by true role), fp32. Generation: greedy, "
            f"max {ho['max_new_tokens']} new tokens, on the {ho['call_turns']} assistant turns that make a tool call, "
            "each generated from the conversation before it (`rft-ds evaluate` metrics; whole-turn exact match is "
            "over the same turns).", "", "Per seed:", ""]
    short = [("tf_acc_reasoning", "TF acc reasoning"), ("tf_acc_boilerplate", "TF acc boilerplate"),
             ("tf_ce_reasoning", "CE reasoning"), ("tf_ce_boilerplate", "CE boilerplate"),
             ("call_exact_match", "call EM"), ("name_accuracy", "name acc"), ("args_exact_match", "args EM"),
             ("turn_exact_match", "turn EM")]
    rows = []
    for s in seeds:
        for r in RUNS:
            m = ho["runs"][r][str(s)]
            rows.append([str(s), r.upper()] + [_f(m.get(k)) for k, _ in short])
    out += [_table(["seed", "run"] + [h for _, h in short], rows), ""]
    n = len(seeds)
    spread_txt = ("mean ± sample standard deviation (n−1) over " if n > 1 else "the single ") + \
        f"seed{'s' if n > 1 else ''} {', '.join(map(str, seeds))}"
    out += [f"Over seeds: {spread_txt}. RFT − SFT is the mean ± std of the per-seed paired differences.", ""]
    rows = []
    for key, label, _ in HELDOUT_METRICS:
        sm = ho["summary"][key]
        rows.append([label, _pm(sm["sft"]), _pm(sm["rft"]), _pm(sm["rft_minus_sft"], signed=True)])
    out += [_table(["metric", "SFT", "RFT", "RFT − SFT"], rows), ""]
    said = []
    for key, label, higher in HELDOUT_METRICS:
        d = ho["summary"][key]["rft_minus_sft"]["mean"]
        if d is None:
            continue
        if d == 0:
            said.append(f"{label}: RFT − SFT = 0 (equal)")
        else:
            winner = "RFT" if (d > 0) == higher else "SFT"
            said.append(f"{label}: RFT − SFT = {_f(d, 4, signed=True)} ({winner} better; "
                        f"{'higher' if higher else 'lower'} is better)")
    out += ["Computed differences (mean over seeds):", ""] + [f"- {x}" for x in said] + [""]
    hits = [f"{r.upper()} seed {s}: {ho['runs'][r][str(s)]['hit_max_new_tokens']}" for s in seeds for r in RUNS
            if ho["runs"][r][str(s)]["hit_max_new_tokens"]]
    if hits:
        out += [f"Generations that reached the {ho['max_new_tokens']}-token limit before the end of the turn: "
                + ", ".join(hits) + ".", ""]

    out += ["## 3. Pictures", ""]
    def rel(p: str) -> str:
        return Path(os.path.relpath(p, report_dir)).as_posix()

    if pics.get("curves"):
        out += [f"Loss curves of seed {seeds[0]} (per-class token loss; [`{rel(pics['curves'])}`]"
                f"({rel(pics['curves'])})):", "", f"![loss curves]({rel(pics['curves'])})", ""]
    if pics.get("masks_html"):
        out += [f"SHAD labels, token by token ({pics['masks_html_samples']} samples of the training data): "
                f"[`{rel(pics['masks_html'])}`]({rel(pics['masks_html'])})", ""]
    return "\n".join(out)


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
    from rft_ds.data.formats import read_conversations
    from rft_ds.data.render import encode_conversation, tokenizer_fingerprint
    from rft_ds.fsio import atomic_write, command_line, dumps_line, write_json
    from rft_ds.masks import read_masks, read_meta

    log = log or (lambda msg: print(f"demo-report: {msg}", file=sys.stderr, flush=True))
    if not seeds:
        raise ConfigError("--seeds needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds has duplicates: {seeds}")
    for name, v in (("--max-samples", max_samples), ("--max-new-tokens", max_new_tokens)):
        if v is not None and v < 1:
            raise ConfigError(f"{name} must be >= 1, got {v}")
    if batch_size < 1 or view_samples < 1 or smooth < 1:
        raise ConfigError("--batch-size, --view-samples and --smooth must be >= 1")
    demo, data = Path(demo_dir), Path(data_dir)
    paths = _check_layout(demo, data, seeds, base, shad, masks)
    if train_data:
        paths["train"] = Path(train_data)
        if not paths["train"].exists():
            raise ConfigError(f"--train-data {train_data}: file not found")
    output = Path(output) if output else demo / "report.md"
    json_path = output.with_suffix(".json")
    timing: dict[str, float] = {}

    from rft_ds.modeling import load_tokenizer

    t0 = time.time()
    tok = load_tokenizer(str(paths["base"]))
    fp = tokenizer_fingerprint(tok)
    roles = read_roles(paths["roles"])
    masks = read_masks(paths["masks"])
    meta = read_meta(paths["masks"])
    fps = sorted({r["tokenizer"] for r in masks.values()})
    if fps != [fp]:
        raise MasksError(f"{paths['masks']} was made with tokenizer fingerprint {', '.join(fps)}, but "
                         f"{paths['base']} has {fp}: the masks belong to another base model")
    train = read_conversations(paths["train"])
    agreement = shad_agreement(masks, train, roles, tok)
    agreement["prefix_aware"] = shad_agreement(masks, train, roles, tok, derive=prefix_aware_roles)
    agreement["needs_input"] = shad_agreement(masks, train, roles, tok, derive=needs_input_roles, rule="any")
    agreement["needs_input"]["breakdown"] = needs_input_breakdown(masks, train, tok)
    timing["shad_agreement_s"] = time.time() - t0
    log(f"SHAD agreement on {agreement['tokens']} tokens: accuracy {_f(agreement['token_accuracy'])} semantic, "
        f"{_f(agreement['prefix_aware']['token_accuracy'])} prefix-aware, "
        f"{_f(agreement['needs_input']['token_accuracy'])} needs-input; LD ROC AUC "
        f"{_f(agreement['ld_roc_auc'])} / {_f(agreement['prefix_aware']['ld_roc_auc'])} / "
        f"{_f(agreement['needs_input']['ld_roc_auc'])}")

    # ---- held-out
    import torch

    heldout = read_conversations(paths["heldout"])
    if max_samples is not None:
        heldout = heldout[:max_samples]
    encs = []
    for c in heldout:
        if c.id not in roles:
            raise DataError(str(paths["roles"]), None, None, f"no ground-truth roles for held-out sample {c.id!r}")
        enc, _, classes = token_truth(c, tok, roles[c.id])
        enc.classes = classes
        encs.append(enc)
    calls = call_turn_samples(heldout)
    if not calls:
        raise DataError(str(paths["heldout"]), None, None, "no assistant turn with a tool call to evaluate")
    if max_new_tokens is None:
        call_ids = {s["id"] for s in calls}
        longest = max(sum(1 for mi in e.msg_index if mi == k) for c, e in zip(heldout, encs)
                      for k in range(len(c.messages)) if f"{c.id}@{k}" in call_ids)
        max_new_tokens = longest + MAX_NEW_TOKENS_SLACK
    eval_dir = demo / "eval"
    calls_path = eval_dir / "heldout-calls.jsonl"
    with atomic_write(calls_path) as f:
        for s in calls:
            f.write(dumps_line(s))

    from rft_ds.tools.evaluate import evaluate

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    runs: dict[str, dict[str, dict]] = {r: {} for r in RUNS}
    for s in seeds:
        for r in RUNS:
            run_dir = paths[f"{r}:{s}"]
            # a LoRA run's final/ is the adapter; --merge-lora wrote the full model to final-merged/
            model_dir = str(run_dir / "final-merged" if (run_dir / "final-merged").is_dir() else run_dir / "final")
            mtok = load_tokenizer(model_dir)
            if tokenizer_fingerprint(mtok) != fp:
                for c, e in zip(heldout, encs):
                    if encode_conversation(c, mtok).input_ids != e.input_ids:
                        raise ConfigError(f"{model_dir}: its tokenizer encodes held-out sample {c.id!r} differently "
                                          f"from the base model's ({paths['base']}); the runs must fine-tune the base")
            t1 = time.time()
            log(f"{r}-seed{s}: teacher-forced pass and greedy generation of {len(calls)} tool-call turns ({model_dir})")
            tf = teacher_forced(model_dir, encs, tok.pad_token_id, batch_size, device, dtype=eval_dtype)
            t2 = time.time()
            ev = evaluate(model_dir, str(calls_path), max_new_tokens=max_new_tokens,
                          output=str(eval_dir / f"{r}-seed{s}.jsonl"), batch_size=batch_size, dtype=eval_dtype,
                          quiet=True)
            t3 = time.time()
            timing[f"{r}-seed{s}_teacher_forced_s"] = t2 - t1
            timing[f"{r}-seed{s}_generation_s"] = t3 - t2
            runs[r][str(s)] = {**tf, "call_exact_match": ev["call_exact_match"], "name_accuracy": ev["name_accuracy"],
                               "args_exact_match": ev["args_exact_match"], "turn_exact_match": ev["exact_match"],
                               "parse_failure_rate": ev["parse_failure_rate"],
                               "samples_with_call": ev["samples_with_call"],
                               "hit_max_new_tokens": ev.get("hit_max_new_tokens", 0)}
            log(f"{r}-seed{s}: TF acc reasoning {_f(tf['tf_acc_reasoning'])}, boilerplate "
                f"{_f(tf['tf_acc_boilerplate'])}; call exact match {_f(ev['call_exact_match'])} "
                f"({t3 - t1:.0f}s)")
    first = runs["sft"][str(seeds[0])]
    heldout_rep = {
        "samples": len(heldout), "call_turns": len(calls), "max_new_tokens": max_new_tokens,
        "tokens_reasoning": first["tokens_reasoning"], "tokens_boilerplate": first["tokens_boilerplate"],
        "runs": runs, "summary": summarize_seeds(runs, seeds),
        "eval_data": str(calls_path),
    }

    # ---- pictures
    from rft_ds.tools import plot, view

    t1 = time.time()
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
        "heldout": heldout_rep,
        "pictures": {"curves": str(curves), "masks_html": str(html), "masks_html_samples": vsum["samples"]},
        "spread": "sample standard deviation (n-1) over seeds; min and max also given",
        "timing_s": timing,
    }
    md = render_markdown(rep, output.parent)
    write_json(json_path, rep)
    with atomic_write(output) as f:
        f.write(md + "\n")
    return rep, md


def run(args: argparse.Namespace) -> int:
    settings = {}
    for kv in args.setting or []:
        if "=" not in kv:
            raise ConfigError(f"--setting {kv!r}: expected NAME=VALUE")
        k, v = kv.split("=", 1)
        settings[k] = v
    rep, md = build_report(args.demo_dir, args.data_dir, args.seeds, args.output, args.max_samples,
                           args.max_new_tokens, args.batch_size, args.view_samples, args.smooth,
                           base=args.base, shad=args.shad, masks=args.masks, train_data=args.train_data,
                           settings=settings, eval_dtype=args.eval_dtype)
    print(md, flush=True)
    out = Path(args.output) if args.output else Path(args.demo_dir) / "report.md"
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
