"""Chat JSONL readers: both formats, stable ids, and errors that name file, line and field."""

from __future__ import annotations

import json
import os
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rft_ds.data.formats import iter_conversations, parse_sample, read_conversations
from rft_ds.errors import DataError


def write(tmp_path, lines, name="data.jsonl"):
    p = tmp_path / name
    p.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines), encoding="utf-8")
    return p


OPENAI = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                       {"role": "assistant", "content": "A1"}, {"role": "tool", "content": "T"},
                       {"role": "assistant", "content": "A2"}]}


def test_openai_parse_and_default_ids(tmp_path):
    p = write(tmp_path, [OPENAI, "", "   ", {**OPENAI, "id": "mine"}, OPENAI], name="chats.v1.jsonl")
    convs = read_conversations(p)
    assert [c.id for c in convs] == ["chats.v1-1", "mine", "chats.v1-5"]  # blank lines skipped, numbering kept
    assert [c.line for c in convs] == [1, 4, 5]
    assert all(c.path == str(p) for c in convs)
    assert convs[0].messages == OPENAI["messages"]
    assert convs[0].loss_message_indices() == [2, 4]
    # stable: reading again gives the same ids
    assert [c.id for c in read_conversations(p)] == [c.id for c in convs]


def test_integer_id_becomes_string(tmp_path):
    assert read_conversations(write(tmp_path, [{**OPENAI, "id": 7}]))[0].id == "7"


def test_sharegpt_role_mapping(tmp_path):
    row = {"id": "g", "conversations": [
        {"from": "system", "value": "S"}, {"from": "human", "value": "H"},
        {"from": "function_call", "value": "{\"name\": \"f\"}"}, {"from": "observation", "value": "O"},
        {"from": "gpt", "value": "G"}, {"from": "user", "value": "U"}, {"from": "function", "value": "F"},
        {"from": "assistant", "value": "A"}, {"from": "tool", "value": "T"}, {"from": "gpt", "value": "G2"}]}
    (c,) = read_conversations(write(tmp_path, [row]))
    assert [m["role"] for m in c.messages] == ["system", "user", "assistant", "tool", "assistant", "user", "tool",
                                               "assistant", "tool", "assistant"]
    assert [m["content"] for m in c.messages] == [t["value"] for t in row["conversations"]]
    assert set(c.messages[0]) == {"role", "content"}
    assert c.loss_message_indices() == [2, 4, 7, 9]  # function_call is trained like any assistant turn


def test_streaming_stops_at_first_bad_line(tmp_path):
    p = write(tmp_path, [OPENAI, "{oops", OPENAI])
    it = iter_conversations(p)
    assert next(it).id == "data-1"
    with pytest.raises(DataError):
        next(it)


def expect_error(path, line, field, *more):
    """DataError whose message names the path, 'path:line' and the field."""
    with pytest.raises(DataError) as ei:
        read_conversations(path)
    msg = str(ei.value)
    assert str(path) in msg
    if line is not None:
        assert f"{path}:{line}:" in msg and ei.value.line == line
    if field is not None:
        assert f"'{field}'" in msg and ei.value.field == field
    for m in more:
        assert m in msg, msg
    return ei.value


A = {"role": "assistant", "content": "ok"}
U = {"role": "user", "content": "hi"}


@pytest.mark.parametrize("bad,field,words", [
    ("{\"messages\": [", None, ["malformed JSON"]),
    ("[1, 2]", None, ["JSON object", "list"]),
    ("\"text\"", None, ["JSON object"]),
    ({"id": "x", "turns": []}, "messages", ["missing"]),
    ({"messages": []}, "messages", ["non-empty"]),
    ({"conversations": []}, "conversations", ["non-empty"]),
    ({"messages": "hi"}, "messages", ["non-empty list"]),
    ({"messages": [U, "hi"]}, "messages[1]", ["object"]),
    ({"messages": [U, {"role": "robot", "content": "x"}, A]}, "messages[1].role", ["robot"]),
    ({"messages": [U, {"content": "x"}, A]}, "messages[1].role", ["unknown role"]),
    ({"messages": [U, {"role": ["assistant"], "content": "x"}, A]}, "messages[1].role", ["unknown role"]),
    ({"conversations": [{"from": "bot", "value": "x"}]}, "conversations[0].from", ["bot"]),
    ({"messages": [U, {"role": "assistant", "content": 3}]}, "messages[1].content", ["string", "int"]),
    ({"messages": [U, {"role": "assistant"}]}, "messages[1].content", ["string"]),
    ({"conversations": [{"from": "human", "value": None}, {"from": "gpt", "value": "x"}]},
     "conversations[0].value", ["string"]),
    ({"messages": [U, {"role": "tool", "content": "t"}]}, "messages", ["no assistant turn"]),
    ({"messages": [U, {"role": "assistant", "content": " \n "}]}, "messages[1].content", ["empty assistant"]),
    ({"conversations": [{"from": "human", "value": "h"}, {"from": "gpt", "value": ""}]},
     "conversations[1].value", ["empty assistant"]),
    ({"id": "", "messages": [U, A]}, "id", ["non-empty"]),
    ({"id": True, "messages": [U, A]}, "id", []),
    ({"id": 1.5, "messages": [U, A]}, "id", []),
])
def test_bad_line_names_path_line_field(tmp_path, bad, field, words):
    p = write(tmp_path, [OPENAI, "", bad])
    expect_error(p, 3, field, *words)


def test_duplicate_ids(tmp_path):
    p = write(tmp_path, [{**OPENAI, "id": "a"}, {**OPENAI, "id": "b"}, {**OPENAI, "id": "a"}])
    e = expect_error(p, 3, "id", "duplicate", "'a'", "line 1")
    # an explicit id that collides with a default one is a duplicate too
    p = write(tmp_path, [{**OPENAI, "id": "d-2"}, OPENAI], name="d.jsonl")
    expect_error(p, 2, "id", "duplicate")
    assert e.path == str(tmp_path / "data.jsonl")


def test_empty_and_missing_files(tmp_path):
    p = write(tmp_path, ["", "  "], name="empty.jsonl")
    expect_error(p, None, None, "empty file")
    (tmp_path / "zero.jsonl").write_text("")
    expect_error(tmp_path / "zero.jsonl", None, None, "empty file")
    expect_error(tmp_path / "nope.jsonl", None, None, "not found")


def test_not_utf8(tmp_path):
    p = tmp_path / "latin.jsonl"
    p.write_bytes(b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n')
    expect_error(p, None, None, "UTF-8")


# ------------------------------------------------------------------ fuzz

json_scalar = st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=5)
json_value = st.recursive(json_scalar, lambda ch: st.lists(ch, max_size=3) | st.dictionaries(st.text(max_size=6), ch, max_size=3),
                          max_leaves=8)
role = st.sampled_from(["system", "user", "assistant", "tool", "human", "gpt", "function_call", "observation",
                        "robot", ""]) | json_value
content = st.sampled_from(["hi", "", "  ", "x y"]) | json_value
turn = st.fixed_dictionaries({}, optional={"role": role, "content": content, "from": role, "value": content}) | json_value
turns = st.lists(turn, max_size=4) | json_value
junk_sample = st.fixed_dictionaries({}, optional={"messages": turns, "conversations": turns,
                                                  "id": st.text(max_size=3) | json_value}) | json_value
# near-valid samples: plausible turns (mostly parse), with one turn or the id sometimes replaced by junk
good_role = st.sampled_from(["system", "user", "assistant", "assistant", "tool"])
good_turn = st.fixed_dictionaries({"role": good_role, "content": st.sampled_from(["hi", "x y", "", " "])})
sharegpt_turn = st.fixed_dictionaries({"from": st.sampled_from(["human", "gpt", "function_call", "observation"]),
                                       "value": st.sampled_from(["hi", "x", ""])})


@st.composite
def near_valid(draw):
    sharegpt = draw(st.booleans())
    ts = draw(st.lists(sharegpt_turn if sharegpt else good_turn, min_size=1, max_size=5))
    if draw(st.booleans()):
        ts[draw(st.integers(0, len(ts) - 1))] = draw(turn)
    obj = {"conversations" if sharegpt else "messages": ts}
    if draw(st.booleans()):
        obj["id"] = draw(st.text(max_size=3) | json_value)
    return obj


sample = near_valid() | junk_sample


@settings(max_examples=300, deadline=None)
@given(sample)
def test_fuzz_parse_sample_only_raises_data_error(obj):
    try:
        conv = parse_sample(obj, "f.jsonl", 9)
    except DataError as e:
        assert "f.jsonl:9" in str(e)
        return
    assert conv.loss_message_indices()
    assert all(m["role"] in ("system", "user", "assistant", "tool") and isinstance(m["content"], str)
               for m in conv.messages)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(sample.map(json.dumps) | st.text(max_size=20), min_size=0, max_size=4), st.data())
def test_fuzz_files_only_raise_data_error(lines, data):
    # mutate: cut some lines short, so half-written JSON shows up too
    lines = [l[: data.draw(st.integers(0, len(l)))] if data.draw(st.booleans()) else l for l in lines]
    fd, path = tempfile.mkstemp(suffix=".jsonl")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogatepass") as f:
            f.write("\n".join(lines))
        try:
            read_conversations(path)
        except DataError as e:
            assert path in str(e)
    finally:
        os.unlink(path)


def test_deeply_nested_line_is_a_data_error(tmp_path):
    p = write(tmp_path, [OPENAI, "[" * 100000])
    expect_error(p, 2, None, "malformed JSON")


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(OPENAI).encode() + b"\n" + json.dumps(OPENAI).encode() + b"\n")
    assert [c.id for c in read_conversations(p)] == ["bom-1", "bom-2"]
