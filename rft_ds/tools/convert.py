"""`rft-ds convert`: ToolBench / APIGen (xLAM) / ShareGPT -> the project's OpenAI-messages JSONL.

Output, one object per line: {"id": str, "messages": [{"role": "system"|"user"|"assistant"|"tool",
"content": str}]}. See docs/bring-your-data.md for each mapping, the system-message wording and the
skip reasons.

Input is streamed: a file whose first non-blank character is `[` is read as one JSON array, element
by element (`json.JSONDecoder.raw_decode` over a buffered text reader; the released ToolBench and
APIGen files are single multi-GB arrays); a file starting with `{` is read as JSON Lines. A file
that is neither, or an array that is not valid JSON, is a DataError (an array cannot be resynced
after a syntax error); a JSONL line that is not JSON is skipped and counted. Records of the wrong
shape are skipped and counted by reason; the first few positions of each reason are printed.
The output is written atomically (nothing is written when no record converts).
"""

from __future__ import annotations

import argparse
import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from rft_ds.data.records import iter_records
from rft_ds.errors import ConfigError, DataError

SOURCES = ("toolbench", "apigen", "sharegpt")
APIGEN_FORMATS = ("json", "react")
EXAMPLES_PER_REASON = 3

# The system message of an APIGen sample: TOOLS_INTRO, one tool per line as compact JSON, a blank
# line, then the instruction for the chosen output format.
TOOLS_INTRO = "You are a helpful assistant that can call tools. You have access to the following tools:"
APIGEN_INSTRUCTIONS = {
    "json": ('To call tools, reply with only a JSON list of calls: '
             '[{"name": "<tool name>", "arguments": {"<argument name>": <value>, ...}}, ...]'),
    "react": ("To call a tool, reply with one block per call:\n"
              "Action: <tool name>\n"
              "Action Input: <the arguments as a JSON object>"),
}
# ShareGPT samples with a top-level "tools" field get this line plus one tool per line appended to
# their system message (after the top-level "system" text, if any, and a blank line).
SHAREGPT_TOOLS_INTRO = "You have access to the following tools:"

TOOLBENCH_ROLES = {"system": "system", "user": "user", "assistant": "assistant", "function": "tool"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant", "function_call": "assistant",
                  "observation": "tool"}

class Skip(Exception):
    """A record that cannot be converted: `reason` is the class it is counted under."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


# ---------------------------------------------------------------- record converters

def _require_str(rec: dict, key: str) -> str:
    if key not in rec or rec[key] is None:
        raise Skip(f"missing field '{key}'")
    v = rec[key]
    if not isinstance(v, str):
        raise Skip(f"field '{key}' is not a string", type(v).__name__)
    return v


def _json_field(rec: dict, key: str):
    """A field holding JSON: a JSON string (the released APIGen files) or the parsed value."""
    if key not in rec or rec[key] is None:
        raise Skip(f"missing field '{key}'")
    v = rec[key]
    if isinstance(v, str):
        try:
            return json.loads(v)
        except json.JSONDecodeError as e:
            raise Skip(f"bad JSON in '{key}'", f"{e.msg} at char {e.pos}") from None
    return v


def _turns(rec: dict, roles: dict[str, str]) -> list[dict]:
    conv = rec.get("conversations")
    if conv is None:
        raise Skip("missing field 'conversations'")
    if not isinstance(conv, list) or not conv:
        raise Skip("'conversations' is not a non-empty list")
    out = []
    for i, t in enumerate(conv):
        if not isinstance(t, dict) or not isinstance(t.get("value"), str):
            raise Skip("turn is not {\"from\": str, \"value\": str}", f"conversations[{i}]")
        role = t.get("from")
        if role not in roles:
            raise Skip("unknown role", f"conversations[{i}].from = {role!r}")
        out.append({"role": roles[role], "content": t["value"]})
    return out


def _check_messages(messages: list[dict]) -> list[dict]:
    for m in messages:
        m["content"] = m["content"].strip()
    assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not assistant:
        raise Skip("no assistant turn")
    for i in assistant:
        if not messages[i]["content"]:
            raise Skip("empty assistant turn", f"messages[{i}]")
    if messages[0]["role"] == "assistant":
        raise Skip("starts with an assistant turn (no context)")
    return messages


def _tool_lines(tools) -> str:
    return "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)


def convert_toolbench(rec: dict, **_) -> list[dict]:
    """ToolBench `toolllama` training record: every turn kept, `function` -> `tool`."""
    return _check_messages(_turns(rec, TOOLBENCH_ROLES))


def convert_sharegpt(rec: dict, **_) -> list[dict]:
    """ShareGPT record; top-level `system` and `tools` (LLaMA-Factory) go into a system message."""
    messages = _turns(rec, SHAREGPT_ROLES)
    head = []
    system = rec.get("system")
    if system is not None and not isinstance(system, str):
        raise Skip("field 'system' is not a string", type(system).__name__)
    if system and system.strip():
        head.append(system.strip())
    if rec.get("tools") not in (None, "", []):
        tools = _json_field(rec, "tools")
        if not isinstance(tools, list):
            tools = [tools]
        head.append(SHAREGPT_TOOLS_INTRO + "\n" + _tool_lines(tools))
    if head:
        messages.insert(0, {"role": "system", "content": "\n\n".join(head)})
    return _check_messages(messages)


def apigen_system_message(tools: list[dict], apigen_format: str) -> str:
    return f"{TOOLS_INTRO}\n{_tool_lines(tools)}\n\n{APIGEN_INSTRUCTIONS[apigen_format]}"


def format_calls(calls: list[dict], apigen_format: str) -> str:
    """The assistant turn for a list of {"name", "arguments"} calls."""
    if apigen_format == "json":
        return json.dumps([{"name": c["name"], "arguments": c["arguments"]} for c in calls], ensure_ascii=False)
    return "\n".join(f"Action: {c['name']}\nAction Input: {json.dumps(c['arguments'], ensure_ascii=False)}"
                     for c in calls)


def convert_apigen(rec: dict, apigen_format: str = "json") -> list[dict]:
    """APIGen / xLAM function-calling record -> system (tools), user (query), assistant (calls)."""
    query = _require_str(rec, "query")
    tools = _json_field(rec, "tools")
    answers = _json_field(rec, "answers")
    if not isinstance(tools, list) or not all(isinstance(t, dict) and isinstance(t.get("name"), str)
                                              and t["name"] for t in tools):
        raise Skip("'tools' is not a list of {\"name\": str, ...}")
    if not isinstance(answers, list):
        raise Skip("'answers' is not a list of calls")
    names = {t["name"] for t in tools}
    calls = []
    for i, a in enumerate(answers):
        if not isinstance(a, dict) or not isinstance(a.get("name"), str) or not a["name"]:
            raise Skip("'answers' is not a list of calls", f"answers[{i}]")
        args = a.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                pass
        if not isinstance(args, dict):
            raise Skip("call arguments are not a JSON object", f"answers[{i}]")
        if a["name"] not in names:
            raise Skip("answer calls a tool not in 'tools'", f"answers[{i}].name = {a['name']!r}")
        calls.append({"name": a["name"], "arguments": args})
    if not calls and apigen_format == "react":
        raise Skip("no call in 'answers' (react format cannot say 'no call')")
    if not query.strip():
        raise Skip("empty 'query'")
    messages = [
        {"role": "system", "content": apigen_system_message(tools, apigen_format)},
        {"role": "user", "content": query},
        {"role": "assistant", "content": format_calls(calls, apigen_format)},
    ]
    return _check_messages(messages)


CONVERTERS = {"toolbench": convert_toolbench, "apigen": convert_apigen, "sharegpt": convert_sharegpt}


# ---------------------------------------------------------------- driver

@dataclass
class ConvertStats:
    records: int = 0
    converted: int = 0
    renamed_ids: int = 0
    skipped: "OrderedDict[str, int]" = field(default_factory=OrderedDict)
    examples: dict = field(default_factory=dict)  # reason -> ["path:line (record N): detail"]

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < EXAMPLES_PER_REASON:
            ex.append(where)

    def as_dict(self) -> dict:
        return {"records": self.records, "converted": self.converted, "skipped": dict(self.skipped),
                "renamed_duplicate_ids": self.renamed_ids, "examples": self.examples}

    def report(self, source: str, output: str) -> str:
        lines = [f"convert {source}: {self.records} records read, {self.converted} converted -> {output}, "
                 f"{self.n_skipped} skipped"]
        for reason, n in self.skipped.items():
            lines.append(f"  skipped {n}: {reason}")
            for ex in self.examples.get(reason, []):
                lines.append(f"      e.g. {ex}")
        if self.renamed_ids:
            lines.append(f"  {self.renamed_ids} duplicate ids renamed to '<id>#<n>'")
        return "\n".join(lines)


def _sample_id(rec: dict, number: int, stem: str, seen: set[str], stats: ConvertStats) -> str:
    sid = rec.get("id")
    if isinstance(sid, bool) or not isinstance(sid, (str, int)) or str(sid).strip() == "":
        sid = f"{stem}-{number}"
    sid = str(sid)
    if sid in seen:
        k = 2
        while f"{sid}#{k}" in seen:
            k += 1
        sid = f"{sid}#{k}"
        stats.renamed_ids += 1
    seen.add(sid)
    return sid


def convert(source: str, input_path: str | os.PathLike, output_path: str | os.PathLike,
            apigen_format: str = "json") -> ConvertStats:
    """Convert one file; returns the counts. Raises DataError for an unreadable input or when no
    record converts (then nothing is written)."""
    from rft_ds.data.formats import parse_sample
    from rft_ds.fsio import atomic_write, dumps_line

    if source not in CONVERTERS:
        raise ConfigError(f"--from must be one of {', '.join(SOURCES)}, got {source!r}")
    if apigen_format not in APIGEN_FORMATS:
        raise ConfigError(f"--apigen-format must be one of {', '.join(APIGEN_FORMATS)}, got {apigen_format!r}")
    input_path, output_path = str(input_path), str(output_path)
    if os.path.abspath(input_path) == os.path.abspath(output_path):
        raise ConfigError("--output must not be the input file")
    fn = CONVERTERS[source]
    stem = Path(input_path).stem
    stats, seen = ConvertStats(), set()
    with atomic_write(output_path) as out:
        for raw in iter_records(input_path):
            stats.records += 1
            where = f"{input_path}:{raw.line} (record {raw.number})"
            if raw.error is not None:
                stats.skip("malformed JSON line", f"{where}: {raw.error}")
                continue
            rec = raw.value
            try:
                if not isinstance(rec, dict):
                    raise Skip("record is not a JSON object", type(rec).__name__)
                messages = fn(rec, apigen_format=apigen_format)
            except Skip as s:
                rid = rec.get("id") if isinstance(rec, dict) else None
                detail = "; ".join(x for x in (f"id {rid!r}" if rid is not None else "", s.detail) if x)
                stats.skip(s.reason, where + (f": {detail}" if detail else ""))
                continue
            sample = {"id": _sample_id(rec, raw.number, stem, seen, stats), "messages": messages}
            parse_sample(sample, output_path, stats.converted + 1)  # the training reader must accept it
            out.write(dumps_line(sample))
            stats.converted += 1
        if stats.converted == 0:
            print(stats.report(source, output_path), flush=True)
            raise DataError(input_path, None, None, f"no record converted from {source} format "
                            f"({stats.records} read, all skipped)", f"is --from {source} the right format?")
    return stats


def run(args: argparse.Namespace) -> int:
    stats = convert(args.source, args.input, args.output, args.apigen_format)
    print(stats.report(args.source, args.output), flush=True)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert ToolBench / APIGen (xLAM) / ShareGPT data to OpenAI-messages JSONL",
                       description="Stream a ToolBench, APIGen (xLAM) or ShareGPT file (a JSON array or JSON Lines) "
                                   "into the project's JSONL format; malformed records are skipped and counted. "
                                   "See docs/bring-your-data.md.")
    p.add_argument("--from", dest="source", required=True, choices=SOURCES, help="input format")
    p.add_argument("input", help="input file: a JSON array or JSON Lines")
    p.add_argument("--output", required=True, help="output JSONL (written atomically)")
    p.add_argument("--apigen-format", choices=APIGEN_FORMATS, default="json",
                   help="APIGen assistant turn: a JSON list of calls (default) or ReAct Action/Action Input blocks")
    p.set_defaults(func=run)
