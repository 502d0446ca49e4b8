import io
import json
from pathlib import Path

import pytest

from rft_ds.data import records
from rft_ds.tools import convert as cv
from rft_ds.cli import main
from rft_ds.data.formats import read_conversations
from rft_ds.errors import DataError
from rft_ds.tools.toolcalls import parse_tool_calls, parse_turn

FIX = Path(__file__).parent / "fixtures"
TOOLBENCH = FIX / "toolbench_small.json"
APIGEN = FIX / "apigen_small.json"
SHAREGPT = FIX / "sharegpt_small.jsonl"


def rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# ---------------------------------------------------------------- ToolBench

def test_toolbench(tmp_path):
    out = tmp_path / "tb.jsonl"
    st = cv.convert("toolbench", TOOLBENCH, out)
    assert (st.records, st.converted, st.renamed_ids) == (8, 3, 1)
    assert st.skipped == {"unknown role": 1, "empty assistant turn": 1, "missing field 'conversations'": 1,
                          "no assistant turn": 1, "record is not a JSON object": 1}
    r = rows(out)
    assert [x["id"] for x in r] == ["Step 2: What is the weather in Paris?",
                                    "Step 2: Compare the weather in Oslo and Rome.",
                                    "Step 2: What is the weather in Paris?#2"]
    roles = [m["role"] for m in r[1]["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "tool", "assistant"]
    # every assistant turn kept, whitespace around contents stripped, ReAct calls intact
    a = [m["content"] for m in r[1]["messages"] if m["role"] == "assistant"]
    assert a[0].startswith("Thought: First Oslo.\nAction: get_weather_for_weatherapi\nAction Input: {")
    assert parse_tool_calls(a[0]) == [{"name": "get_weather_for_weatherapi", "arguments": {"city": "Oslo"}}]
    assert parse_tool_calls(a[2])[0]["name"] == "Finish"
    assert r[0]["messages"][1]["content"] == "What is the weather in Paris?\nBegin!"
    assert r[0]["messages"][3]["content"].startswith('{"error": ""')
    convs = read_conversations(out)  # the training reader accepts the output
    assert len(convs) == 3


def test_toolbench_skip_examples_name_positions(tmp_path):
    st = cv.convert("toolbench", TOOLBENCH, tmp_path / "o.jsonl")
    ex = st.examples["unknown role"][0]
    assert ex.startswith(f"{TOOLBENCH}:60 (record 3)") and "'observer'" in ex
    assert st.examples["record is not a JSON object"][0].startswith(f"{TOOLBENCH}:136 (record 8)")


# ---------------------------------------------------------------- APIGen

APIGEN_SKIPS = {"bad JSON in 'tools'": 1, "bad JSON in 'answers'": 1, "missing field 'query'": 1,
                "answer calls a tool not in 'tools'": 1, "call arguments are not a JSON object": 1}


def test_apigen_json(tmp_path):
    out = tmp_path / "ap.jsonl"
    st = cv.convert("apigen", APIGEN, out)
    assert (st.records, st.converted) == (9, 4)
    assert st.skipped == APIGEN_SKIPS
    r = rows(out)
    assert [x["id"] for x in r] == ["0", "1", "2", "8"]
    sys_msg, user, asst = r[1]["messages"]
    assert sys_msg["role"] == "system" and user == {"role": "user", "content": "What is 2 plus 40?"}
    assert sys_msg["content"] == (
        "You are a helpful assistant that can call tools. You have access to the following tools:\n"
        '{"name": "add", "description": "Add two integers.", "parameters": {"a": {"type": "int", "description": '
        '"first"}, "b": {"type": "int", "description": "second"}}}\n'
        '{"name": "get_weather", "description": "Current weather of a city.", "parameters": {"city": {"type": '
        '"str", "description": "city name"}, "units": {"type": "str", "description": "metric or imperial", '
        '"default": "metric"}}}\n\n'
        'To call tools, reply with only a JSON list of calls: [{"name": "<tool name>", "arguments": '
        '{"<argument name>": <value>, ...}}, ...]')
    assert asst == {"role": "assistant", "content": '[{"name": "add", "arguments": {"a": 2, "b": 40}}]'}
    src = json.loads(APIGEN.read_text())
    for row in r[:3]:
        ref = json.loads(src[int(row["id"])]["answers"])
        assert parse_tool_calls(row["messages"][2]["content"]) == ref
    # an empty answers list is kept in json format: the model learns to call nothing
    assert r[3]["messages"][2]["content"] == "[]" and parse_tool_calls("[]") == []
    read_conversations(out)


def test_apigen_react(tmp_path):
    out = tmp_path / "ap.jsonl"
    st = cv.convert("apigen", APIGEN, out, apigen_format="react")
    assert st.converted == 3
    assert st.skipped == {**APIGEN_SKIPS, "no call in 'answers' (react format cannot say 'no call')": 1}
    r = rows(out)
    assert r[0]["messages"][2]["content"] == (
        'Action: live_giveaways_by_type\nAction Input: {"type": "beta"}\n'
        'Action: live_giveaways_by_type\nAction Input: {"type": "game"}')
    assert r[0]["messages"][0]["content"].endswith(
        "To call a tool, reply with one block per call:\nAction: <tool name>\n"
        "Action Input: <the arguments as a JSON object>")
    assert parse_turn(r[0]["messages"][2]["content"]).form == "react"
    cv.convert("apigen", APIGEN, tmp_path / "j.jsonl")
    for jr, rr in zip(rows(tmp_path / "j.jsonl"), r):  # both formats encode the same calls
        assert parse_tool_calls(jr["messages"][2]["content"]) == parse_tool_calls(rr["messages"][2]["content"])


def test_apigen_jsonl_input_and_parsed_fields(tmp_path):
    src = json.loads(APIGEN.read_text())
    jl = tmp_path / "ap.jsonl"
    jl.write_text("".join(json.dumps(r) + "\n" for r in src))
    cv.convert("apigen", jl, tmp_path / "a.jsonl")
    cv.convert("apigen", APIGEN, tmp_path / "b.jsonl")
    assert rows(tmp_path / "a.jsonl") == rows(tmp_path / "b.jsonl")
    # tools / answers already parsed (some redistributions) work the same
    parsed = [{**r, "tools": json.loads(r["tools"]), "answers": json.loads(r["answers"])} for r in src[:3]]
    pj = tmp_path / "parsed.json"
    pj.write_text(json.dumps(parsed))
    cv.convert("apigen", pj, tmp_path / "c.jsonl")
    assert rows(tmp_path / "c.jsonl") == rows(tmp_path / "b.jsonl")[:3]


# ---------------------------------------------------------------- ShareGPT

def test_sharegpt(tmp_path):
    out = tmp_path / "sg.jsonl"
    st = cv.convert("sharegpt", SHAREGPT, out)
    assert (st.records, st.converted) == (8, 3)
    assert st.skipped == {"malformed JSON line": 1, "unknown role": 1, "empty assistant turn": 1,
                          "starts with an assistant turn (no context)": 1,
                          'turn is not {"from": str, "value": str}': 1}
    r = rows(out)
    assert r[0] == {"id": "sharegpt_small-1", "messages": [
        {"role": "user", "content": "Hi, what can you do?"},
        {"role": "assistant", "content": "I can answer questions and call tools."}]}
    m = r[1]["messages"]
    assert [x["role"] for x in m] == ["system", "user", "assistant", "tool", "assistant"]
    assert m[0]["content"].startswith("You are a weather bot.\n\nYou have access to the following tools:\n{\"name\": "
                                      "\"get_weather\"")
    assert parse_tool_calls(m[2]["content"]) == [{"name": "get_weather", "arguments": {"city": "Nice"}}]
    assert r[2]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert st.examples["malformed JSON line"][0].startswith(f"{SHAREGPT}:4 (record 4)")
    read_conversations(out)


# ---------------------------------------------------------------- bad files

@pytest.mark.parametrize("name,line,problem", [
    ("toolbench_small_not_json.txt", 1, "not JSON: starts with 'i'"),
    ("apigen_small_truncated.json", 22, "truncated"),
    ("apigen_small_syntax_error.json", 15, "not valid JSON"),
])
def test_bad_files_are_data_errors(tmp_path, name, line, problem):
    out = tmp_path / "o.jsonl"
    with pytest.raises(DataError) as ei:
        cv.convert("apigen", FIX / name, out)
    assert ei.value.line == line and problem in str(ei.value)
    assert not out.exists() and not list(tmp_path.iterdir())  # atomic: nothing left behind


def test_other_bad_inputs(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("  \n\n")
    with pytest.raises(DataError, match="empty file"):
        cv.convert("apigen", empty, tmp_path / "o.jsonl")
    with pytest.raises(DataError, match="file not found"):
        cv.convert("apigen", tmp_path / "missing.json", tmp_path / "o.jsonl")
    pretty = tmp_path / "one.json"
    pretty.write_text('{\n  "id": 1\n}\n')
    with pytest.raises(DataError, match="not JSON Lines"):
        cv.convert("apigen", pretty, tmp_path / "o.jsonl")
    # the wrong --from: every record skipped -> error, no output
    with pytest.raises(DataError, match="no record converted"):
        cv.convert("sharegpt", APIGEN, tmp_path / "o.jsonl")
    assert not (tmp_path / "o.jsonl").exists()


def test_cli(tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    assert main(["convert", "--from", "apigen", str(APIGEN), "--output", str(out), "--apigen-format", "react"]) == 0
    text = capsys.readouterr().out
    assert "9 records read, 3 converted" in text and "6 skipped" in text
    assert "skipped 1: bad JSON in 'tools'" in text and f"e.g. {APIGEN}:20 (record 4)" in text
    assert main(["convert", "--from", "toolbench", str(FIX / "toolbench_small_not_json.txt"),
                 "--output", str(out)]) == 2
    assert "not JSON" in capsys.readouterr().err


# ---------------------------------------------------------------- streaming reader

def test_array_reader_small_chunks(tmp_path, monkeypatch):
    """Elements straddling chunk boundaries (strings, numbers, escapes) decode like json.load."""
    data = [{"id": i, "x": "é\\\"" * (i % 7), "n": 10 ** (i % 12) + 0.5, "t": [True, None, -1e-3]}
            for i in range(200)] + [12345678901234567890, "tail"]
    p = tmp_path / "a.json"
    p.write_text("\n[\n" + ",\n".join(json.dumps(d, ensure_ascii=False) for d in data) + "\n]\n")
    for chunk in (1, 3, 7, 64):
        monkeypatch.setattr(records, "CHUNK_CHARS", chunk)
        recs = list(cv.iter_records(p))
        assert [r.value for r in recs] == data
        assert [r.line for r in recs] == list(range(3, 3 + len(data)))
        assert [r.number for r in recs] == list(range(1, len(data) + 1))


def test_array_reader_memory_is_bounded():
    record = json.dumps({"conversations": [{"from": "user", "value": "x" * 100}]})
    text = "[" + ",".join([record] * 5000) + "]"  # ~0.6 MB on one line
    reader = records._ArrayReader(io.StringIO(text), "mem.json", chunk=4096)
    reader.buf = reader.f.read(10)
    peak, n = 0, 0
    for _ in reader:
        peak = max(peak, len(reader.buf))
        n += 1
    assert n == 5000 and peak <= 2 * 4096 + 2 * len(record)


def test_array_reader_huge_element():
    big = {"id": "big", "value": "y" * 300_000}
    text = json.dumps([big, {"id": "small"}])
    reader = records._ArrayReader(io.StringIO(text), "mem.json", chunk=1000)
    reader.buf = reader.f.read(1)
    assert [r.value for r in reader] == [big, {"id": "small"}]
