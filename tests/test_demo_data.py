"""The bundled demo data generator: deterministic, well-formed, roles exact, files never drift."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rft_ds.demo import catalog
from rft_ds.demo import generate as gen
from rft_ds.demo import needs_input as ni

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / "data" / "demo"

CALL_RE = re.compile(r"\AThought: I need (?P<intent>[^\n]+)\.\nAction: (?P<tool>\S+)\nAction Input: (?P<input>\{.*\})\Z")
FINAL_PREFIX = "Thought: I have the answer.\nFinal Answer: "


@pytest.fixture(scope="module")
def default_data():
    return gen.generate()  # the defaults: DEFAULT_N_TRAIN, DEFAULT_N_HELDOUT, DEFAULT_SEED


@pytest.fixture(scope="module")
def small_data():
    return gen.generate(300, 60, seed=7)


def _runs(roles: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Maximal [a, b) runs of '1' within roles[start:end]."""
    end = len(roles) if end is None else end
    return [(m.start() + start, m.end() + start) for m in re.finditer("1+", roles[start:end])]


def _system_tools(sample: dict) -> list[str]:
    lines = sample["messages"][0]["content"].split("\n")[1:]
    return [json.loads(line)["name"] for line in lines]


def _assistant_items(samples, roles):
    """(sample, index, message, roles string, latest user text, messages before it) per assistant turn."""
    by_id = {r["id"]: r["roles"] for r in roles}
    for s in samples:
        user = None
        for i, m in enumerate(s["messages"]):
            if m["role"] == "user":
                user = m["content"]
            if m["role"] == "assistant":
                yield s, i, m, by_id[s["id"]][str(i)], user


# ---------------------------------------------------------------------------------------------
# determinism and drift
# ---------------------------------------------------------------------------------------------
def test_same_seed_same_bytes_different_seed_different():
    a = gen.render(*gen.generate(80, 20, seed=3))
    b = gen.render(*gen.generate(80, 20, seed=3))
    c = gen.render(*gen.generate(80, 20, seed=4))
    assert a == b
    assert a["train.jsonl"] != c["train.jsonl"]
    assert a["heldout.jsonl"] != c["heldout.jsonl"]


def test_heldout_does_not_depend_on_n_train():
    _, h1, _ = gen.generate(10, 15, seed=1)
    _, h2, _ = gen.generate(50, 15, seed=1)
    assert h1 == h2


def test_committed_files_equal_fresh_generation(default_data):
    fresh = gen.render(*default_data)
    for name in gen.FILE_NAMES:
        path = DEMO_DIR / name
        assert path.exists(), f"{path} missing: run `python -m rft_ds demo-data`"
        assert path.read_bytes() == fresh[name].encode("utf-8"), (
            f"{path} differs from a fresh generation with the defaults: "
            "regenerate with `python -m rft_ds demo-data` and commit")


def test_committed_files_small():
    total = sum((DEMO_DIR / name).stat().st_size for name in gen.FILE_NAMES)
    assert total <= 2_000_000, total


def test_cli_writes_files(tmp_path):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    gen.register(sub)
    defaults = parser.parse_args(["demo-data"])
    assert (defaults.output_dir, defaults.n_train, defaults.n_heldout, defaults.seed) == (
        gen.DEFAULT_OUTPUT_DIR, gen.DEFAULT_N_TRAIN, gen.DEFAULT_N_HELDOUT, gen.DEFAULT_SEED)
    args = parser.parse_args(["demo-data", "--output-dir", str(tmp_path / "out"), "--n-train", "12",
                              "--n-heldout", "5", "--seed", "2"])
    assert args.func(args) == 0
    expected = gen.render(*gen.generate(12, 5, seed=2))
    for name in gen.FILE_NAMES:
        assert (tmp_path / "out" / name).read_text(encoding="utf-8") == expected[name]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(gen.FILE_NAMES)  # no temp files


def test_module_imports_stdlib_only():
    code = ("import sys, rft_ds.demo.generate; "
            "bad = [m for m in ('torch', 'transformers', 'deepspeed', 'numpy') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# ---------------------------------------------------------------------------------------------
# structure and format
# ---------------------------------------------------------------------------------------------
def test_ids_unique_and_roles_aligned(default_data):
    train, heldout, roles = default_data
    ids = [s["id"] for s in train + heldout]
    assert len(ids) == len(set(ids)) == gen.DEFAULT_N_TRAIN + gen.DEFAULT_N_HELDOUT
    assert all(re.fullmatch(r"demo-train-\d{5}", s["id"]) for s in train)
    assert all(re.fullmatch(r"demo-heldout-\d{5}", s["id"]) for s in heldout)
    assert [r["id"] for r in roles] == ids


def test_message_sequence(small_data):
    train, heldout, roles = small_data
    by_id = {r["id"]: r["roles"] for r in roles}
    for s in train + heldout:
        assert set(s) == {"id", "messages"}
        msgs = s["messages"]
        kinds = [m["role"] for m in msgs]
        assert kinds[0] == "system" and kinds[1] == "user" and kinds[-1] == "assistant"
        assert all(set(m) == {"role", "content"} and isinstance(m["content"], str) for m in msgs)
        assert sorted(by_id[s["id"]], key=int) == [str(i) for i, k in enumerate(kinds) if k == "assistant"]
        for i, m in enumerate(msgs):
            if m["role"] == "assistant" and CALL_RE.match(m["content"]):
                assert kinds[i + 1] == "tool"
                json.loads(msgs[i + 1]["content"])
        for m in msgs:
            assert m["content"].isascii()


def test_roles_length_and_alphabet(default_data):
    train, heldout, roles = default_data
    for s, i, m, r, _ in _assistant_items(train + heldout, roles):
        assert len(r) == len(m["content"]), (s["id"], i)
        assert set(r) <= {"0", "1"} and "0" in r and "1" in r, (s["id"], i)


def test_call_format_and_argument_values_copied(default_data):
    train, heldout, roles = default_data
    n_calls = 0
    for s, i, m, r, user in _assistant_items(train + heldout, roles):
        c = m["content"]
        if c.startswith(FINAL_PREFIX):
            continue
        match = CALL_RE.match(c)
        assert match, (s["id"], i, c)
        n_calls += 1
        tool = match["tool"]
        assert tool in _system_tools(s)
        args = json.loads(match["input"])
        assert list(args) == [k for k, _ in gen.TOOLS_BY_NAME[tool].params]
        assert match["input"] == json.dumps(args)
        # Template prefix and connectives are '0'; the intent and the tool name are one '1' run each.
        assert r[:len("Thought: I need ")] == "0" * len("Thought: I need ")
        assert _runs(r, *match.span("intent")) == [match.span("intent")]
        assert r[match.end("intent"):match.start("tool")] == "0" * (match.start("tool") - match.end("intent"))
        assert _runs(r, *match.span("tool")) == [match.span("tool")]
        # Action Input: exactly one '1' run per argument value, equal to the value's JSON text
        # (string contents without quotes), and each is a copy of a string in the user message.
        runs = _runs(r, *match.span("input"))
        values = [v if isinstance(v, str) else json.dumps(v) for v in args.values()]
        assert [c[a:b] for a, b in runs] == values, (s["id"], i)
        for v in values:
            assert v in user, (s["id"], i, v, user)
        # The keys are boilerplate.
        for key in args:
            k = c.index(json.dumps(key) + ": ", match.start("input"))
            assert set(r[k:k + len(key) + 4]) == {"0"}
    assert n_calls > len(train) + len(heldout)


def test_final_answer_format_and_observation_values(default_data):
    train, heldout, roles = default_data
    for s in train + heldout:
        msgs = s["messages"]
        obs_since_answer: list[dict] = []
        for i, m in enumerate(msgs):
            if m["role"] == "tool":
                obs_since_answer.append(json.loads(m["content"]))
            if m["role"] == "assistant" and m["content"].startswith(FINAL_PREFIX):
                assert obs_since_answer, s["id"]
                answer = m["content"][len(FINAL_PREFIX):]
                assert answer.endswith(".") and "\n" not in answer
                for obs in obs_since_answer:
                    quoted = [v if isinstance(v, str) else json.dumps(v) for k, v in obs.items() if k != "status"]
                    assert all(q in answer for q in quoted), (s["id"], i, quoted, answer)
                obs_since_answer = []
    # roles of final answers: the fixed prefix is '0', each answer sentence is one '1' run.
    by_id = {r["id"]: r["roles"] for r in roles}
    for s in train[:200]:
        for i, m in enumerate(s["messages"]):
            if m["role"] == "assistant" and m["content"].startswith(FINAL_PREFIX):
                r = by_id[s["id"]][str(i)]
                assert r[:len(FINAL_PREFIX)] == "0" * len(FINAL_PREFIX)
                assert r[-1] == "0"  # closing period


def test_boilerplate_is_the_same_everywhere(default_data):
    """Blank out the '1' runs: what is left (the template) takes very few distinct forms."""
    train, heldout, roles = default_data
    call_skeletons, final_skeletons = set(), set()
    for s, i, m, r, _ in _assistant_items(train + heldout, roles):
        skel = "".join(ch if f == "0" else "\x00" for ch, f in zip(m["content"], r))
        skel = re.sub("\x00+", "<>", skel)
        (final_skeletons if m["content"].startswith(FINAL_PREFIX) else call_skeletons).add(skel)
    # One skeleton per tool (the keys differ), one per answer shape (one or two sentences).
    assert len(call_skeletons) == len(gen.TOOLS)
    assert final_skeletons == {FINAL_PREFIX + "<>.", FINAL_PREFIX + "<>. <>."}


def test_some_samples_multi_turn(default_data):
    train, heldout, _ = default_data
    for samples in (train, heldout):
        two_users = sum(1 for s in samples if sum(m["role"] == "user" for m in s["messages"]) == 2)
        two_calls_one_turn = sum(
            1 for s in samples
            if sum(m["role"] == "user" for m in s["messages"]) == 1
            and sum(m["role"] == "tool" for m in s["messages"]) == 2)
        frac = (two_users + two_calls_one_turn) / len(samples)
        assert two_users > 0 and two_calls_one_turn > 0
        assert 0.2 <= frac <= 0.4, frac


def test_heldout_uses_new_combinations(default_data):
    train, heldout, roles = default_data

    def combos(samples):
        out = set()
        for s, i, m, r, _ in _assistant_items(samples, roles):
            match = CALL_RE.match(m["content"])
            if match:
                out.add((match["tool"], match["input"]))
        return out

    train_combos, heldout_combos = combos(train), combos(heldout)
    assert not train_combos & heldout_combos
    assert {t for t, _ in heldout_combos} == {t.name for t in gen.TOOLS}  # every tool is tested
    train_users = {m["content"] for s in train for m in s["messages"] if m["role"] == "user"}
    assert not train_users & {m["content"] for s in heldout for m in s["messages"] if m["role"] == "user"}


def test_short_enough_for_a_tiny_model(default_data):
    train, heldout, _ = default_data
    st = gen.stats(train)
    assert st["avg_chars_conversation"] < 900
    assert st["avg_chars_assistant"] < 150
    assert st["max_chars_assistant"] < 200
    assert st["max_chars_conversation"] < 1300
    # Every tool is used in train.
    tools_called = {CALL_RE.match(m["content"])["tool"] for s in train for m in s["messages"]
                    if m["role"] == "assistant" and CALL_RE.match(m["content"])}
    assert tools_called == {t.name for t in gen.TOOLS}


# ---------------------------------------------------------------------------------------------
# the third truth: needs the input, given the message's own earlier text (generate.needs_input)
# ---------------------------------------------------------------------------------------------
def _shown(content: str, needs: str) -> str:
    return "".join(ch if x == "1" else "_" for ch, x in zip(content, needs))


def test_answer_templates_equal_the_answers():
    """`answer_template` (read only by needs_input) writes exactly the sentence `answer` writes, and
    every field value lies in the field's pool."""
    rng = __import__("random").Random(5)
    for tool in gen.TOOLS:
        for _ in range(200):
            args = tool.sample_args(rng)
            obs = tool.observe(rng, args)
            fields = {**args, **obs}
            text = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
            assert tool.answer(args, obs) == tool.answer_template.format(**text), tool.name
            for k, v in text.items():
                if k in tool.pools:
                    pool = tool.pools[k]
                    assert (pool == catalog.NUMBER and re.fullmatch(r"-?\d+(\.\d+)?", v)) or v in pool, (tool.name, k, v)
        for key, _ in tool.params:
            assert key in tool.pools, (tool.name, key)


def test_needs_input_by_hand():
    c = ('Thought: I need the weather in Paris on 2025-05-03.\nAction: get_weather\n'
         'Action Input: {"city": "Paris", "date": "2025-05-03"}')
    got = ni.needs_input(c)
    assert len(got) == len(c) + 1
    # "need" (call, not answer) is open; "the" / "to" / "flights" ...; "weather" vs a stock symbol;
    # Paris vs Prague after "P"; month and day digits. The tool name, the keys and the copied values
    # of the Action Input, the year and the separators are all fixed by the text before them.
    head = "___________n____th__w__________Pa____________05_03"
    assert _shown(c, got) == head + "_" * (len(c) - len(head))
    assert got[-1] == "0"  # nothing can follow the closing brace
    a = "Thought: I have the answer.\nFinal Answer: TSLA closed at 389.81 USD on 2025-09-21."
    got = ni.needs_input(a)
    # "T" and "S": a symbol or "Try ..."; the number's every character and the space after it (the
    # number could go on); the year is fixed. The end is open: a second sentence could follow.
    assert _shown(a, got) == "___________h______________________________TS_____________389.81 ____________09_21_"
    assert got[-1] == "1"
    two = "Thought: I have the answer.\nFinal Answer: Your email to Bob was sent (M-1234). Try Blue Olive in Rome, rated 4.5."
    got = ni.needs_input(two)
    assert got[-1] == "0" and got[two.index(". Try") + 1] == "1"  # the space opening a second sentence


def test_needs_input_rejects_other_text():
    for bad in ("Thought: I need coffee.", "Hello", 'Thought: I need the weather in Paris on 2025-05-03.\nAction: get_stock_price'):
        with pytest.raises(ValueError, match="not a demo assistant message"):
            ni.needs_input(bad)


def test_needs_input_on_generated_messages(small_data):
    """On every generated message: needs-input reasoning lies inside the semantic reasoning slots,
    except the call-or-answer word and the space opening a second answer sentence; tool names and
    Action Inputs are never reasoning; every Thought value still needs the input somewhere."""
    train, heldout, roles = small_data
    n_call = n_answer = 0
    for s, i, m, r, _ in _assistant_items(train + heldout, roles):
        c = m["content"]
        got = ni.needs_input(c)
        assert len(got) == len(c) + 1 and set(got) <= {"0", "1"}
        decision = len("Thought: I ")
        assert got[decision] == "1" and got[:decision] == "0" * decision
        allowed = {decision}
        match = CALL_RE.match(c)
        if match:
            n_call += 1
            assert got[match.end("intent"):len(c)] == "0" * (len(c) - match.end("intent")), (s["id"], c)
            assert got[-1] == "0"
            args = json.loads(match["input"])
            for v in args.values():
                v = v if isinstance(v, str) else json.dumps(v)
                at = c.index(v, match.start("intent"))
                assert "1" in got[at:at + len(v)], (s["id"], v)
        else:
            n_answer += 1
            two = len(_runs(r)) == 2  # one '1' run per answer sentence
            gap = [a for a, _ in _runs(r)][1:]
            # the space opening the second sentence; a period right after a number (which could go on)
            allowed |= {a - 1 for a in gap} | {k for k in range(1, len(c)) if c[k] == "." and r[k] == "0"
                                                and c[k - 1].isdigit()}
            assert got[-1] == ("0" if two else "1"), (s["id"], c)
            for a in gap:
                assert got[a - 1] == "1", (s["id"], c)
        extra = [k for k in range(len(c)) if got[k] == "1" and r[k] == "0" and k not in allowed]
        assert not extra, (s["id"], c, extra)
    assert n_call > 300 and n_answer > 300


def test_needs_input_kinds_split_values_from_template_choices(small_data):
    c = ('Thought: I need the weather in Paris on 2025-05-03.\nAction: get_weather\n'
         'Action Input: {"city": "Paris", "date": "2025-05-03"}')
    k = ni.needs_input_kinds(c)
    shown = "".join(ch if x == "0" else x for ch, x in zip(c, k))
    # template choices: call or answer ("n"), which phrase ("th" of "the"/"to"..., "w" of "weather"
    # vs a stock symbol); value choices: "Pa" (Paris, not Prague), the month and day digits
    assert shown.startswith("Thought: I teed tte teather in vvris on 2025-vv-vv.\nAction: get_weather")
    a = "Thought: I have the answer.\nFinal Answer: Try Blue Olive in Rome, rated 4.5."
    k = ni.needs_input_kinds(a)
    assert "".join(ch if x == "0" else x for ch, x in zip(a, k)) == \
        "Thought: I tave the answer.\nFinal Answer: tty vvue Olive in vome, rated vttt"
    assert k[-1] == "t"  # one sentence or two: a template choice
    train, heldout, roles = small_data
    for s, i, m, r, _ in _assistant_items(train[:100], roles):
        kinds = ni.needs_input_kinds(m["content"])
        assert kinds.replace("v", "1").replace("t", "1") == ni.needs_input(m["content"])
