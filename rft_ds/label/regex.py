"""`rft-ds label --method regex`: token labels from a boilerplate regex (the paper's "Regex"
baseline), written as the same masks file as the SHAD pass, so every loss takes either unchanged.

One plain process, the base model's tokenizer only (no model, no process group). Per sample:

    encode_conversation (the training tokenization: the masks join cross-checks these ids)
    -> the rendered text tokenized again with character offsets (ids checked equal)
    -> each assistant message's content located in the rendered text
    -> the pattern's matches on the content -> per character: boilerplate or not -> per token.

Rules (docs/regex-labels.md):
  * A character of the content is boilerplate when a match of the pattern covers it. Characters of
    a loss token that are not content characters are the template's (the end-of-turn marker, e.g.
    `<|im_end|>`): boilerplate, the same in every sample.
  * A token is reasoning (1) when any of its non-whitespace characters is not boilerplate, else
    boilerplate (0). A token of whitespace only is reasoning when any of its characters is not
    boilerplate. So a token that straddles a match boundary is reasoning as soon as it carries one
    visible character of free text (` I` after `Thought:` is reasoning unless the match covers `I`).
  * loss_diff is +1.0 for reasoning and -1.0 for boilerplate: a sign, not nats (no model ran),
    chosen so that `label == (loss_diff > 0)` holds as it does for SHAD masks with margin 0.
The sidecar records `"method": "regex"`, the pattern, and these rules.
"""

from __future__ import annotations

import re
from pathlib import Path

from rft_ds.config import LabelConfig
from rft_ds.errors import ConfigError, DataError

# The default pattern, one alternative per kind of format text. Compiled with the MULTILINE flag
# (`^`/`$` at every line), the first alternative that matches at a position wins.
DEFAULT_PARTS = (
    # ReAct keywords at the start of a line, with their colon and the blanks after it
    r"^[ \t]*(?:Thought|Action Input|Action|Observation|Final Answer)[ \t]*:[ \t]*",
    # fixed thought phrases: LangChain's closing thought, the demo data's call and answer openers
    r"(?<=Thought: )(?:I now know the final answer|I have the answer|I need )",
    # tool-call tags (Hermes / Qwen style) and code fences around JSON
    r"</?(?:tool_call|function_call)>",
    r"```[A-Za-z]*",
    # JSON: a key with its quotes, the colon and the opening quote of a string value
    r'"[^"\\\n]*"[ \t]*:[ \t]*"?',
    # JSON: the opening quote of a string in an array, the closing quote of a string value (before
    # a bracket or a comma and the next member), the comma itself, brackets
    r'(?:(?<=[\[,])|(?<=[\[,] ))"',
    r'"(?=\s*(?:[}\]]|,\s*["{\[]))',
    r'[ \t]*,\s*(?=["{\[])',
    r"[{\[]\s*",
    r"\s*[}\]]",
    # line layout: the punctuation closing a line or the message, and line breaks
    r"[.!?]?[ \t]*\n\s*",
    r"[.!?][ \t]*\Z",
)
DEFAULT_PATTERN = "(?m)" + "|".join(DEFAULT_PARTS)

TOKEN_RULE = ("a token is boilerplate (0) iff each of its non-whitespace characters (all of its characters "
              "when it has only whitespace) lies in a match of the pattern in the message content or outside "
              "the content (the template's end-of-turn marker); else reasoning (1)")
LOSS_DIFF_NOTE = "+1.0 reasoning, -1.0 boilerplate: a sign, not nats (no model is run)"
LOSS_DIFF = {0: -1.0, 1: 1.0}


def compile_pattern(pattern: str | None) -> re.Pattern:
    """The boilerplate regex: `pattern` compiled as given (inline flags such as `(?m)`, `(?i)` are
    the user's to write), or DEFAULT_PATTERN when None. LabelConfig.check() has already turned an
    invalid one into a ConfigError naming --boilerplate-regex."""
    return re.compile(DEFAULT_PATTERN if pattern is None else pattern)


def boilerplate_chars(content: str, rx: re.Pattern) -> bytearray:
    """One byte per character of `content`: 1 where a match of `rx` covers it."""
    out = bytearray(len(content))
    for m in rx.finditer(content):
        out[m.start():m.end()] = b"\x01" * (m.end() - m.start())
    return out


def token_label(text: str, a: int, b: int, lo: int, hi: int, shift: int, bp: bytearray) -> int:
    """The label of the token covering text[a:b] (module docstring). text[lo:hi] is content
    characters content[lo - shift:hi - shift]; every other character of the token is template text."""
    span = range(a, b)
    deciding = [p for p in span if not text[p].isspace()] or span
    return int(any(lo <= p < hi and not bp[p - shift] for p in deciding))


def locate_content(conv, tok, text: str, m: int) -> tuple[int, int, int]:
    """(lo, hi, shift): where assistant message m's content lies in the rendered `text`, as
    rft_ds.data.render finds a message's span (after the prefix rendered with the generation prompt,
    before the rendering up to the message ends). A template that trims the content (Llama 3's
    `| trim`) is allowed: then text[lo:hi] is the stripped content, and content index = position - shift."""
    from rft_ds.data.render import _render  # the same rendering encode_conversation uses

    content = conv.messages[m]["content"]
    start = len(_render(tok, conv.messages[:m], True))
    seg = text[start:len(_render(tok, conv.messages[:m + 1], False))]
    core, lead = content, 0
    k = seg.find(content)
    if k < 0:
        core = content.strip()
        lead = len(content) - len(content.lstrip())
        k = seg.find(core)
    if k < 0:
        raise DataError(conv.path, conv.line, f"messages[{m}].content",
                        f"sample {conv.id!r}: the chat template does not render this assistant message's text "
                        "verbatim, so regex matches cannot be placed on its tokens", "use --method shad")
    lo = start + k
    return lo, lo + len(core), lo - lead


def sample_turns(conv, tok, rx: re.Pattern, max_seq_len: int | None):
    """(Encoded, turns) for one conversation: the masks turns of every trained assistant message,
    token ids exactly those of encode_conversation (after truncation), labels by the regex."""
    from rft_ds.data.render import _render, encode_conversation

    enc = encode_conversation(conv, tok, max_seq_len)
    text = _render(tok, conv.messages, False)
    r = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    if list(r["input_ids"][:len(enc.input_ids)]) != enc.input_ids:  # the same text, tokenized the same way
        raise RuntimeError(f"sample {conv.id!r}: re-tokenizing the rendered text gave other token ids than "
                           "encode_conversation (please report this)")
    offsets = r["offset_mapping"]
    where = {m: locate_content(conv, tok, text, m) for m in enc.assistant_messages}
    bps = {m: boilerplate_chars(conv.messages[m]["content"], rx) for m in enc.assistant_messages}
    turns = {m: {"message": m, "token_ids": [], "labels": [], "loss_diff": []} for m in enc.assistant_messages}
    for t, m in enumerate(enc.msg_index):
        if m < 0 or t < 1:  # the masks' loss tokens: Encoded.turn_tokens
            continue
        lab = token_label(text, *offsets[t], *where[m], bps[m])
        turn = turns[m]
        turn["token_ids"].append(enc.input_ids[t])
        turn["labels"].append(lab)
        turn["loss_diff"].append(LOSS_DIFF[lab])
    return enc, [turns[m] for m in enc.assistant_messages]


def label_regex(cfg: LabelConfig) -> int:
    """The whole pass: every sample of --data, in input order, streamed into the masks file through
    one atomic write (an error leaves no file, or the previous one untouched), then the sidecar."""
    import os
    import shutil
    import sys

    from rft_ds.data.render import tokenizer_fingerprint
    from rft_ds.data.sources import iter_source, resolve
    from rft_ds.fsio import atomic_write, command_line, dumps_line, write_json
    from rft_ds.label.chunks import work_dir
    from rft_ds.masks import make_record, meta_path
    from rft_ds.modeling import load_tokenizer

    cfg.check()
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under a launcher, rank 0 alone writes: there is nothing to share out
    out = Path(cfg.output)
    if out.exists() and not cfg.overwrite:
        raise ConfigError(f"{out} already exists; pass --overwrite to relabel")
    if cfg.shad:
        print("label: --method regex ignores --shad (no model is run)", flush=True)
    rx = compile_pattern(cfg.boilerplate_regex)
    source = resolve(cfg.data, cfg.data_split)  # a bad --data is refused before the tokenizer loads
    tok = load_tokenizer(cfg.base)
    fp = tokenizer_fingerprint(tok)
    n = n_all = n_r = n_trunc = 0
    with atomic_write(out) as f:
        for conv in iter_source(source):
            enc, turns = sample_turns(conv, tok, rx, cfg.max_seq_len)
            if enc.truncated and cfg.on_overflow == "error":
                raise DataError(conv.path, conv.line, "messages", f"sample {conv.id!r} is longer than --max-seq-len "
                                f"{cfg.max_seq_len}", "raise --max-seq-len, or pass --on-overflow truncate")
            n, n_trunc = n + 1, n_trunc + enc.truncated
            n_all += sum(len(t["labels"]) for t in turns)
            n_r += sum(sum(t["labels"]) for t in turns)
            f.write(dumps_line(make_record(enc.id, fp, turns)))
    write_json(meta_path(out), {
        "method": "regex", "pattern": rx.pattern, "token_rule": TOKEN_RULE, "loss_diff": LOSS_DIFF_NOTE,
        "base": cfg.base, "data": cfg.data, "tokenizer": fp, "max_seq_len": cfg.max_seq_len, "samples": n,
        "truncated": n_trunc, "tokens": n_all, "reasoning_share": n_r / max(n_all, 1), "command": command_line()})
    # the chunks of an interrupted SHAD labeling of this output no longer belong to it
    shutil.rmtree(work_dir(out), ignore_errors=True)
    print(f"label: wrote {out}: {n} samples, {n_all} assistant tokens, {n_r / max(n_all, 1):.1%} labeled "
          f"reasoning by the regex ({n_trunc} truncated to --max-seq-len)", flush=True)
    if n_all and n_r in (0, n_all):
        print(f"label: warning: every token is {'reasoning' if n_r else 'boilerplate'}: does "
              "--boilerplate-regex fit this data's format?", file=sys.stderr, flush=True)
    return 0
