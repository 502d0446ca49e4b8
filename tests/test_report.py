"""`rft-ds demo-report` on a fake demo directory: tiny model copies, hand-made masks whose agreement
with the ground-truth roles is known by construction, synthetic metrics files."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest

from rft_ds.cli import main
from rft_ds.demo import agreement, markdown, stats, truths
from rft_ds.demo.heldout import HELDOUT_METRICS, teacher_forced
from rft_ds.demo import report as rp
from rft_ds.errors import MasksError
from rft_ds.masks import make_record, meta_path

ROOT = Path(__file__).resolve().parent.parent
DEMO_DATA = ROOT / "data" / "demo"
N_TRAIN, N_HELDOUT, N_MASKED, MAX_SAMPLES = 20, 20, 6, 5
IM_START, IM_END = "<|im_start|>", "<|im_end|>"


def _lines(path: Path, n: int) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)[:n]


def independent_truth(tok, sample: dict, roles: dict) -> dict[int, list[tuple[int, int]]]:
    """{assistant message index: [(token id, true role)]} of the loss tokens, computed without
    rft_ds's render/encode code: the ChatML text is assembled by hand, a message's loss tokens are
    the tokens overlapping its content or its end-of-turn marker."""
    text, spans = "", {}
    for i, m in enumerate(sample["messages"]):
        head = f"{IM_START}{m['role']}\n"
        if m["role"] == "assistant":
            spans[i] = (len(text) + len(head), len(m["content"]))
        text += head + m["content"] + IM_END + "\n"
    assert text == tok.apply_chat_template(sample["messages"], tokenize=False)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    out = {}
    for i, (start, n) in spans.items():
        end = start + n + len(IM_END)
        toks = []
        for tid, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]):
            if b > start and a < end and b > a:
                chars = roles[str(i)][max(a, start) - start:min(b, start + n) - start]
                toks.append((tid, 1 if chars and 2 * chars.count("1") >= len(chars) else 0))
        out[i] = toks
    return out


@pytest.fixture(scope="module")
def fake_demo(tmp_path_factory, tiny_dir):
    from rft_ds.data.render import tokenizer_fingerprint
    from rft_ds.fsio import write_json
    from rft_ds.modeling import load_tokenizer

    root = tmp_path_factory.mktemp("report")
    data, demo = root / "data", root / "demo"
    data.mkdir()
    train_lines = _lines(DEMO_DATA / "train.jsonl", N_TRAIN)
    heldout_lines = _lines(DEMO_DATA / "heldout.jsonl", N_HELDOUT)
    (data / "train.jsonl").write_text("".join(train_lines), encoding="utf-8")
    (data / "heldout.jsonl").write_text("".join(heldout_lines), encoding="utf-8")
    ids = {json.loads(x)["id"] for x in train_lines + heldout_lines}
    role_lines = [x for x in (DEMO_DATA / "roles.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
                  if json.loads(x)["id"] in ids]
    assert len(role_lines) == N_TRAIN + N_HELDOUT  # roles.jsonl holds train and held-out ids
    (data / "roles.jsonl").write_text("".join(role_lines), encoding="utf-8")
    roles = {json.loads(x)["id"]: json.loads(x)["roles"] for x in role_lines}

    for d in ["base", "shad"] + [f"{r}-seed{s}" for r in ("sft", "rft") for s in (0, 1)]:
        shutil.copytree(tiny_dir, demo / d / "final")
    for s in (0, 1):
        for r in ("sft", "rft"):
            rows = []
            for step in range(1, 11):
                row = {"step": step, "loss": 3.0 / step + s, "loss_b": 2.0 / step,
                       "loss_r": (4.0 if r == "sft" else 3.0) / step,
                       "tokens_b": 100, "tokens_r": 50}
                if r == "rft":
                    row.update(w_b=0.4, w_r=0.6)
                rows.append(json.dumps(row) + "\n")
            (demo / f"{r}-seed{s}" / "metrics.jsonl").write_text("".join(rows))

    # Masks of the first N_MASKED train samples: every 4th token of a turn gets the wrong label, the
    # rest the true one; LD is +1.0 on true reasoning tokens and -0.5 on true boilerplate tokens.
    tok = load_tokenizer(str(tiny_dir))
    fp = tokenizer_fingerprint(tok)
    truth, labels, records = [], [], []
    for k, line in enumerate(train_lines[:N_MASKED]):
        sample = json.loads(line)
        turns = []
        for m, toks in independent_truth(tok, sample, roles[sample["id"]]).items():
            if k == 2 and m == 4:
                toks = toks[:7]  # as if the labeling pass truncated this turn
            lab = [t if j % 4 else 1 - t for j, (_, t) in enumerate(toks)]
            truth += [t for _, t in toks]
            labels += lab
            turns.append({"message": m, "token_ids": [i for i, _ in toks], "labels": lab,
                          "loss_diff": [1.0 if t else -0.5 for _, t in toks]})
        records.append(make_record(sample["id"], fp, turns))
    masks = demo / "masks.jsonl"
    masks.write_text("".join(json.dumps(r) + "\n" for r in records))
    write_json(meta_path(masks), {"base": str(demo / "base" / "final"), "shad": str(demo / "shad" / "final"),
                                  "margin": 0.0, "tokenizer": fp})

    tp = sum(1 for t, p in zip(truth, labels) if t and p)
    fp_ = sum(1 for t, p in zip(truth, labels) if not t and p)
    fn = sum(1 for t, p in zip(truth, labels) if t and not p)
    tn = sum(1 for t, p in zip(truth, labels) if not t and not p)
    assert min(tp, fp_, fn, tn) > 0
    expected = {"tokens": len(truth), "tp": tp, "fp": fp_, "fn": fn, "tn": tn}

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["demo-report", "--demo-dir", str(demo), "--data-dir", str(data), "--seeds", "0", "1",
                   "--max-samples", str(MAX_SAMPLES), "--batch-size", "4"])
    return {"rc": rc, "stdout": out.getvalue(), "demo": demo, "data": data, "tok": tok, "roles": roles,
            "expected": expected, "report": json.loads((demo / "report.json").read_text())}


def test_report_runs_and_writes_files(fake_demo):
    demo = fake_demo["demo"]
    assert fake_demo["rc"] == 0
    for name in ("report.md", "report.json", "curves.png", "masks.html", "eval/heldout-calls.jsonl",
                 "eval/sft-seed0.jsonl", "eval/rft-seed1.jsonl.summary.json"):
        assert (demo / name).is_file(), name
    assert (demo / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (demo / "masks.html").read_text()
    assert "demo-train-00000" in html and "demo-train-00005" in html
    md = (demo / "report.md").read_text()
    assert md.strip() in fake_demo["stdout"]


def test_agreement_equals_construction(fake_demo):
    e, ag = fake_demo["expected"], fake_demo["report"]["shad_agreement"]
    tp, fp, fn, tn, n = e["tp"], e["fp"], e["fn"], e["tn"], e["tokens"]
    assert ag["tokens"] == n and ag["samples"] == N_MASKED
    assert ag["confusion"] == {"tp": tp, "fp": fp, "fn": fn, "tn": tn}
    assert ag["truncated_turns"] == 1
    assert ag["data_samples_without_masks"] == N_TRAIN - N_MASKED
    assert ag["token_accuracy"] == pytest.approx((tp + tn) / n)
    assert ag["reasoning_precision"] == pytest.approx(tp / (tp + fp))
    assert ag["reasoning_recall"] == pytest.approx(tp / (tp + fn))
    assert ag["balanced_accuracy"] == pytest.approx((tp / (tp + fn) + tn / (tn + fp)) / 2)
    assert ag["labeled_reasoning_share"] == pytest.approx((tp + fp) / n)
    assert ag["true_reasoning_share"] == pytest.approx((tp + fn) / n)
    assert ag["mean_ld_true_reasoning"] == pytest.approx(1.0)
    assert ag["mean_ld_true_boilerplate"] == pytest.approx(-0.5)
    # roughly one token in four is flipped
    assert 0.70 < ag["token_accuracy"] < 0.80


def test_heldout_section(fake_demo):
    ho = fake_demo["report"]["heldout"]
    heldout = [json.loads(x) for x in _lines(fake_demo["data"] / "heldout.jsonl", MAX_SAMPLES)]
    n_calls = sum(1 for s in heldout for m in s["messages"] if m["role"] == "assistant" and "\nAction: " in m["content"])
    assert ho["samples"] == MAX_SAMPLES and ho["call_turns"] == n_calls
    calls = (fake_demo["demo"] / "eval" / "heldout-calls.jsonl").read_text().splitlines()
    assert len(calls) == n_calls
    last = json.loads(calls[0])["messages"][-1]
    assert last["role"] == "assistant" and "\nAction Input: " in last["content"]
    # every loss token of every assistant message, split by true role
    n_loss = sum(len(v) for s in heldout
                 for v in independent_truth(fake_demo["tok"], s, fake_demo["roles"][s["id"]]).values())
    assert ho["tokens_reasoning"] + ho["tokens_boilerplate"] == n_loss
    assert ho["max_new_tokens"] > 8
    for r in ("sft", "rft"):
        for s in ("0", "1"):
            m = ho["runs"][r][s]
            for k in ("tf_acc_reasoning", "tf_acc_boilerplate", "call_exact_match", "turn_exact_match"):
                assert 0.0 <= m[k] <= 1.0, (r, s, k)
            assert m["tf_ce_reasoning"] > 0 and m["samples_with_call"] == n_calls
    # SFT and RFT are copies of the same model here: every difference is exactly zero
    for key, _, _ in HELDOUT_METRICS:
        d = ho["summary"][key]["rft_minus_sft"]
        assert d["mean"] == 0 and d["std"] == 0 and d["n"] == 2, key
        assert ho["summary"][key]["sft"]["mean"] == pytest.approx(ho["runs"]["sft"]["0"][key])


def test_markdown_tables_and_links(fake_demo):
    md = (fake_demo["demo"] / "report.md").read_text()
    ag = fake_demo["report"]["shad_agreement"]
    for head in ("## 1. SHAD labels vs the ground-truth roles", "## 2. SFT vs RFT on the held-out split",
                 "## 3. Pictures"):
        assert head in md
    assert f"| token accuracy | {ag['token_accuracy']:.3f} |" in md
    assert f"| reasoning recall | {ag['reasoning_recall']:.3f} |" in md
    assert "| metric | SFT | RFT | RFT − SFT |" in md
    assert "| call exact match |" in md and "| 1 | RFT |" in md
    assert "standard deviation" in md
    assert "![loss curves](curves.png)" in md and "](masks.html)" in md


def test_report_elsewhere_links_relative(fake_demo, tmp_path):
    rep = json.loads((fake_demo["demo"] / "report.json").read_text())
    md = markdown.render_markdown(rep, tmp_path / "sub")
    import os

    rel = os.path.relpath(fake_demo["demo"] / "curves.png", tmp_path / "sub")
    assert f"![loss curves]({Path(rel).as_posix()})" in md


def test_hand_checked_token_roles(fake_demo):
    from rft_ds.data.formats import read_conversations

    tok, roles = fake_demo["tok"], fake_demo["roles"]
    convs = read_conversations(fake_demo["data"] / "train.jsonl")
    conv, m = next((c, i) for c in convs for i, x in enumerate(c.messages)
                   if x["role"] == "assistant" and '"city": "' in x["content"])
    enc, offsets, classes = truths.token_truth(conv, tok, roles[conv.id])
    content = conv.messages[m]["content"]
    start = len(tok.apply_chat_template(conv.messages[:m], tokenize=False, add_generation_prompt=True))
    city_at = start + content.index('"city": "') + len('"city": "')
    city_end = start + content.index('"', city_at - start)
    city = [t for t in range(len(enc.input_ids)) if offsets[t][0] >= city_at and offsets[t][1] <= city_end]
    assert city and all(classes[t] == 1 for t in city)
    assert "".join(tok.decode([enc.input_ids[t]]) for t in city).replace(" ", "") == \
        content[city_at - start:city_end - start].replace(" ", "")
    action = [t for t in range(len(enc.input_ids)) if enc.msg_index[t] == m
              and tok.convert_ids_to_tokens(enc.input_ids[t]) == "Action"]
    assert action and all(classes[t] == 0 for t in action)
    im_end = [t for t in range(len(enc.input_ids)) if enc.msg_index[t] == m
              and tok.convert_ids_to_tokens(enc.input_ids[t]) == IM_END]
    assert len(im_end) == 1 and classes[im_end[0]] == 0
    assert all(c == -1 for c, mi in zip(classes, enc.msg_index) if mi < 0)


def test_token_truth_matches_independent_truth(fake_demo):
    from rft_ds.data.formats import read_conversations

    tok, roles = fake_demo["tok"], fake_demo["roles"]
    for conv in read_conversations(fake_demo["data"] / "train.jsonl"):
        enc, _, classes = truths.token_truth(conv, tok, roles[conv.id])
        ref = independent_truth(tok, {"messages": conv.messages}, roles[conv.id])
        for m, toks in ref.items():
            got = [(enc.input_ids[t], classes[t]) for t, mi in enumerate(enc.msg_index) if mi == m]
            assert got == toks, (conv.id, m)


def test_role_of_span_and_metrics():
    assert truths.role_of_span("0011", 0, 4) == 1   # tie -> reasoning
    assert truths.role_of_span("0001", 0, 4) == 0
    assert truths.role_of_span("0111", 1, 3) == 1
    assert truths.role_of_span("0111", 4, 4) == 0   # no content character (end-of-turn marker)
    m = agreement.agreement_metrics([1, 1, 1, 0, 0], [1, 0, 1, 1, 0], [2.0, 1.0, None, -1.0, -3.0])
    assert m["confusion"] == {"tp": 2, "fp": 1, "fn": 1, "tn": 1}
    assert m["token_accuracy"] == pytest.approx(3 / 5)
    assert m["reasoning_precision"] == pytest.approx(2 / 3) and m["reasoning_recall"] == pytest.approx(2 / 3)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["mean_ld_true_reasoning"] == pytest.approx(1.5) and m["mean_ld_true_boilerplate"] == pytest.approx(-2.0)
    s = stats.spread([1.0, 3.0, None])
    assert s == {"mean": 2.0, "std": pytest.approx(2 ** 0.5), "min": 1.0, "max": 3.0, "n": 2}
    assert stats.spread([0.5])["std"] is None and stats.spread([None])["mean"] is None


def test_teacher_forced_matches_plain_forward(fake_demo, tiny_dir):
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from rft_ds.data.formats import read_conversations

    tok, roles = fake_demo["tok"], fake_demo["roles"]
    encs = []
    for c in read_conversations(fake_demo["data"] / "heldout.jsonl")[:4]:
        enc, _, classes = truths.token_truth(c, tok, roles[c.id])
        enc.classes = classes
        encs.append(enc)
    one = teacher_forced(str(tiny_dir), encs, tok.pad_token_id, 1, torch.device("cpu"))
    batched = teacher_forced(str(tiny_dir), encs, tok.pad_token_id, 3, torch.device("cpu"), chunk=7)
    for k, v in one.items():
        assert batched[k] == pytest.approx(v, rel=1e-5), k
    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32).eval()
    ce, hit, n = 0.0, 0, 0
    with torch.no_grad():
        for e in encs:
            logits = model(torch.tensor([e.input_ids])).logits[0, :-1]
            sel = torch.tensor([c == 1 for c in e.classes[1:]])
            tgt = torch.tensor(e.input_ids[1:])[sel]
            ce += F.cross_entropy(logits[sel], tgt, reduction="sum").item()
            hit += int((logits[sel].argmax(-1) == tgt).sum())
            n += int(sel.sum())
    assert one["tokens_reasoning"] == n
    assert one["tf_ce_reasoning"] == pytest.approx(ce / n, rel=1e-5)
    assert one["tf_acc_reasoning"] == pytest.approx(hit / n)


def test_masks_token_mismatch_is_an_error(fake_demo):
    from rft_ds.data.formats import read_conversations
    from rft_ds.masks import read_masks

    masks = read_masks(fake_demo["demo"] / "masks.jsonl")
    convs = read_conversations(fake_demo["data"] / "train.jsonl")
    sid = next(iter(masks))
    bad = json.loads(json.dumps(masks))
    bad[sid]["turns"][0]["token_ids"][3] += 1
    with pytest.raises(MasksError, match=rf"{sid}.*message 2.*token 3"):
        agreement.shad_agreement(bad, convs, fake_demo["roles"], fake_demo["tok"])
    longer = json.loads(json.dumps(masks))
    t = longer[sid]["turns"][0]
    t["token_ids"].append(t["token_ids"][-1]), t["labels"].append(0), t["loss_diff"].append(0.0)
    with pytest.raises(MasksError, match="differ from re-tokenizing"):
        agreement.shad_agreement(longer, convs, fake_demo["roles"], fake_demo["tok"])


def test_missing_run_dir_is_a_clear_error(fake_demo, tmp_path, capsys):
    demo = tmp_path / "demo"
    shutil.copytree(fake_demo["demo"] / "base", demo / "base")
    rc = main(["demo-report", "--demo-dir", str(demo), "--data-dir", str(fake_demo["data"]), "--seeds", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "incomplete" in err and "sft-seed0" in err and "masks.jsonl" in err


def test_prefix_aware_truth_by_hand():
    from rft_ds.demo.truths import prefix_aware

    c = 'Thought: I need the TSLA price on 2025-09-21.\nAction: get_stock_price\nAction Input: {"symbol": "TSLA", "date": "2025-09-21"}'
    r = ("0" * 16 + "1" * 28 + "0" * 10 + "1" * 15 + "0" * 27 + "1" * 4 + "0" * 12 + "1" * 10 + "0" * 2)
    assert len(r) == len(c)
    got = prefix_aware(c, r)
    shown = "".join(ch if x == "1" else "_" for ch, x in zip(c, got))
    # the Thought's words and values stay reasoning (separators do not); the Action Input's values
    # repeat the Thought's, so they become boilerplate; the tool name is new text and stays
    assert shown == ("________________the_TSLA_price_on_2025_09_21__________get_stock_price"
                     + "_" * (len(c) - 69))


def _auc_brute(scores, truth):
    pos = [s for s, t in zip(scores, truth) if t == 1]
    neg = [s for s, t in zip(scores, truth) if t == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_roc_auc_equals_the_pairwise_count():
    import random

    rng = random.Random(3)
    for trial in range(60):
        n = rng.randint(2, 80)
        # few distinct values: many ties, within and across classes
        scores = [rng.choice([-2.0, -0.5, 0.0, 0.0, 0.25, 1.0, 3.0]) if trial % 2 else rng.gauss(0, 1)
                  for _ in range(n)]
        truth = [rng.randint(0, 1) for _ in range(n)]
        if len(set(truth)) < 2:
            assert stats.roc_auc(scores, truth) is None
            continue
        assert stats.roc_auc(scores, truth) == pytest.approx(_auc_brute(scores, truth), abs=1e-12)
    assert stats.roc_auc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0
    assert stats.roc_auc([1, 2, 3, 4], [1, 1, 0, 0]) == 0.0
    assert stats.roc_auc([5, 5, 5, 5], [1, 0, 1, 0]) == 0.5


def test_fake_demo_auc_and_three_truths(fake_demo):
    ag = fake_demo["report"]["shad_agreement"]
    # LD is +1 on every true reasoning token and -0.5 on every true boilerplate one: perfect ranking
    assert ag["ld_roc_auc"] == 1.0 and ag["ld_tokens"] == ag["tokens"]
    for truth in ("prefix_aware", "needs_input"):
        other = ag[truth]
        assert other["tokens"] == ag["tokens"]
        assert 0.5 < other["ld_roc_auc"] < 1.0  # the LD was built from the semantic truth only
        assert other["true_reasoning_share"] < ag["true_reasoning_share"]
    md = (fake_demo["demo"] / "report.md").read_text()
    assert "| metric | semantic truth | prefix-aware truth | needs-input truth |" in md
    assert f"| LD ROC AUC | {ag['ld_roc_auc']:.3f} |" in md
    assert "needs-input" in md and "needs_input.py:needs_input" in md


def test_needs_input_token_rule(fake_demo):
    """Under the needs-input truth a token is reasoning if any character is; the end-of-turn token
    takes the end-of-message character."""
    assert truths.role_of_span("0010", 0, 4, "any") == 1 and truths.role_of_span("0010", 0, 4) == 0
    assert truths.role_of_span("0000", 4, 4, "any", end=1) == 1 and truths.role_of_span("0000", 4, 4) == 0
    from rft_ds.data.formats import read_conversations
    from rft_ds.demo.needs_input import needs_input

    tok, roles = fake_demo["tok"], fake_demo["roles"]
    conv = read_conversations(fake_demo["data"] / "train.jsonl")[0]
    derived = truths.needs_input_roles(conv, roles[conv.id])
    assert set(derived) == set(roles[conv.id])
    enc, offsets, classes = truths.token_truth(conv, tok, derived, rule="any")
    for m, r in derived.items():
        m = int(m)
        content = conv.messages[m]["content"]
        assert r == needs_input(content)
        toks = [t for t, mi in enumerate(enc.msg_index) if mi == m and t >= 1]
        assert classes[toks[-1]] == int(r[-1])  # the end-of-turn token
        start = len(tok.apply_chat_template(conv.messages[:m], tokenize=False, add_generation_prompt=True))
        for t in toks[:-1]:
            a, b = offsets[t]
            assert classes[t] == int("1" in r[max(a - start, 0):min(b - start, len(content))])


def test_model_description_reads_the_fetch_record(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 30,
                                                      "hidden_size": 576, "vocab_size": 49152,
                                                      "tie_word_embeddings": True, "dtype": "float32"}))
    (tmp_path / "rft_ds_fetch.json").write_text(json.dumps({"name": "smollm2-135m", "parameters": 134515008,
                                                            "note": "Q4_1 GGUF dequantized to fp32"}))
    d = rp.model_description(tmp_path)
    assert d["name"] == "smollm2-135m" and d["architecture"]["num_hidden_layers"] == 30
    rep = {"command": "x", "demo_dir": "d", "data_dir": "e", "model": d, "settings": {"SHAD_STEPS": "40"},
           "phase_timings_s": [["shad", 100.0], ["label", 50.0]]}
    md = markdown.report_header(rep)
    assert "smollm2-135m" in md and "30 layers" in md and "134,515,008 parameters" in md
    assert "Q4_1 GGUF dequantized to fp32" in md and "| `SHAD_STEPS` | `40` |" in md
    assert "| total (phases so far) | 150 |" in md


def test_needs_input_breakdown(fake_demo):
    from rft_ds.data.formats import read_conversations
    from rft_ds.masks import read_masks

    masks = read_masks(fake_demo["demo"] / "masks.jsonl")
    convs = read_conversations(fake_demo["data"] / "train.jsonl")
    bd = agreement.needs_input_breakdown(masks, convs, fake_demo["tok"])
    ni = fake_demo["report"]["shad_agreement"]["needs_input"]
    c = ni["confusion"]
    assert bd["value"]["tokens"] + bd["template_choice"]["tokens"] == c["tp"] + c["fn"]
    recalled = bd["value"]["reasoning_recall"] * bd["value"]["tokens"] + \
        bd["template_choice"]["reasoning_recall"] * bd["template_choice"]["tokens"]
    assert recalled == pytest.approx(c["tp"])
    assert 0.5 < bd["ld_roc_auc_values_only"] <= 1.0
    assert ni["breakdown"] == json.loads(json.dumps(bd))
    assert "template-choice" in (fake_demo["demo"] / "report.md").read_text()
