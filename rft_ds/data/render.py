"""Render a conversation with the tokenizer's chat template, tokenize it once, mark loss tokens.

How the per-token assistant mask is found, for any chat template:
  the text of message i spans [len(render(messages[:i], add_generation_prompt=True)),
                               len(render(messages[:i+1])))
in render(messages). That span is the assistant's content plus the template's end-of-turn marker
(e.g. `<|im_end|>`, `<|eot_id|>`), which the model must learn in order to stop; trailing
whitespace after the marker is left out. The whole text is tokenized once with offsets, and a token
belongs to message i when its character span overlaps message i's span. A template for which the
prefixes are not prefixes of the whole rendering is rejected with a clear error.

Tokenizers without a chat template get FALLBACK_CHAT_TEMPLATE (ChatML), documented in README.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from rft_ds.data.formats import Conversation
from rft_ds.errors import ConfigError, DataError

FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def ensure_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE


def tokenizer_fingerprint(tokenizer) -> str:
    """A short stable hash of what decides token ids: vocabulary, special tokens, chat template."""
    h = hashlib.sha256()
    h.update(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode())
    h.update(json.dumps(sorted(map(str, tokenizer.all_special_tokens))).encode())
    tmpl = tokenizer.chat_template or ""  # a dict when the tokenizer ships named templates (e.g. tool_use)
    h.update((tmpl if isinstance(tmpl, str) else json.dumps(tmpl, sort_keys=True)).encode())
    return h.hexdigest()[:16]


@dataclass
class Encoded:
    """One tokenized sample. `msg_index[t]` is the index of the trained assistant message that token
    t belongs to, or -1. Token t is a loss token when msg_index[t] >= 0 and t >= 1 (it is predicted
    from position t-1)."""

    id: str
    input_ids: list[int]
    msg_index: list[int]
    n_messages: int
    assistant_messages: list[int]  # the trained assistant message indices, in order
    truncated: bool = False
    classes: list[int] | None = field(default=None)  # per token: 0 boilerplate, 1 reasoning, -1 none

    @property
    def n_loss_tokens(self) -> int:
        return sum(1 for t, m in enumerate(self.msg_index) if m >= 0 and t >= 1)

    def turn_tokens(self, message: int) -> list[int]:
        """The loss-token ids of one assistant message (after truncation)."""
        return [tok for t, (tok, m) in enumerate(zip(self.input_ids, self.msg_index)) if m == message and t >= 1]


class EncodedList(list):
    """Encoded samples in memory, with the interface the passes use on the memory-mapped cache
    (rft_ds/data/cache.py:EncodedTable): `lengths`, `ids`, `set_classes`."""

    @property
    def lengths(self) -> list[int]:
        return [len(e.input_ids) for e in self]

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self]

    def set_classes(self, i: int, classes: list[int]) -> None:
        self[i].classes = classes


def _render(tokenizer, messages, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def encode_conversation(conv: Conversation, tokenizer, max_seq_len: int | None = None) -> Encoded:
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer; "
                          "rft-ds needs character offsets (use_fast=True)")
    msgs = conv.messages
    text = _render(tokenizer, msgs, False)
    spans = []
    for i in conv.loss_message_indices():
        if i == 0:
            raise DataError(conv.path, conv.line, "messages[0]", "the first message cannot be a trained "
                            "assistant turn: it has no context")
        head = _render(tokenizer, msgs[:i], True)
        upto = _render(tokenizer, msgs[: i + 1], False)
        if not text.startswith(head) or not text.startswith(upto) or len(upto) < len(head):
            raise ConfigError(f"sample {conv.id!r}: the chat template does not render conversation prefixes as "
                              "prefixes of the whole conversation, so assistant tokens cannot be located")
        end = len(upto)
        while end > len(head) and upto[end - 1].isspace():
            end -= 1
        spans.append((i, len(head), end))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    msg_index = [-1] * len(ids)
    j = 0
    for t, (a, b) in enumerate(offsets):
        while j < len(spans) and spans[j][2] <= a:
            j += 1
        if j < len(spans) and b > spans[j][1] and a < spans[j][2] and b > a:
            msg_index[t] = spans[j][0]
    truncated = False
    if max_seq_len is not None and len(ids) > max_seq_len:
        ids, msg_index, truncated = ids[:max_seq_len], msg_index[:max_seq_len], True
    return Encoded(id=conv.id, input_ids=list(ids), msg_index=msg_index, n_messages=len(msgs),
                   assistant_messages=[s[0] for s in spans], truncated=truncated)


@dataclass
class EncodeStats:
    samples: int = 0
    truncated: int = 0
    dropped_no_loss_tokens: int = 0
    loss_tokens: int = 0
    tokens: int = 0

    def summary(self) -> str:
        return (f"{self.samples} samples, {self.tokens} tokens ({self.loss_tokens} loss tokens); "
                f"{self.truncated} truncated to --max-seq-len, {self.dropped_no_loss_tokens} dropped "
                "because truncation left no assistant token")


def encode_dataset(convs: list[Conversation], tokenizer, max_seq_len: int | None,
                   on_overflow: str = "truncate", keep_empty: bool = False) -> tuple[list[Encoded], EncodeStats]:
    """Tokenize every sample once. on_overflow: 'truncate' (count and report) or 'error'. Samples
    that truncation left without a loss token are dropped (counted) unless `keep_empty`."""
    ensure_chat_template(tokenizer)
    out, st = EncodedList(), EncodeStats()
    for conv in convs:
        e = encode_conversation(conv, tokenizer, max_seq_len)
        if e.truncated:
            if on_overflow == "error":
                raise DataError(conv.path, conv.line, "messages",
                                f"sample {conv.id!r} is longer than --max-seq-len {max_seq_len} tokens",
                                "raise --max-seq-len, or pass --on-overflow truncate")
            st.truncated += 1
        if e.n_loss_tokens == 0 and not keep_empty:
            st.dropped_no_loss_tokens += 1
            continue
        st.samples += 1
        st.tokens += len(e.input_ids)
        st.loss_tokens += e.n_loss_tokens
        out.append(e)
    if not out:
        raise DataError(convs[0].path if convs else "?", None, None,
                        "no sample has an assistant token left after truncation", "raise --max-seq-len")
    return out, st
