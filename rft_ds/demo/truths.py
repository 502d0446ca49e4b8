"""The ground-truth role of every token of the demo data, for `rft-ds demo-report` and the SHAD sweep.

`roles.jsonl` (written by `rft-ds demo-data`) gives one '0'/'1' per content character of each
assistant message: the semantic truth. Two more truths derive from it or from the message text:
prefix-aware (`prefix_aware_roles`) and needs-input (`needs_input_roles`, computed by
`rft_ds.demo.needs_input`). `token_truth` maps a truth's characters onto the tokens of the rendered
conversation (`role_of_span`: majority of the covered characters, or any of them for needs-input).
"""

from __future__ import annotations

import os
import re

from rft_ds.errors import DataError
from rft_ds.fsio import iter_jsonl


def read_roles(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """{sample id: {str(message index): one '0'/'1' per content character}} from roles.jsonl."""
    path = str(path)
    if not os.path.exists(path):
        raise DataError(path, None, None, "file not found", "run `rft-ds demo-data` to write the demo data")
    out: dict[str, dict[str, str]] = {}
    for line, obj in iter_jsonl(path, lambda line, msg: DataError(path, line, None, msg)):
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
    (`rft_ds.demo.needs_input.needs_input`): '1' where the message's own earlier text does not
    determine the character; one extra character for the end of the message. Use with rule="any"."""
    from rft_ds.demo.needs_input import needs_input

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
