"""Parse tool calls out of an assistant turn, and compare them. Pure functions, stdlib only.

Recognised forms (leading/trailing whitespace of the turn is ignored):

ReAct (ToolBench, `convert --apigen-format react`), one or more blocks:
    Thought: ...                      (optional, any text before/between/after blocks is ignored)
    Action: <name>                    (at the start of a line)
    Action Input: <JSON value>        (only whitespace between the Action line and `Action Input:`)
  Text after each Action Input's JSON value (up to the next `Action:` line) is tolerated.
  ToolBench's `Action: Finish` is returned as an ordinary call named `Finish`.

Final answer (ReAct): a `Final Answer: ...` line and no `Action:` line -> no call ([]); the text
after the marker is kept as `ParsedTurn.final_answer`. A turn with both is a parse failure.

JSON (APIGen/xLAM, `convert --apigen-format json`): the whole turn is one JSON value, optionally in
a ```json code fence: a list of calls `[{"name": ..., "arguments": {...}}, ...]` or one call
`{"name": ..., "arguments": {...}}`. Nothing but whitespace may follow the value. `"parameters"` is
accepted for `"arguments"` (Llama 3.1 style), an OpenAI `{"type": "function", "function": {...}}`
wrapper is unwrapped, a missing `arguments` means `{}`, and arguments given as a JSON string
(OpenAI style) are parsed.

Hermes/Qwen tags: one or more `<tool_call>{"name": ..., "arguments": ...}</tool_call>` blocks.

Anything else is plain text: no call ([]). A turn that starts like a call (an `Action:` line, an
`Action Input:`, a `<tool_call>` tag, or a leading `[`/`{`) but cannot be parsed is a parse
failure: `parse_tool_calls` returns None.

Comparison (`calls_match`): the same number of calls, in the same order, with equal names and
arguments equal as parsed JSON values (`json_equal`): object key order and whitespace do not
matter; list order does; numbers compare by value (1 == 1.0); booleans are not numbers
(true != 1); strings compare exactly.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

_DECODER = json.JSONDecoder()

_ACTION_RE = re.compile(r"^[ \t]*Action[ \t]*:[ \t]*(.*?)[ \t]*$", re.M)
_ACTION_INPUT_RE = re.compile(r"\s*Action[ \t]+Input[ \t]*:\s*")
_ANY_ACTION_INPUT_RE = re.compile(r"^[ \t]*Action[ \t]+Input[ \t]*:", re.M)
_FINAL_RE = re.compile(r"^[ \t]*Final[ \t]+Answer[ \t]*:[ \t]*", re.M)
_TAG_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)
_FENCE_RE = re.compile(r"\A```[A-Za-z0-9_-]*[ \t]*\n(.*?)\n?[ \t]*```\Z", re.S)


@dataclass
class ParsedTurn:
    """What one assistant turn says.

    calls: the tool calls in order ([] = no call), or None when the turn looks like a call but does
        not parse.
    form: "react", "json", "tool_call_tag", "final_answer", "text" (no call), or "error".
    final_answer: the text after `Final Answer:` when form == "final_answer", else None.
    error: why parsing failed (form == "error"), else None.
    """

    calls: list[dict] | None
    form: str
    final_answer: str | None = None
    error: str | None = None


def _fail(why: str) -> ParsedTurn:
    return ParsedTurn(calls=None, form="error", error=why)


def _normalise_arguments(value):
    """OpenAI-style arguments are a JSON string; compare them as the value they encode."""
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        if isinstance(parsed, (dict, list)):
            return parsed
    return value


def _call_from_object(obj) -> dict | None:
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict) and "name" not in obj:
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return None
    if "arguments" in obj:
        args = obj["arguments"]
    elif "parameters" in obj:
        args = obj["parameters"]
    else:
        args = {}
    return {"name": name.strip(), "arguments": _normalise_arguments(args)}


def _calls_from_json_value(value) -> list[dict] | None:
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        call = _call_from_object(item)
        if call is None:
            return None
        calls.append(call)
    return calls


def _parse_json_form(text: str) -> ParsedTurn:
    fence = _FENCE_RE.match(text)
    if fence:
        text = fence.group(1).strip()
    try:
        value, end = _DECODER.raw_decode(text)
    except json.JSONDecodeError as e:
        return _fail(f"invalid JSON: {e.msg} at char {e.pos}")
    if text[end:].strip():
        return _fail(f"text after the JSON value at char {end}")
    calls = _calls_from_json_value(value)
    if calls is None:
        return _fail("JSON is not a call or a list of calls ({\"name\": ..., \"arguments\": ...})")
    return ParsedTurn(calls=calls, form="json")


def _parse_react(text: str, actions: list[re.Match]) -> ParsedTurn:
    calls = []
    for i, m in enumerate(actions):
        name = m.group(1)
        if not name:
            return _fail(f"empty action name at char {m.start()}")
        mi = _ACTION_INPUT_RE.match(text, m.end())
        if not mi:
            return _fail(f"'Action: {name}' is not followed by 'Action Input:'")
        try:
            value, end = _DECODER.raw_decode(text, mi.end())
        except json.JSONDecodeError as e:
            return _fail(f"Action Input of '{name}' is not JSON: {e.msg} at char {e.pos}")
        if i + 1 < len(actions) and end > actions[i + 1].start():
            return _fail(f"Action Input of '{name}' runs into the next Action")
        calls.append({"name": name, "arguments": _normalise_arguments(value)})
    return ParsedTurn(calls=calls, form="react")


def _parse_tags(text: str) -> ParsedTurn:
    blocks = _TAG_RE.findall(text)
    if not blocks or text.count("<tool_call>") != len(blocks):
        return _fail("unterminated <tool_call> tag")
    calls = []
    for b in blocks:
        try:
            value = json.loads(b)
        except json.JSONDecodeError as e:
            return _fail(f"<tool_call> body is not JSON: {e.msg}")
        call = _call_from_object(value)
        if call is None:
            return _fail("<tool_call> body is not a call ({\"name\": ..., \"arguments\": ...})")
        calls.append(call)
    return ParsedTurn(calls=calls, form="tool_call_tag")


def parse_turn(text: str) -> ParsedTurn:
    """Classify one assistant turn and extract its tool calls (see the module docstring)."""
    if not isinstance(text, str):
        return _fail(f"not a string: {type(text).__name__}")
    text = text.strip()
    if "<tool_call>" in text:
        return _parse_tags(text)
    actions = list(_ACTION_RE.finditer(text))
    final = _FINAL_RE.search(text)
    if actions:
        if final:
            return _fail("both 'Action:' and 'Final Answer:' in one turn")
        return _parse_react(text, actions)
    if _ANY_ACTION_INPUT_RE.search(text):
        return _fail("'Action Input:' without an 'Action:' line")
    if final:
        return ParsedTurn(calls=[], form="final_answer", final_answer=text[final.end():].strip())
    if text.startswith(("[", "{", "```")):
        if text.startswith("```") and not _FENCE_RE.match(text):
            return ParsedTurn(calls=[], form="text")  # a code block that is not a whole-turn fence
        return _parse_json_form(text)
    return ParsedTurn(calls=[], form="text")


def parse_tool_calls(text: str) -> list[dict] | None:
    """[{"name": str, "arguments": <JSON value>}, ...] in order; [] for no call (plain text or a
    `Final Answer:` turn, see `parse_turn(text).final_answer`); None for a parse failure."""
    return parse_turn(text).calls


def is_final_answer(text: str) -> bool:
    return parse_turn(text).form == "final_answer"


def json_equal(a, b) -> bool:
    """Equality of parsed JSON values: key order free, booleans distinct from numbers, 1 == 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    if a is None or b is None:
        return a is None and b is None
    return type(a) is type(b) and a == b


def names_match(pred: list[dict] | None, ref: list[dict] | None) -> bool:
    """The same function names in the same order (None never matches)."""
    if pred is None or ref is None:
        return False
    return [c["name"] for c in pred] == [c["name"] for c in ref]


def arguments_match(pred: list[dict] | None, ref: list[dict] | None) -> bool:
    """The same number of calls, call i's arguments equal as JSON values (names not compared)."""
    if pred is None or ref is None or len(pred) != len(ref):
        return False
    return all(json_equal(p["arguments"], r["arguments"]) for p, r in zip(pred, ref))


def calls_match(pred: list[dict] | None, ref: list[dict] | None) -> bool:
    """Names and arguments all equal, call order significant (None never matches)."""
    return names_match(pred, ref) and arguments_match(pred, ref)
