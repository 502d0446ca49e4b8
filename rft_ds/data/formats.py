"""Readers for the two chat JSONL formats, with errors that name file, line and field.

OpenAI messages:  {"id"?: str, "messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str}]}
ShareGPT:         {"id"?: str, "conversations": [{"from": "system"|"human"|"gpt"|"function_call"|"observation", "value": str}]}

ShareGPT roles map to OpenAI roles: human->user, gpt->assistant, function_call->assistant (the
model's own tool call is an output it must learn), observation->tool. A sample without an id gets
`<file stem>-<line>` (1-based line), stable as long as the file is not edited above it.

Every sample must have at least one non-empty assistant message; ids must be unique in a file.
`--data` (a file, Parquet, a directory, a glob, a hub data set) is resolved by rft_ds/data/sources.py,
which reads JSONL files here and validates Parquet rows with `parse_sample`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from rft_ds.errors import DataError
from rft_ds.fsio import iter_jsonl

ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "function_call": "assistant",
    "observation": "tool",
    "function": "tool",
    "tool": "tool",
}


@dataclass
class Conversation:
    id: str
    messages: list[dict]  # [{"role": str, "content": str}], normalised to OpenAI roles
    path: str = ""
    line: int = 0
    # Indices of the assistant messages that carry loss. None means every assistant message.
    train_messages: tuple[int, ...] | None = field(default=None)

    def loss_message_indices(self) -> list[int]:
        if self.train_messages is not None:
            return list(self.train_messages)
        return [i for i, m in enumerate(self.messages) if m["role"] == "assistant"]


def _parse_messages(obj: dict, path: str, line: int) -> list[dict]:
    if "messages" in obj:
        key, role_key, text_key, role_map = "messages", "role", "content", {r: r for r in ROLES}
    elif "conversations" in obj:
        key, role_key, text_key, role_map = "conversations", "from", "value", SHAREGPT_ROLES
    else:
        raise DataError(path, line, "messages", "missing: a sample needs 'messages' (OpenAI format) "
                        "or 'conversations' (ShareGPT format)")
    turns = obj[key]
    if not isinstance(turns, list) or not turns:
        raise DataError(path, line, key, f"must be a non-empty list, got {type(turns).__name__}"
                        + (" (empty)" if isinstance(turns, list) else ""))
    out = []
    for i, t in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(t, dict):
            raise DataError(path, line, where, f"must be an object, got {type(t).__name__}")
        role = t.get(role_key)
        if not isinstance(role, str) or role not in role_map:  # a list/dict role is unhashable
            raise DataError(path, line, f"{where}.{role_key}",
                            f"unknown role {role!r}; expected one of {sorted(role_map)}")
        content = t.get(text_key)
        if not isinstance(content, str):
            raise DataError(path, line, f"{where}.{text_key}",
                            f"must be a string, got {type(content).__name__}")
        out.append({"role": role_map[role], "content": content})
    assistant = [i for i, m in enumerate(out) if m["role"] == "assistant"]
    if not assistant:
        raise DataError(path, line, key, "no assistant turn: nothing to train on",
                        "drop the sample or add the assistant's reply")
    for i in assistant:
        if not out[i]["content"].strip():
            raise DataError(path, line, f"{key}[{i}].{text_key}", "empty assistant content")
    return out


def parse_sample(obj, path: str, line: int, stem: str | None = None) -> Conversation:
    """One sample (a JSON line, or a row of a Parquet file or Hugging Face data set: rft_ds/data/
    sources.py); without an id it gets `<stem>-<line>`, stem defaulting to the file's."""
    if not isinstance(obj, dict):
        raise DataError(path, line, None, f"each line must be a JSON object, got {type(obj).__name__}")
    messages = _parse_messages(obj, path, line)
    sid = obj.get("id")
    if sid is None:
        sid = f"{Path(path).stem if stem is None else stem}-{line}"
    elif not isinstance(sid, (str, int)) or isinstance(sid, bool) or str(sid) == "":
        raise DataError(path, line, "id", f"must be a non-empty string, got {sid!r}")
    return Conversation(id=str(sid), messages=messages, path=str(path), line=line)


def iter_conversations(path: str | os.PathLike) -> Iterator[Conversation]:
    """Stream samples from a JSONL file; raises DataError at the first bad line."""
    path = str(path)
    if not os.path.exists(path):
        raise DataError(path, None, None, "file not found")
    # -sig: a byte-order mark some editors write is skipped
    lines = iter_jsonl(path, lambda line, msg: DataError(path, line, None, msg), encoding="utf-8-sig")
    yield from unique_samples((parse_sample(obj, path, n) for n, obj in lines), path, "line", "empty file: no samples")


def unique_samples(convs: Iterator[Conversation], path: str, unit: str, empty: str) -> Iterator[Conversation]:
    """The samples of one file (`unit`: "line" or "row", as `Conversation.line` counts), checking that
    ids are unique in it and that it has at least one (else DataError `empty`)."""
    seen: dict[str, int] = {}
    for conv in convs:
        if conv.id in seen:
            raise DataError(path, conv.line, "id", f"duplicate id {conv.id!r} (first on {unit} {seen[conv.id]})",
                            "ids must be unique: masks are joined by id")
        seen[conv.id] = conv.line
        yield conv
    if not seen:
        raise DataError(path, None, None, empty)


def read_conversations(path: str | os.PathLike) -> list[Conversation]:
    return list(iter_conversations(path))
