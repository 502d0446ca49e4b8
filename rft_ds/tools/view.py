"""`rft-ds view`: a masks file as a self-contained HTML page.

Every sample's conversation, with each trained assistant message shown token by token,
coloured by its SHAD label (reasoning green, boilerplate yellow; assistant text the masks do not
cover, e.g. cut by --max-seq-len, grey) and the token's LD on hover. The page is one HTML file with
inline CSS and JS and no network access. All samples are embedded as JSON (token ids plus a table
of the decoded text of each id used) and JS renders only the visible page (--page-size samples),
so a file of ~10k samples stays fast; the first page is also rendered statically, so the file is
readable with JS off. Paging: prev/next buttons (or the arrow keys), a page dropdown, a go-to-id box,
and `#page=N` / `#id=ID` in the URL.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from rft_ds.errors import ConfigError, MasksError
from rft_ds.fsio import atomic_write
from rft_ds.tools.view_html import MISMATCH_LIST, header_html, page_html, pct, stat_html

DEFAULT_PAGE_SIZE = 20


def _meta(masks_path: str) -> dict:
    from rft_ds.masks import meta_path, read_meta

    try:
        meta = read_meta(masks_path)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MasksError(f"{meta_path(masks_path)}: unreadable sidecar: {e}") from None
    return meta if isinstance(meta, dict) else {}


def load_tokenizer(masks_path: str, tokenizer_dir: str | None):
    """--tokenizer, else the base model recorded in the masks sidecar, else a clear error."""
    from rft_ds.masks import meta_path

    source = tokenizer_dir
    origin = "--tokenizer"
    if not source:
        base = _meta(masks_path).get("base")
        if not base:
            side = meta_path(masks_path)
            why = f"{side} has no 'base' entry" if side.exists() else f"there is no sidecar {side}"
            raise ConfigError(f"no tokenizer to decode the token ids of {masks_path}: {why}; "
                              "pass --tokenizer DIR (the base model or tokenizer directory used by `rft-ds label`)")
        source, origin = str(base), f"'base' in {meta_path(masks_path)}"
        hub_id = source.count("/") == 1 and not source.startswith((".", "/", "~"))
        if not os.path.exists(source) and not hub_id:
            raise ConfigError(f"tokenizer {source!r} ({origin}) does not exist on this machine; "
                              "pass --tokenizer DIR")
    elif not os.path.isdir(source):
        raise ConfigError(f"--tokenizer {source}: not a directory")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"cannot load a tokenizer from {source} ({origin}): {e}") from None
    from rft_ds.modeling import prepare_tokenizer  # as `rft-ds label` does, so fingerprints compare

    return prepare_tokenizer(tok), source


class TokenText:
    """The text of one token id, decoded alone (`tokenizer.decode([id])`) and cached per id.

    SentencePiece decoders drop the leading space of a sequence's first piece, so a lone `▁word`
    decodes to "word"; the space is put back so the pieces of a turn join to its text.
    """

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.n = len(tokenizer)
        self.special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self.cache: dict[int, str] = {}

    def __call__(self, i: int) -> str:
        s = self.cache.get(i)
        if s is None:
            if not isinstance(i, int) or not 0 <= i < self.n:
                s = f"<id {i}?>"
            else:
                try:
                    s = self.tok.decode([i])
                    piece = self.tok.convert_ids_to_tokens(i)
                    if isinstance(piece, str) and piece.startswith("\u2581") and not s[:1].isspace():
                        s = " " + s
                except Exception:  # a tokenizer that cannot decode this id alone
                    s = f"<id {i}?>"
            self.cache[i] = s
        return s


def uncovered_text(content: str, pieces: list[str], last_is_special: bool) -> str:
    """The end of an assistant message's text that its turn's tokens do not cover (truncation)."""
    joined = "".join(pieces)
    lcp = len(os.path.commonprefix([joined, content]))
    if lcp >= len(content) or last_is_special:
        return ""
    if lcp == len(joined):
        return content[lcp:]
    # The pieces do not spell the text exactly (lossy per-token decode, e.g. split UTF-8 bytes):
    # estimate by length.
    return content[min(len(joined), len(content)):]


def _ld_milli(x) -> int | None:
    if x is None or isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return int(round(x * 1000))


def _turn_payload(turn: dict, message: int, content: str | None, text: TokenText, vocab: dict) -> dict:
    ids = list(turn["token_ids"])
    pieces = []
    for i in ids:
        s = text(i)
        vocab[str(i)] = s
        pieces.append(s)
    out = {"role": "assistant", "m": message, "ids": ids, "lab": "".join(str(x) for x in turn["labels"])}
    ld = turn.get("loss_diff")
    if ld is not None:
        out["ld"] = [_ld_milli(x) for x in ld]
    if content is not None:
        rest = uncovered_text(content, pieces, bool(ids) and ids[-1] in text.special)
        if rest:
            out["rest"] = rest
    return out


def sample_payload(sid: str, conv, rec: dict | None, text: TokenText, vocab: dict) -> dict:
    """One sample as embedded in the page. conv (from --data) or rec (from the masks) may be None."""
    msgs: list[dict] = []
    notes: list[str] = []
    turns = {t["message"]: t for t in rec["turns"]} if rec else {}
    if conv is None:
        notes.append("not in --data: only the labeled assistant tokens are shown")
    else:
        if rec is None:
            notes.append("not in the masks file: no labels")
        for i, m in enumerate(conv.messages):
            if m["role"] != "assistant":
                msgs.append({"role": m["role"], "text": m["content"]})
            elif i in turns:
                msgs.append(_turn_payload(turns.pop(i), i, m["content"], text, vocab))
            else:
                msgs.append({"role": "assistant", "m": i, "rest": m["content"], "nolabel": 1})
        if turns and rec is not None:
            bad = ", ".join(str(k) for k in sorted(turns))
            notes.append(f"masks label message(s) {bad}, which are not assistant messages of this sample in "
                         "--data (data and masks disagree); their tokens are shown at the end")
    for i in sorted(turns):
        msgs.append(_turn_payload(turns[i], i, None, text, vocab))
    n = sum(len(m.get("ids", ())) for m in msgs)
    r = sum(m.get("lab", "").count("1") for m in msgs)
    return {"id": sid, "n": n, "r": r, "notes": notes, "msgs": msgs}


def _label_stats(masks: dict) -> tuple[int, int, dict[int, list[float]]]:
    """Over every masks record: labeled tokens, reasoning tokens, finite LDs by label."""
    n_tok = sum(len(t["labels"]) for r in masks.values() for t in r["turns"])
    n_r = sum(sum(t["labels"]) for r in masks.values() for t in r["turns"])
    lds: dict[int, list[float]] = {0: [], 1: []}
    for r in masks.values():
        for t in r["turns"]:
            for lab, x in zip(t["labels"], t.get("loss_diff") or ()):
                if isinstance(x, (int, float)) and math.isfinite(x):
                    lds[lab].append(x)
    return n_tok, n_r, lds


def _warnings(masks: dict, tokenizer, tokenizer_source: str, masks_only: list[str],
              data_only: list[str]) -> list[tuple[str, list[str]]]:
    """(message, ids listed after it) for a tokenizer or sample-set mismatch."""
    from rft_ds.data.render import tokenizer_fingerprint

    fp = tokenizer_fingerprint(tokenizer)
    fps = sorted({r["tokenizer"] for r in masks.values()})
    warnings: list[tuple[str, list[str]]] = []
    if fps != [fp]:
        warnings.append((f"the masks were made with tokenizer fingerprint {', '.join(fps)} but {tokenizer_source} "
                         f"has {fp}: token texts may be wrong (pass the tokenizer `rft-ds label` used with "
                         "--tokenizer)", []))
    if masks_only:
        warnings.append((f"{len(masks_only)} sample(s) in the masks but not in --data (shown with their labeled "
                         "tokens only):", masks_only))
    if data_only:
        warnings.append((f"{len(data_only)} sample(s) in --data but not in the masks (shown unlabeled, after the "
                         "labeled ones):", data_only))
    return warnings


def build_page(masks_path: str, data_path: str, masks: dict, convs: list, tokenizer, tokenizer_source: str,
               max_samples: int | None = None, page_size: int = DEFAULT_PAGE_SIZE) -> tuple[str, dict]:
    """The HTML page and a summary dict (for the CLI's one-line report and tests)."""
    data_by_id = {c.id: c for c in convs}
    masks_only = [i for i in masks if i not in data_by_id]
    data_only = [c.id for c in convs if c.id not in masks]
    order = list(masks) + data_only
    if max_samples is not None:
        order = order[:max_samples]
    text = TokenText(tokenizer)
    vocab: dict[str, str] = {}
    samples = [sample_payload(sid, data_by_id.get(sid), masks.get(sid), text, vocab) for sid in order]

    n_tok, n_r, lds = _label_stats(masks)  # the whole file, whatever --max-samples shows
    n_trunc = sum(1 for s in samples for m in s["msgs"] if m.get("rest") and not m.get("nolabel"))
    warnings = _warnings(masks, tokenizer, tokenizer_source, masks_only, data_only)

    def mean(xs):
        return f"{sum(xs) / len(xs):+.3f}" if xs else "n/a"

    meta = _meta(masks_path)
    n_all = len(masks) + len(data_only)
    shown = f"{len(samples)}" + (f" of {n_all}" if len(samples) < n_all else "")
    stats = "".join([
        stat_html(shown, "samples shown"),
        stat_html(f"{n_tok:,}", "labeled tokens"),
        stat_html(pct(n_r, n_tok), f"reasoning ({n_r:,} tokens)"),
        stat_html(pct(n_tok - n_r, n_tok), f"boilerplate ({n_tok - n_r:,} tokens)"),
    ] + ([] if meta.get("method") == "regex" else  # regex masks: loss_diff is a sign, there is no LD
         [stat_html(f"{mean(lds[1])} / {mean(lds[0])}", "mean LD reasoning / boilerplate")])
      + ([stat_html(str(n_trunc), "truncated turns shown")] if n_trunc else []))
    header = header_html(masks_path, data_path, tokenizer_source, meta, stats, warnings)
    page, pages = page_html(Path(masks_path).name, header, samples, vocab, page_size)
    plain = [w + (" " + ", ".join(ids[:MISMATCH_LIST]) + (" ..." if len(ids) > MISMATCH_LIST else "") if ids else "")
             for w, ids in warnings]
    summary = {"samples": len(samples), "pages": pages, "tokens": n_tok, "reasoning": n_r,
               "masks_only": masks_only, "data_only": data_only, "warnings": plain}
    return page, summary


def run_view(args) -> int:
    from rft_ds.data.formats import read_conversations
    from rft_ds.masks import read_masks

    if args.max_samples is not None and args.max_samples < 1:
        raise ConfigError(f"--max-samples must be >= 1, got {args.max_samples}")
    if args.page_size < 1:
        raise ConfigError(f"--page-size must be >= 1, got {args.page_size}")
    masks = read_masks(args.masks)
    convs = read_conversations(args.data)
    tok, source = load_tokenizer(args.masks, args.tokenizer)
    page, summary = build_page(args.masks, args.data, masks, convs, tok, source, args.max_samples, args.page_size)
    with atomic_write(args.output) as f:
        f.write(page)
    for w in summary["warnings"]:
        print(f"rft-ds view: warning: {w}", file=sys.stderr)
    share = pct(summary["reasoning"], summary["tokens"])
    size = os.path.getsize(args.output)
    print(f"wrote {args.output} ({size / 1e6:.1f} MB): {summary['samples']} samples on {summary['pages']} page(s), "
          f"{summary['tokens']} labeled tokens, {share} reasoning")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("view", help="render a masks file as a self-contained HTML page (tokens coloured by label)")
    p.add_argument("masks", metavar="MASKS.jsonl", help="masks file written by `rft-ds label`")
    p.add_argument("--data", required=True, help="the JSONL the masks were made from (OpenAI messages or ShareGPT)")
    p.add_argument("--output", required=True, help="HTML file to write")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer/model directory to decode token ids (default: 'base' in the masks sidecar)")
    p.add_argument("--max-samples", type=int, default=None, help="render only the first N samples")
    p.add_argument("--page-size", type=int, default=DEFAULT_PAGE_SIZE, help="samples per page (default %(default)s)")
    p.set_defaults(func=run_view)
