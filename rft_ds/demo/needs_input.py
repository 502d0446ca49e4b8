"""The third truth of the demo data, needs-input: which characters of an assistant message its own
earlier text does not determine.

A character is '1' iff, among all assistant messages the generator can write that begin with the
same text, more than one next character (or the end of the message) is possible. The messages are
enumerated from the tool catalogue (`rft_ds.demo.catalog`) as item sequences (`message_templates`)
and matched character by character by a small nondeterministic automaton (`needs_input_kinds`).
`rft_ds/demo/generate.py` describes the three truths; `rft-ds demo-report` measures SHAD against
this one (`rft_ds.demo.truths.needs_input_roles`).
"""

from __future__ import annotations

import functools
import json
import re

from rft_ds.demo.catalog import CALL_PREFIX, FINAL_PREFIX, NUMBER, TOOLS

_END = None  # the "character" after the last one: the end of the message (its end-of-turn token)
_WHOLE_NUMBER = re.compile(r"-?\d+(\.\d+)?")
_TEMPLATES: list[list[tuple]] = []


def _format_items(fmt: str, pools: dict) -> list[tuple]:
    """A format string as items: ("lit", text) and ("slot", field name, pool)."""
    import string

    items = []
    for lit, field, _, _ in string.Formatter().parse(fmt):
        if lit:
            items.append(("lit", lit))
        if field is not None:
            items.append(("slot", field, pools[field]))
    return items


def message_templates() -> list[list[tuple]]:
    """Every assistant message the generator can write, as item sequences: ("lit", text), ("slot",
    name, pool) (any string of the pool, or any JSON number) and ("copy", name) (the text an earlier
    slot of the same message took: the Action Input repeats the Thought's values). 9 call messages,
    9 one-sentence and 81 two-sentence final answers."""
    if _TEMPLATES:
        return _TEMPLATES
    for tool in TOOLS:
        items = [("lit", CALL_PREFIX)] + _format_items(tool.intent, tool.pools)
        items.append(("lit", ".\nAction: " + tool.name + "\nAction Input: "))
        for i, (key, typ) in enumerate(tool.params):
            items.append(("lit", ("{" if i == 0 else ", ") + json.dumps(key) + ": " + ('"' if typ == "string" else "")))
            items.append(("copy", key))
            if typ == "string":
                items.append(("lit", '"'))
        items.append(("lit", "}"))
        _TEMPLATES.append(items)
    sentences = [_format_items(t.answer_template, t.pools) for t in TOOLS]
    for a in sentences:
        _TEMPLATES.append([("lit", FINAL_PREFIX)] + a + [("lit", ".")])
    for a in sentences:
        for b in sentences:
            _TEMPLATES.append([("lit", FINAL_PREFIX)] + a + [("lit", ". ")] + b + [("lit", ".")])
    return _TEMPLATES


_POOLS: dict[int, list] = {}


def _pool_key(pool: list) -> int:
    _POOLS.setdefault(id(pool), pool)
    return id(pool)


@functools.lru_cache(maxsize=None)
def _pool_state(pool_id: int, buf: str) -> tuple[frozenset, bool]:
    """(possible next characters, whether `buf` is a whole value) inside a pool slot."""
    pool = _POOLS[pool_id]
    n = len(buf)
    return frozenset(v[n] for v in pool if len(v) > n and v.startswith(buf)), buf in pool


def _item_text(item: tuple, bind: tuple) -> str:
    return item[1] if item[0] == "lit" else dict(bind)[item[1]]


def _expand(state, out: set) -> None:
    """Add `state` = (template, item, consumed text of the item, bindings) to `out`, following every
    way the current item can be complete (epsilon moves)."""
    t, k, buf, bind = state
    items = message_templates()[t]
    if k == len(items):
        out.add(state)
        return
    item = items[k]
    if item[0] != "slot":
        if len(buf) < len(_item_text(item, bind)):
            out.add(state)
        else:
            _expand((t, k + 1, "", bind), out)
        return
    done = bind + ((item[1], buf),)
    if item[2] == NUMBER:
        out.add(state)  # a number can always take another digit
        if _WHOLE_NUMBER.fullmatch(buf):
            _expand((t, k + 1, "", done), out)
        return
    chars, whole = _pool_state(_pool_key(item[2]), buf)
    if chars:
        out.add(state)
    if whole:
        _expand((t, k + 1, "", done), out)


def _next_chars(state) -> frozenset:
    t, k, buf, bind = state
    items = message_templates()[t]
    if k == len(items):
        return frozenset([_END])
    item = items[k]
    if item[0] != "slot":
        return frozenset(_item_text(item, bind)[len(buf)])
    if item[2] == NUMBER:
        return _number_next(buf)
    return _pool_state(_pool_key(item[2]), buf)[0]


@functools.lru_cache(maxsize=None)
def _number_next(buf: str) -> frozenset:
    """Characters that can extend `buf`, a prefix of a JSON number (-?digits, optionally .digits)."""
    nxt = set("0123456789")
    if not buf:
        nxt.add("-")
    elif buf[-1].isdigit() and "." not in buf:
        nxt.add(".")
    return frozenset(nxt)


def _in_slot(state) -> bool:
    t, k, _, _ = state
    items = message_templates()[t]
    return k < len(items) and items[k][0] == "slot"


@functools.lru_cache(maxsize=1 << 16)
def needs_input_kinds(content: str) -> str:
    """`needs_input` with the kind of every open character: '0' determined by the text before it;
    'v' open, and every way to go on is inside a value (which city, which digit: the value is
    chosen); 't' open where the template itself is chosen (call or answer, which tool's phrase, one
    or two answer sentences, where a number ends). len(content) + 1 characters, the last for the end
    of the message. Raises ValueError for text the generator cannot write. Cached: the report asks
    for every message twice (the needs-input truth, then its split by kind)."""
    states: set = set()
    for t in range(len(message_templates())):
        _expand((t, 0, "", ()), states)
    out = []
    for i, ch in enumerate(content):
        nexts = [(s, _next_chars(s)) for s in states]
        opts = frozenset().union(*(n for _, n in nexts))
        if ch not in opts:
            raise ValueError(f"not a demo assistant message: {content[:i + 1]!r} cannot continue with {ch!r}")
        out.append("0" if len(opts) == 1 else "v" if all(_in_slot(s) for s, _ in nexts) else "t")
        new: set = set()
        for (t, k, buf, bind), n in nexts:
            if ch in n:
                _expand((t, k, buf + ch, bind), new)
        states = new
    opts = frozenset().union(*(_next_chars(s) for s in states))
    if _END not in opts:
        raise ValueError(f"not a demo assistant message: {content!r} is incomplete")
    out.append("0" if len(opts) == 1 else "t")
    return "".join(out)


def needs_input(content: str) -> str:
    """The third truth of one assistant message: one '0'/'1' per content character, plus one for the
    end of the message (its end-of-turn token), so len(content) + 1 characters.

    '1' iff the message's own earlier text does not determine the character: among all messages the
    generator can write (`message_templates`: every tool, every value of every pool) that begin with
    the same text, more than one next character (or the end) is possible. A value the template
    copies from earlier in the message (the Action Input repeating the Thought) is determined. Raises
    ValueError for text the generator cannot write. `needs_input_kinds` splits the '1's into value
    choices and template choices."""
    return needs_input_kinds(content).replace("v", "1").replace("t", "1")
