"""The masks JSONL schema: what the labeling pass writes and RFT reads. Readers and writers live
here and nowhere else.

One JSON object per line, in the order of the input data:
    {"id": str,                       # the sample id (joined to the training data by id)
     "tokenizer": str,                # tokenizer fingerprint (rft_ds.data.render.tokenizer_fingerprint)
     "turns": [                       # one object per trained assistant message, in message order
        {"message": int,              # index of the assistant message in the sample's messages
         "token_ids": [int],          # that message's loss tokens after truncation (may be empty)
         "labels": [0|1],             # 1 = reasoning (LD > margin), 0 = boilerplate
         "loss_diff": [float]}]}      # LD = l_shad - l_base per token (nats, 6 decimals)
A sidecar `<masks>.meta.json` records the base and SHAD models, data, tokenizer fingerprint,
margin, max_seq_len and the command that made the file. `attach_classes` joins masks to a
training tokenization (by id, token ids cross-checked).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

from rft_ds.errors import MasksError
from rft_ds.fsio import iter_jsonl

UNMASKED = 2  # class of the tokens of samples without masks, trained with SFT (--missing-masks sft)


def meta_path(path: str | os.PathLike) -> Path:
    return Path(str(path) + ".meta.json")


def make_record(sample_id: str, tokenizer_fp: str, turns: list[dict]) -> dict:
    return {"id": sample_id, "tokenizer": tokenizer_fp, "turns": turns}


def validate_record(rec, path: str, line: int) -> dict:
    def bad(field, problem):
        raise MasksError(f"{path}:{line}: field '{field}': {problem}")

    if not isinstance(rec, dict):
        bad("<line>", "must be a JSON object")
    for key, typ in (("id", str), ("tokenizer", str), ("turns", list)):
        if not isinstance(rec.get(key), typ):
            bad(key, f"missing or not a {typ.__name__}")
    for k, t in enumerate(rec["turns"]):
        f = f"turns[{k}]"
        if not isinstance(t, dict):
            bad(f, "must be an object")
        if not isinstance(t.get("message"), int) or isinstance(t["message"], bool):
            bad(f + ".message", "missing or not an int")
        ids, labels, ld = t.get("token_ids"), t.get("labels"), t.get("loss_diff")
        if not isinstance(ids, list) or not isinstance(labels, list):
            bad(f, "token_ids and labels must be lists")
        if ld is not None and not isinstance(ld, list):
            bad(f + ".loss_diff", f"must be a list, got {type(ld).__name__}")
        if len(ids) != len(labels) or (ld is not None and len(ld) != len(ids)):
            bad(f, f"lengths disagree: {len(ids)} token_ids, {len(labels)} labels"
                   + (f", {len(ld)} loss_diff" if ld is not None else ""))
        if any(type(i) is not int for i in ids):
            bad(f + ".token_ids", "token ids must be integers")
        if any(type(lab) is not int or lab not in (0, 1) for lab in labels):  # not True, not 1.0
            bad(f + ".labels", f"labels must be 0 or 1, found {sorted(set(map(repr, labels)) - {'0', '1'})}")
    return rec


def iter_masks(path: str | os.PathLike) -> Iterator[dict]:
    """Stream the validated records of a masks file (one in memory at a time). Errors name file,
    line and field; a duplicate id and an empty file are errors."""
    path = str(path)
    if not os.path.exists(path):
        raise MasksError(f"{path}: masks file not found (run `rft-ds label` first)")
    seen: set[str] = set()

    def fail(line, msg):
        if line is None:
            return MasksError(f"{path}: {msg}; is this a masks file?")
        return MasksError(f"{path}:{line}: {msg}")

    try:
        for line, rec in iter_jsonl(path, fail):
            validate_record(rec, path, line)
            if rec["id"] in seen:
                raise MasksError(f"{path}:{line}: field 'id': duplicate id {rec['id']!r}")
            seen.add(rec["id"])
            yield rec
    except OSError as e:
        raise MasksError(f"{path}: cannot read the masks file: {e.strerror or e}") from None
    if not seen:
        raise MasksError(f"{path}: empty masks file")


def read_masks(path: str | os.PathLike) -> dict[str, dict]:
    """Read and validate a whole masks file; returns {id: record} (for tools; training streams)."""
    return {rec["id"]: rec for rec in iter_masks(path)}


def read_meta(path: str | os.PathLike) -> dict:
    p = meta_path(path)
    return json.loads(p.read_text()) if p.exists() else {}


def attach_classes(encs, masks_path: str, fingerprint: str, missing: str) -> dict:
    """The masks join of `train --masks`, streamed: each record of the masks file is read once, joined
    to its training sample by id, its token ids checked against this tokenization, and the sample's
    per-token classes stored with `encs.set_classes` (no rank holds the whole masks file). Samples
    without a record are an error, or with `missing="sft"` train with the SFT loss (UNMASKED)."""
    pos = {sid: i for i, sid in enumerate(encs.ids)}
    joined = bytearray(len(pos))
    for rec in iter_masks(masks_path):
        i = pos.get(rec["id"])
        if i is None:  # a record for a sample that is not trained (filtered, or another data set's)
            continue
        e = encs[i]
        if rec["tokenizer"] != fingerprint:
            raise MasksError(f"{masks_path}: sample {e.id!r}: masks were made with tokenizer {rec['tokenizer']}, "
                             f"this model's tokenizer is {fingerprint}; relabel with this model's tokenizer")
        turns = {t["message"]: t for t in rec["turns"]}
        labels_at: dict[int, list[int]] = {}
        for msg in e.assistant_messages:
            toks = e.turn_tokens(msg)
            t = turns.get(msg)
            if t is None or t["token_ids"] != toks:
                have = "no turn" if t is None else f"{len(t['token_ids'])} token ids"
                raise MasksError(f"{masks_path}: sample {e.id!r} message {msg}: masks have {have}, the training "
                                 f"tokenization has {len(toks)} loss tokens that differ; were the masks made with "
                                 "another tokenizer, chat template or --max-seq-len?")
            labels_at[msg] = list(reversed(t["labels"]))
        encs.set_classes(i, [labels_at[m].pop() if (m >= 0 and t >= 1) else -1 for t, m in enumerate(e.msg_index)])
        joined[i] = 1
    unjoined = [sid for sid, i in pos.items() if not joined[i]]
    if unjoined and missing == "error":
        raise MasksError(f"{masks_path}: no masks for {len(unjoined)} training samples (first: {unjoined[:5]}); "
                         "label them, or pass --missing-masks sft to train those with the SFT loss")
    for sid in unjoined:
        e = encs[pos[sid]]
        encs.set_classes(pos[sid], [UNMASKED if (m >= 0 and t >= 1) else -1 for t, m in enumerate(e.msg_index)])
    return {"missing_masks": len(unjoined)}
