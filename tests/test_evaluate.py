import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import pytest

from launchutil import ds_launch

from rft_ds.tools import convert as cv
from rft_ds.tools import evaluate as ev
from rft_ds.cli import main
from rft_ds.errors import DataError

FIX = Path(__file__).parent / "fixtures"

CALL = '[{"name": "add", "arguments": {"a": 2, "b": 40}}]'


# ---------------------------------------------------------------- score: hand-checkable cases

@pytest.mark.parametrize("generated,reference,expect", [
    # identical call
    (CALL, CALL, dict(exact_match=True, name_match=True, args_match=True, call_match=True, parse_failure=False)),
    # whitespace around the turn does not matter for exact match
    ("\n " + CALL + "  \n", CALL, dict(exact_match=True, call_match=True)),
    # right call, differently formatted JSON: not an exact match, but a call match
    ('[ {"arguments": {"b":40, "a":2.0}, "name":"add"} ]', CALL,
     dict(exact_match=False, name_match=True, args_match=True, call_match=True, parse_failure=False)),
    # the same call in ReAct form matches the JSON reference
    ('Thought: add them\nAction: add\nAction Input: {"b": 40, "a": 2}', CALL,
     dict(exact_match=False, call_match=True, generated_form="react")),
    # wrong function name, right arguments
    ('[{"name": "sum", "arguments": {"a": 2, "b": 40}}]', CALL,
     dict(name_match=False, args_match=True, call_match=False)),
    # right name, wrong argument value / type
    ('[{"name": "add", "arguments": {"a": 2, "b": "40"}}]', CALL,
     dict(name_match=True, args_match=False, call_match=False)),
    # one call too many
    ('[{"name": "add", "arguments": {"a": 2, "b": 40}}, {"name": "add", "arguments": {}}]', CALL,
     dict(name_match=False, args_match=False, call_match=False)),
    # unparseable generation
    ('[{"name": "add", "arguments": {"a": 2,', CALL,
     dict(parse_failure=True, name_match=False, args_match=False, call_match=False, generated_calls=None)),
    # plain-text generation where a call was expected: no call, not a parse failure
    ("The answer is 42.", CALL, dict(parse_failure=False, name_match=False, call_match=False)),
    # reference without a call: call metrics do not apply, no-call accuracy does
    ("It is sunny.", "It is 24C in Nice.",
     dict(exact_match=False, reference_has_call=False, name_match=None, args_match=None, call_match=None,
          no_call_match=True)),
    ("[]", "It is 24C in Nice.", dict(no_call_match=True, generated_form="json")),
    (CALL, "It is 24C in Nice.", dict(no_call_match=False, call_match=None)),
    ("Final Answer: 42", "Thought: done\nFinal Answer: 42",
     dict(exact_match=False, no_call_match=True, generated_form="final_answer", reference_form="final_answer")),
    # an unparseable reference is left out of the call metrics and counted
    ("x", "Action: f\nAction Input: {bad}",
     dict(reference_parse_failure=True, reference_has_call=False, call_match=None, no_call_match=None)),
])
def test_score(generated, reference, expect):
    s = ev.score(generated, reference)
    for k, v in expect.items():
        assert s[k] == v, (k, s)


def test_summarize_hand_computed():
    pairs = [
        (CALL, CALL),                                                    # exact, call match
        ('[{"name":"add","arguments":{"b":40,"a":2}}]', CALL),           # call match, not exact
        ('[{"name": "add", "arguments": {"a": 1, "b": 40}}]', CALL),     # name only
        ("[{", CALL),                                                    # parse failure
        ("It is 24C in Nice.", "It is 24C in Nice."),                    # no-call, exact
        (CALL, "Hello!"),                                                # called where it should not
    ]
    s = ev.summarize([ev.score(g, r) for g, r in pairs])
    assert s == {
        "samples": 6,
        "exact_match": 2 / 6,
        "samples_with_call": 4,
        "name_accuracy": 3 / 4,
        "args_exact_match": 2 / 4,
        "call_exact_match": 2 / 4,
        "samples_without_call": 2,
        "no_call_accuracy": 1 / 2,
        "parse_failure_rate": 1 / 6,
        "reference_parse_failures": 0,
    }
    table = ev.format_table(s)
    assert "call exact match          0.500  4 samples with a reference call" in table


def test_summarize_empty_denominators():
    s = ev.summarize([ev.score("hi", "hello")])
    assert s["name_accuracy"] is None and s["call_exact_match"] is None and s["samples_with_call"] == 0
    assert "n/a" in ev.format_table(s)


# ---------------------------------------------------------------- a tiny model

def _train_briefly(model_dir: str, data: str, steps: int) -> None:
    """A few optimizer steps on the held-out data, so that greedy generations are varied: some
    stop at eos after a few tokens, some run to --max-new-tokens (a random init never stops)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rft_ds.data.formats import read_conversations

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    seqs = [tok(tok.apply_chat_template(c.messages, tokenize=False), add_special_tokens=False)["input_ids"]
            for c in read_conversations(data)]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        for s in seqs:
            x = torch.tensor([s])
            model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(model_dir)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from rft_ds.tools.tiny import build_tiny_model

    d = tmp_path_factory.mktemp("evaluate")
    parts = []
    for source, name in (("apigen", "apigen_small.json"), ("toolbench", "toolbench_small.json"),
                         ("sharegpt", "sharegpt_small.jsonl")):
        out = d / f"{source}.jsonl"
        cv.convert(source, FIX / name, out)
        parts.append(out.read_text())
    heldout = d / "heldout.jsonl"
    heldout.write_text("".join(parts))  # 10 samples: 6 end in a call, 4 do not
    model = d / "model"
    build_tiny_model(str(heldout), str(model), vocab_size=300, hidden_size=32, layers=1, heads=2)
    _train_briefly(str(model), str(heldout), steps=40)
    return str(model), str(heldout)


def _rows(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def test_evaluate_with_known_generations(tiny, tmp_path, monkeypatch):
    """Wiring: every sample "generates" the same call; metrics are checked by hand."""
    model, heldout = tiny

    def fake_generate(model_, tok, prompt_ids, max_new_tokens, eos_ids, pad_id):
        return [('[{"name":"add","arguments":{"b":40,"a":2}}]', 7, True) for _ in prompt_ids]

    monkeypatch.setattr(ev, "generate_batch", fake_generate)
    out = tmp_path / "res.jsonl"
    s = ev.evaluate(model, heldout, max_new_tokens=8, output=str(out), batch_size=3)
    # heldout: apigen ids 0 (2 calls), 1 (add 2+40), 2 (get_weather), 8 ([]); 3 ToolBench Finish calls;
    # 3 ShareGPT plain-text answers.
    assert s["samples"] == 10 and s["samples_with_call"] == 6 and s["samples_without_call"] == 4
    assert s["exact_match"] == 0.0                # the reference of id 1 is formatted differently
    assert s["call_exact_match"] == 1 / 6 and s["name_accuracy"] == 1 / 6 and s["args_exact_match"] == 1 / 6
    assert s["no_call_accuracy"] == 0.0 and s["parse_failure_rate"] == 0.0
    assert s["hit_max_new_tokens"] == 0
    rows = _rows(out)
    assert [r["id"] for r in rows] == [json.loads(x)["id"] for x in Path(heldout).read_text().splitlines()]
    assert rows[1]["call_match"] is True and rows[1]["exact_match"] is False
    assert rows[1]["generated_calls"] == [{"name": "add", "arguments": {"b": 40, "a": 2}}]
    assert rows[1]["reference"] == '[{"name": "add", "arguments": {"a": 2, "b": 40}}]'
    assert json.loads(Path(ev.summary_path(out)).read_text()) == s


def test_batched_equals_unbatched(tiny, tmp_path):
    model, heldout = tiny
    runs = {}
    for bs in (1, 4, 8):
        out = tmp_path / f"b{bs}.jsonl"
        runs[bs] = (ev.evaluate(model, heldout, max_new_tokens=40, output=str(out), batch_size=bs, quiet=True),
                    _rows(out))
    one = runs[1][1]
    # the check means something only if generations end at different times within a batch
    assert any(r["finished"] for r in one) and not all(r["finished"] for r in one)
    assert len({r["generated_tokens"] for r in one}) >= 3
    for bs in (4, 8):
        assert runs[bs][0] == runs[1][0]
        assert runs[bs][1] == one
    for r in one:  # generation stopped at eos: no end-of-turn marker in the text
        assert "<|im_end|>" not in r["generated"]
        assert r["finished"] == (r["generated_tokens"] < 40)


def test_cli_and_max_samples(tiny, tmp_path, capsys):
    model, heldout = tiny
    out = tmp_path / "r.jsonl"
    assert main(["evaluate", "--model", model, "--data", heldout, "--max-new-tokens", "4", "--max-samples", "3",
                 "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "exact match (whole turn)" in text and "parse-failure rate" in text
    assert len(_rows(out)) == 3 and json.loads(Path(str(out) + ".summary.json").read_text())["samples"] == 3
    assert main(["evaluate", "--model", model, "--data", heldout, "--max-new-tokens", "0"]) == 2
    assert main(["evaluate", "--model", str(tmp_path / "nope"), "--data", heldout]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_sample_without_context_is_an_error(tiny, tmp_path):
    model, _ = tiny
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "a", "messages": [{"role": "assistant", "content": "hi"},
                                                       {"role": "user", "content": "?"}]}) + "\n")
    with pytest.raises(DataError, match="no context"):
        ev.evaluate(model, str(bad), max_new_tokens=4)


# ---------------------------------------------------------------- two ranks through the launcher

@pytest.mark.launch
def test_two_ranks_equal_one_process(tiny, tmp_path):
    model, heldout = tiny
    single_out = tmp_path / "single.jsonl"
    single = ev.evaluate(model, heldout, max_new_tokens=40, output=str(single_out), batch_size=8, quiet=True)

    out = tmp_path / "two.jsonl"
    # A torch-extensions cache of our own for this venv: the JIT-built CPU comm op is rebuilt (~40-90 s)
    # whenever another checkout with different build flags has used the shared default cache.
    key = hashlib.sha256(sys.prefix.encode()).hexdigest()[:10]
    ext_dir = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(tempfile.gettempdir(), f"rft_ds_torch_ext_{key}")
    proc = ds_launch(["evaluate", "--model", model, "--data", heldout, "--max-new-tokens", "40", "--batch-size", "3",
                      "--output", out], nproc=2, timeout=600,
                     extra_env={"OMP_NUM_THREADS": "1", "TORCH_EXTENSIONS_DIR": ext_dir})
    assert "on 2 rank(s)" in proc.stdout
    two = json.loads(Path(ev.summary_path(out)).read_text())
    assert two == single
    assert out.read_text() == single_out.read_text()
