import pytest

from rft_ds.tools.toolcalls import (arguments_match, calls_match, is_final_answer, json_equal, names_match,
                              parse_tool_calls, parse_turn)


# ---------------------------------------------------------------- ReAct

def test_react_single_with_thought():
    text = ('\nThought: I need the weather.\nAction: get_weather\nAction Input: {\n  "city": "Paris",\n'
            '  "days": 3\n}')
    assert parse_tool_calls(text) == [{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}]
    assert parse_turn(text).form == "react"


def test_react_several_blocks_and_trailing_text():
    text = ("Action: a\nAction Input: {\"x\": 1}\nsome trailing words\n\n"
            "Action: b\nAction Input: {}   \n Observation: pending")
    assert parse_tool_calls(text) == [{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]


def test_react_tolerates_whitespace_variants():
    text = "  Action :   lookup  \n\n   Action   Input :\n  [1, 2]  "
    assert parse_tool_calls(text) == [{"name": "lookup", "arguments": [1, 2]}]


def test_react_toolbench_finish_is_a_call():
    text = ('Thought: done\nAction: Finish\nAction Input: {\n  "return_type": "give_answer",\n'
            '  "final_answer": "It is 20C."\n}')
    calls = parse_tool_calls(text)
    assert calls == [{"name": "Finish", "arguments": {"return_type": "give_answer", "final_answer": "It is 20C."}}]
    assert not is_final_answer(text)


@pytest.mark.parametrize("text,why", [
    ("Action: f\nAction Input: {'a': 1}", "not JSON"),          # python dict, not JSON
    ("Action: f\nAction Input: {\"a\": ", "not JSON"),           # truncated
    ("Action: f\nThought: hmm", "not followed"),                 # no Action Input
    ("Action:\nAction Input: {}", "empty action name"),
    ("Action Input: {\"a\": 1}", "without an 'Action:'"),
    ("Action: f\nAction Input: {}\nFinal Answer: 3", "both"),
])
def test_react_failures(text, why):
    p = parse_turn(text)
    assert p.calls is None and p.form == "error"
    assert why in p.error
    assert parse_tool_calls(text) is None


# ---------------------------------------------------------------- Final Answer / plain text

def test_final_answer_is_no_call_and_marked():
    text = "Thought: I know it now.\nFinal Answer: The capital is Paris.\n"
    p = parse_turn(text)
    assert p.calls == [] and p.form == "final_answer"
    assert p.final_answer == "The capital is Paris."
    assert parse_tool_calls(text) == []
    assert is_final_answer(text)


def test_plain_text_is_no_call():
    p = parse_turn("The weather in Paris is sunny.")
    assert p.calls == [] and p.form == "text" and p.final_answer is None
    assert parse_turn("   ").calls == []


def test_action_word_inside_a_sentence_is_not_a_call():
    assert parse_tool_calls("My next Action: is to wait. No tools needed.") == []


# ---------------------------------------------------------------- JSON forms

def test_json_list_and_object():
    assert parse_tool_calls('[{"name": "f", "arguments": {"a": 1}}, {"name": "g", "arguments": {}}]') == [
        {"name": "f", "arguments": {"a": 1}}, {"name": "g", "arguments": {}}]
    assert parse_tool_calls('{"name": "f", "arguments": {"a": [1, 2]}}') == [{"name": "f", "arguments": {"a": [1, 2]}}]
    assert parse_turn('{"name": "f", "arguments": {}}').form == "json"


def test_json_empty_list_is_no_call():
    p = parse_turn("[]")
    assert p.calls == [] and p.form == "json"


def test_json_variants_normalised():
    # "parameters" alias, missing arguments, OpenAI wrapper with string arguments, code fence
    assert parse_tool_calls('{"name": "f", "parameters": {"a": 1}}') == [{"name": "f", "arguments": {"a": 1}}]
    assert parse_tool_calls('{"name": "f"}') == [{"name": "f", "arguments": {}}]
    wrapped = '[{"type": "function", "function": {"name": "f", "arguments": "{\\"a\\": 1}"}}]'
    assert parse_tool_calls(wrapped) == [{"name": "f", "arguments": {"a": 1}}]
    assert parse_tool_calls('```json\n[{"name": "f", "arguments": {"a": 1}}]\n```') == [
        {"name": "f", "arguments": {"a": 1}}]


@pytest.mark.parametrize("text", [
    '[{"name": "f", "arguments": {"a": 1}}',          # truncated
    '{"name": "f", "arguments": {"a": 1}} and more',  # trailing text after a JSON turn
    '{"answer": 42}',                                 # JSON but not a call
    '[{"name": "f"}, 3]',                             # a list item that is not a call
    '[{"name": "", "arguments": {}}]',                # empty name
    "{name: f}",                                      # not JSON
])
def test_json_failures(text):
    assert parse_tool_calls(text) is None


# ---------------------------------------------------------------- <tool_call> tags

def test_tool_call_tags():
    text = ('I will look it up.\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>\n'
            '<tool_call>{"name": "g", "arguments": {}}</tool_call>')
    assert parse_tool_calls(text) == [{"name": "f", "arguments": {"a": 1}}, {"name": "g", "arguments": {}}]
    assert parse_tool_calls('<tool_call>{"name": "f"') is None
    assert parse_tool_calls("<tool_call>nope</tool_call>") is None


# ---------------------------------------------------------------- comparison

@pytest.mark.parametrize("a,b", [
    ('{"a": 1, "b": "x"}', '{ "b":"x","a":1 }'),
    ('{"a": {"x": [1, 2], "y": null}}', '{"a":{"y":null,"x":[1,2]}}'),
    ('{"n": 1}', '{"n": 1.0}'),
    ('{"n": 100}', '{"n": 1e2}'),
    ('{"s": "caf\\u00e9"}', '{"s": "café"}'),
])
def test_differently_formatted_json_matches(a, b):
    pa = parse_tool_calls(f"Action: f\nAction Input: {a}")
    pb = parse_tool_calls(f'[{{"name": "f", "arguments": {b}}}]')
    assert calls_match(pa, pb) and calls_match(pb, pa)


@pytest.mark.parametrize("a,b", [
    ({"a": 1}, {"a": "1"}),
    ({"a": True}, {"a": 1}),
    ({"a": False}, {"a": 0}),
    ({"a": None}, {"a": 0}),
    ({"a": [1, 2]}, {"a": [2, 1]}),
    ({"a": 1}, {"a": 1, "b": 2}),
    ({"a": "x"}, {"a": "x "}),
    ({"a": {}}, {"a": []}),
])
def test_json_unequal(a, b):
    assert not json_equal(a, b) and not json_equal(b, a)


def test_calls_match_order_and_names():
    f = {"name": "f", "arguments": {"a": 1}}
    g = {"name": "g", "arguments": {"b": 2}}
    assert calls_match([f, g], [f, g])
    assert not calls_match([g, f], [f, g])         # order matters
    assert not calls_match([f], [f, g])            # count matters
    assert not calls_match(None, [f]) and not calls_match([f], None)
    assert calls_match([], [])
    wrong_name = {"name": "h", "arguments": {"a": 1}}
    assert not names_match([wrong_name], [f]) and arguments_match([wrong_name], [f])
    wrong_args = {"name": "f", "arguments": {"a": 2}}
    assert names_match([wrong_args], [f]) and not arguments_match([wrong_args], [f])


def test_react_and_json_of_same_calls_match():
    react = 'Action: f\nAction Input: {"a": 1}\nAction: g\nAction Input: {"b": [true, null]}'
    js = '[{"name":"f","arguments":{"a":1}},{"name":"g","arguments":{"b":[true,null]}}]'
    assert calls_match(parse_tool_calls(react), parse_tool_calls(js))
