"""SHAD's labels against the ground-truth roles (`rft_ds.demo.truths`), token by token: confusion
counts and rates, mean LD per true class and LD ROC AUC (`shad_agreement`), and the needs-input
reasoning tokens split into value and template-choice tokens (`needs_input_breakdown`). Part 1 of
`rft-ds demo-report`; the SHAD sweep (`rft_ds.demo.sweep`) scores its settings with it too."""

from __future__ import annotations

import math

from rft_ds.demo.stats import mean, ratio, roc_auc
from rft_ds.demo.truths import needs_input_roles, prefix_aware_roles, token_truth
from rft_ds.errors import MasksError


def agreement_metrics(truth: list[int], labels: list[int], lds: list[float | None]) -> dict:
    """Confusion counts and rates of SHAD labels against the true roles (1 = reasoning)."""
    tp = sum(1 for t, p in zip(truth, labels) if t == 1 and p == 1)
    fp = sum(1 for t, p in zip(truth, labels) if t == 0 and p == 1)
    fn = sum(1 for t, p in zip(truth, labels) if t == 1 and p == 0)
    tn = sum(1 for t, p in zip(truth, labels) if t == 0 and p == 0)
    n = len(truth)
    recall, specificity = ratio(tp, tp + fn), ratio(tn, tn + fp)
    ld = {c: [x for t, x in zip(truth, lds) if t == c and isinstance(x, (int, float)) and math.isfinite(x)]
          for c in (0, 1)}
    return {
        "tokens": n,
        "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
        "token_accuracy": ratio(tp + tn, n),
        "reasoning_precision": ratio(tp, tp + fp),
        "reasoning_recall": recall,
        "boilerplate_recall": specificity,
        "balanced_accuracy": (recall + specificity) / 2 if recall is not None and specificity is not None else None,
        "labeled_reasoning_share": ratio(tp + fp, n),
        "true_reasoning_share": ratio(tp + fn, n),
        "mean_ld_true_reasoning": mean(ld[1]),
        "mean_ld_true_boilerplate": mean(ld[0]),
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
    """The needs-input reasoning tokens split by kind (`rft_ds.demo.needs_input.needs_input_kinds`): a
    *value* token picks a value inside a slot (which city, which digit); a *template-choice* token
    picks the template itself (call or answer, which tool's phrase, one or two answer sentences,
    where a number ends: 't' in any character). Per kind: tokens, SHAD's recall, mean LD; and the LD
    ROC AUC of value tokens against the needs-input boilerplate tokens (template choices left out)."""
    from rft_ds.demo.needs_input import needs_input_kinds

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
        out[name] = {"tokens": n, "reasoning_recall": ratio(hit[kind], n), "mean_ld": mean(ld[kind])}
    out["ld_roc_auc_values_only"] = roc_auc(ld["v"] + ld["0"], [1] * len(ld["v"]) + [0] * len(ld["0"]))
    return out


def _render_prefix(tokenizer, messages) -> str:
    from rft_ds.data.render import _render

    return _render(tokenizer, messages, True)


def three_truths(masks: dict, convs: list, roles: dict, tokenizer) -> dict:
    """SHAD's labels against each truth: {"semantic", "prefix_aware", "needs_input": `shad_agreement`,
    "needs_input_breakdown": `needs_input_breakdown`}."""
    return {
        "semantic": shad_agreement(masks, convs, roles, tokenizer),
        "prefix_aware": shad_agreement(masks, convs, roles, tokenizer, derive=prefix_aware_roles),
        "needs_input": shad_agreement(masks, convs, roles, tokenizer, derive=needs_input_roles, rule="any"),
        "needs_input_breakdown": needs_input_breakdown(masks, convs, tokenizer),
    }
