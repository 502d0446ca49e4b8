"""`rft-ds label --method regex`: labels from a boilerplate regex, in the SHAD masks schema.

The labels are checked against an independent reference: each loss token's text comes from
decoding it alone (not from the character offsets the code uses) and is walked through the message
string, and the boilerplate characters come from `re.finditer` on that string directly."""

from __future__ import annotations

import json
import os
import re

import pytest

from launchutil import ROOT, head_lines, metrics, plain

CALL = ('Thought: I need the TSLA price on 2025-09-21.\nAction: get_stock_price\n'
        'Action Input: {"symbol": "TSLA", "date": "2025-09-21"}')
ANSWER = "Thought: I have the answer.\nFinal Answer: TSLA closed at 389.81 USD on 2025-09-21."
SAMPLES = [
    {"id": "react", "messages": [
        {"role": "system", "content": "You can call these tools: get_stock_price"},
        {"role": "user", "content": "Can you look up TSLA shares on 2025-09-21?"},
        {"role": "assistant", "content": CALL},
        {"role": "tool", "content": '{"close": 389.81}'},
        {"role": "assistant", "content": ANSWER}]},
    {"id": "json-call", "messages": [
        {"role": "user", "content": "Weather in Paris for 3 days, in C and F?"},
        {"role": "assistant", "content": '<tool_call>\n{"name": "get_weather", "arguments": '
                                         '{"city": "Paris", "days": 3, "units": ["C", "F"]}}\n</tool_call>'},
        {"role": "tool", "content": '{"forecast": "sunny"}'},
        {"role": "assistant", "content": 'It will be "sunny", she said: 21 degrees, or so. Log: {"ok": true}'}]},
    {"id": "langchain", "messages": [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Thought: I now know the final answer\nFinal Answer: Paris"}]},
    {"conversations": [  # ShareGPT, a function_call turn, blanks at the end of the last turn
        {"from": "human", "value": "Mail Bob the Q3 report."},
        {"from": "function_call", "value": '{"name": "send_email", "arguments": {"to": "bob", "subject": "Q3"}}'},
        {"from": "observation", "value": '{"status": "sent"}'},
        {"from": "gpt", "value": "Done.  I sent it\tto Bob.\n\n  "}]},
]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def label(*args) -> int:
    """`rft-ds label --method regex ...` in this process (the CLI's own entry point)."""
    from rft_ds.cli import main

    return main(["label", "--method", "regex", *map(str, args)])


def reference_labels(content: str, pieces: list[str], specials: set[str], pattern: str, lead: int = 0):
    """The labels of a turn's tokens (`pieces`: each token decoded alone), and where the walk ended."""
    bp = [False] * len(content)
    for m in re.finditer(pattern, content):
        bp[m.start():m.end()] = [True] * (m.end() - m.start())
    cur, out = lead, []
    for s in pieces:
        if s and content.startswith(s, cur):
            chars = list(range(cur, cur + len(s)))
            cur += len(s)
            deciding = [j for j in chars if not content[j].isspace()] or chars
            out.append(int(any(not bp[j] for j in deciding)))
        else:
            assert s in specials, (s, content[cur:cur + 20])  # only the template's end-of-turn marker
            out.append(0)
    return out, cur


@pytest.fixture(params=["tiny", "smollm2"])
def tok_dir(request):
    """Both tokenizer families: the tiny SentencePiece-style BPE and SmolLM2's byte-level BPE."""
    return request.getfixturevalue("tiny_dir" if request.param == "tiny" else "smollm2_dir")


def test_default_pattern_keeps_exactly_the_free_text():
    """The default pattern, by hand: what it leaves unmatched is what is reasoning."""
    from rft_ds.label.regex import DEFAULT_PATTERN

    def kept(content):
        bp = [False] * len(content)
        for m in re.finditer(DEFAULT_PATTERN, content):
            bp[m.start():m.end()] = [True] * (m.end() - m.start())
        return "".join(c for c, b in zip(content, bp) if not b)

    assert kept(CALL) == "the TSLA price on 2025-09-21get_stock_priceTSLA2025-09-21"
    assert kept(ANSWER) == "TSLA closed at 389.81 USD on 2025-09-21"
    assert kept(SAMPLES[1]["messages"][1]["content"]) == "get_weatherParis3CF"
    assert kept(SAMPLES[1]["messages"][3]["content"]) == 'It will be "sunny", she said: 21 degrees, or so. Log: true'
    assert kept("Thought: I now know the final answer\nFinal Answer: Paris") == "Paris"
    assert kept('```json\n{\n  "a": "x",\n  "b": [1, 2]\n}\n```') == "x1, 2"
    assert kept("Observation: 42\nThought: it rained") == "42it rained"


def test_labels_equal_an_independent_reference(tok_dir, tmp_path):
    from rft_ds.data.formats import read_conversations
    from rft_ds.label.regex import DEFAULT_PATTERN
    from rft_ds.masks import read_masks, read_meta
    from rft_ds.modeling import load_tokenizer

    data = write_jsonl(tmp_path / "d.jsonl", SAMPLES)
    out = tmp_path / "masks.jsonl"
    assert label("--base", tok_dir, "--data", data, "--output", out) == 0
    masks = read_masks(out)  # the schema's own validation
    tok = load_tokenizer(str(tok_dir))
    specials = set(tok.all_special_tokens)
    n = n_r = 0
    for c in read_conversations(data):
        rec = masks[c.id]
        assert [t["message"] for t in rec["turns"]] == [i for i, m in enumerate(c.messages) if m["role"] == "assistant"]
        for t in rec["turns"]:
            content = c.messages[t["message"]]["content"]
            want, end = reference_labels(content, [tok.decode([i]) for i in t["token_ids"]], specials, DEFAULT_PATTERN)
            assert end == len(content)  # the decoded tokens spell the whole message
            assert t["labels"] == want, (c.id, t["message"])
            assert t["loss_diff"] == [1.0 if x else -1.0 for x in want]
            n, n_r = n + len(want), n_r + sum(want)
    assert 0 < n_r < n
    meta = read_meta(out)
    assert meta["method"] == "regex" and meta["pattern"] == DEFAULT_PATTERN and meta["samples"] == 4
    assert meta["tokens"] == n and meta["reasoning_share"] == pytest.approx(n_r / n)


def test_custom_pattern_and_a_trimming_template(tok_dir, tmp_path):
    """--boilerplate-regex replaces the default; a template that trims the content (Llama 3's `| trim`)
    still places every token (the content's leading blanks are not rendered)."""
    from rft_ds.data.formats import read_conversations
    from rft_ds.label.regex import compile_pattern, sample_turns
    from rft_ds.modeling import load_tokenizer

    rows = [{"id": "a", "messages": [{"role": "user", "content": "hi"},
                                     {"role": "assistant", "content": "  Action: book it, Action: pay  "}]}]
    convs = read_conversations(write_jsonl(tmp_path / "d.jsonl", rows))
    tok = load_tokenizer(str(tok_dir))
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n"
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    pattern = r"Action: "
    _, turns = sample_turns(convs[0], tok, compile_pattern(pattern), None)
    content = rows[0]["messages"][1]["content"]
    want, end = reference_labels(content, [tok.decode([i]) for i in turns[0]["token_ids"]],
                                 set(tok.all_special_tokens), pattern, lead=2)
    assert end == len(content.rstrip()) and turns[0]["labels"] == want
    assert "".join(tok.decode([i]) for i, x in zip(turns[0]["token_ids"], want) if x).split() == \
        ["book", "it,", "pay"]


def test_a_template_that_rewrites_the_content_is_a_clear_error(tiny_dir, tmp_path):
    from rft_ds.data.formats import read_conversations
    from rft_ds.errors import DataError
    from rft_ds.label.regex import compile_pattern, sample_turns
    from rft_ds.modeling import load_tokenizer

    path = write_jsonl(tmp_path / "d.jsonl", SAMPLES[2:3])
    tok = load_tokenizer(str(tiny_dir))
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | upper }}<|im_end|>\n"
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(DataError, match=re.escape(f"{path}:1: field 'messages[1].content'")):
        sample_turns(read_conversations(path)[0], tok, compile_pattern(None), None)


@pytest.mark.parametrize("max_seq_len", [4096, 60])
def test_token_ids_are_the_training_tokenization(smollm2_dir, tmp_path, max_seq_len):
    """The ids of every turn are encode_dataset's, truncated or not (the train join checks exactly these:
    test_train_rft_takes_regex_masks runs it)."""
    from rft_ds.data.formats import read_conversations
    from rft_ds.data.render import encode_dataset
    from rft_ds.masks import read_masks
    from rft_ds.modeling import load_tokenizer

    rows = SAMPLES + [{"id": "unicode", "messages": [
        {"role": "user", "content": "Météo à Zürich ?"},
        {"role": "assistant", "content": 'Thought: I need the weather.\nAction Input: {"city": "Zürich ☀"}'}]}]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "m.jsonl"
    assert label("--base", smollm2_dir, "--data", data, "--output", out, "--max-seq-len", max_seq_len) == 0
    masks = read_masks(out)
    assert list(masks) == [c.id for c in read_conversations(data)]  # every sample, in input order
    tok = load_tokenizer(str(smollm2_dir))
    encs, st = encode_dataset(read_conversations(data), tok, max_seq_len)
    assert (st.truncated > 0) == (max_seq_len == 60)
    for e in encs:
        turns = masks[e.id]["turns"]
        assert [t["message"] for t in turns] == e.assistant_messages
        for t in turns:
            assert t["token_ids"] == e.turn_tokens(t["message"])
        assert sum(len(t["labels"]) for t in turns) == e.n_loss_tokens
    for sid in set(masks) - {e.id for e in encs}:  # truncated to no loss token: dropped by training
        assert all(t["token_ids"] == [] for t in masks[sid]["turns"])


def test_train_rft_takes_regex_masks(tiny_dir, tmp_path):
    """The whole CLI path: label as its own process, then a 1-step RFT run on the masks."""
    data = head_lines(ROOT / "data" / "demo" / "train.jsonl", tmp_path / "train.jsonl", 12)
    masks = tmp_path / "masks.jsonl"
    r = plain(["label", "--method", "regex", "--base", tiny_dir, "--data", data, "--output", masks])
    assert "12 samples" in r.stdout and "labeled reasoning by the regex" in r.stdout
    run = tmp_path / "rft"
    plain(["train", "--model", tiny_dir, "--data", data, "--output", run, "--loss", "rft", "--masks", masks,
           "--max-steps", 1, "--micro-batch-size", 4])
    row = metrics(run)[0]
    assert row["step"] == 1 and row["tokens_b"] > 0 and row["tokens_r"] > 0


def test_flag_errors_exit_2_and_name_the_flag(tiny_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", SAMPLES[:1])
    out = tmp_path / "m.jsonl"
    base = ["label", "--base", tiny_dir, "--data", data, "--output", out]
    r = plain(base + ["--method", "regex", "--boilerplate-regex", "(Action"], check=False)
    assert r.returncode == 2 and "--boilerplate-regex '(Action' is not a valid" in r.stderr, r.stderr
    r = plain(base + ["--shad", tiny_dir, "--boilerplate-regex", "Action"], check=False)  # SHAD does not use it
    assert r.returncode == 2 and "--boilerplate-regex is used only with --method regex" in r.stderr
    r = plain(base, check=False)
    assert r.returncode == 2 and "needs --shad" in r.stderr
    assert not out.exists() and os.listdir(tmp_path) == ["d.jsonl"]


def test_output_is_written_atomically(tiny_dir, tmp_path):
    """A bad line stops the run with file:line and leaves no file, or the previous one untouched."""
    good = write_jsonl(tmp_path / "good.jsonl", SAMPLES[:2])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(SAMPLES[0]) + "\n" + json.dumps(SAMPLES[1]) + "\n"
                   + '{"messages": [{"role": "user", "content": "hi"}, {"role": "wizard", "content": "x"}]}\n')
    out = tmp_path / "out" / "m.jsonl"
    r = plain(["label", "--method", "regex", "--base", tiny_dir, "--data", bad, "--output", out], check=False)
    assert r.returncode == 2 and f"{bad}:3: field 'messages[1].role'" in r.stderr
    assert not out.parent.exists() or os.listdir(out.parent) == []
    assert label("--base", tiny_dir, "--data", good, "--output", out) == 0
    before = out.read_bytes()
    r = plain(["label", "--method", "regex", "--base", tiny_dir, "--data", good, "--output", out], check=False)
    assert r.returncode == 2 and "already exists; pass --overwrite" in r.stderr
    r = plain(["label", "--method", "regex", "--base", tiny_dir, "--data", bad, "--output", out, "--overwrite"],
              check=False)
    assert r.returncode == 2 and out.read_bytes() == before
    assert sorted(os.listdir(out.parent)) == ["m.jsonl", "m.jsonl.meta.json"]  # no temp file left
    r = plain(["label", "--method", "regex", "--base", tiny_dir, "--data", good, "--output", out,
               "--max-seq-len", 30, "--on-overflow", "error", "--overwrite"], check=False)
    assert r.returncode == 2 and f"{good}:1: field 'messages'" in r.stderr and "--max-seq-len 30" in r.stderr
    assert out.read_bytes() == before


def test_regex_masks_replace_a_stale_shad_work_dir_and_read_as_regex_in_the_viewer(tiny_dir, tmp_path):
    """The chunks an interrupted SHAD labeling of the same output left (`<out>.work`) survive a failed
    regex run and are removed by a successful one; `rft-ds view` of regex masks names the regex and
    shows no LD (their loss_diff is a sign, not nats)."""
    good = write_jsonl(tmp_path / "good.jsonl", SAMPLES[:2])
    out = tmp_path / "m.jsonl"
    work = tmp_path / "m.jsonl.work"
    work.mkdir()
    (work / "chunk-00000.jsonl").write_text("{}\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "wizard", "content": "x"}]}\n')
    r = plain(["label", "--method", "regex", "--base", tiny_dir, "--data", bad, "--output", out], check=False)
    assert r.returncode == 2 and (work / "chunk-00000.jsonl").exists()
    assert label("--base", tiny_dir, "--data", good, "--output", out, "--boilerplate-regex", "Thought:") == 0
    assert out.exists() and not work.exists()
    html = tmp_path / "m.html"
    plain(["view", out, "--data", good, "--output", html])
    page = html.read_text()
    assert "boilerplate regex <code>Thought:</code>" in page and "+1 reasoning, -1 boilerplate" in page
    assert "mean LD" not in page and "loss(SHAD model)" not in page
