"""`rft-ds view` (masks -> HTML, checked statically and in real headless Chromium) and `rft-ds plot`.

Set RFT_DS_SCREENSHOT=1 to refresh docs/images/masks-view.png from the browser test.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from pathlib import Path

import pytest

from rft_ds.cli import main
from rft_ds.errors import ConfigError, DataError
from rft_ds.fsio import write_json
from rft_ds.masks import make_record, meta_path, read_masks
from rft_ds.tools import plot, view

import browser

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "docs" / "images" / "masks-view.png"
PAGE_SIZE = 10

# (question, reasoning for the call, tool, JSON input, tool output, reasoning for the answer, answer)
TASKS = [
    ("What is 17 * 23?", "to multiply 17 by 23, so I should use the calculator", "calculator",
     '{"expression": "17 * 23"}', "391", "the calculator says 17 * 23 = 391, which answers the question", "391"),
    ("What's the weather in Paris tomorrow?", "the forecast for Paris for tomorrow", "weather",
     '{"city": "Paris", "day": "tomorrow"}', "Light rain, 14 C", "tomorrow brings light rain at 14 degrees",
     "Light rain and about 14 C."),
    ("Find the population of Lyon.", "to look up the population of Lyon in the search tool", "search",
     '{"query": "Lyon population"}', "Lyon: 522,250 inhabitants (2021)",
     "the search result gives 522,250 people for 2021", "About 522,000 people (2021)."),
    ("Convert 5 miles to km.", "to convert miles to kilometres: 5 * 1.609", "calculator",
     '{"expression": "5 * 1.609"}', "8.045", "5 miles is 8.045 km", "5 miles is about 8.05 km."),
    ("Who wrote Dune?", "to search for the author of the novel Dune", "search",
     '{"query": "Dune novel author"}', "Dune (1965) by Frank Herbert",
     "the result names Frank Herbert as the author", "Frank Herbert wrote Dune."),
]


def _assistant_segments(task, k):
    q, why, tool, args, obs, why2, ans = task
    call = [("Thought: I need ", 0), (why, 1), (".\nAction: ", 0), (tool, 1), ("\nAction Input: ", 0), (args, 1)]
    final = [("Thought: ", 0), (why2.capitalize() if k % 2 else why2, 1), (".\nFinal Answer: ", 0), (ans, 1)]
    return call, final


def make_samples(n: int = 23) -> list[dict]:
    """ReAct-style agent samples; each assistant message is a list of (text, is_reasoning) segments."""
    out = []
    for k in range(n):
        task = TASKS[k % len(TASKS)]
        call, final = _assistant_segments(task, k)
        msgs = [{"role": "system", "content": "You are a helpful agent with tools: calculator, weather, search."},
                {"role": "user", "content": task[0] + (" Answer briefly <b>&</b> cite the tool." if k == 1 else "")},
                {"role": "assistant", "segments": call},
                {"role": "tool", "content": task[4] + ("\n<script>alert(1)</script>" if k == 1 else "")},
                {"role": "assistant", "segments": final}]
        out.append({"id": f"agent-{k:03d}", "messages": msgs})
    return out


def _data_line(sample: dict) -> dict:
    msgs = [{"role": m["role"], "content": m["content"] if "content" in m else "".join(t for t, _ in m["segments"])}
            for m in sample["messages"]]
    return {"id": sample["id"], "messages": msgs}


def _labels_for(tok, segments, rng):
    text = "".join(t for t, _ in segments)
    bounds, pos = [], 0
    for t, lab in segments:
        bounds.append((pos, pos + len(t), lab))
        pos += len(t)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = []
    for a, b in enc["offset_mapping"]:
        labels.append(next(lab for s, e, lab in bounds if s <= a < e))
    ids = list(enc["input_ids"]) + [tok.convert_tokens_to_ids("<|im_end|>")]
    labels.append(0)
    ld = [round(rng.uniform(0.15, 1.6) if lab else rng.uniform(-0.45, 0.08), 6) for lab in labels]
    return ids, labels, ld


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny model, a data file, and a hand-written masks file (with a truncated turn, a masks-only
    sample and a data-only sample)."""
    from transformers import AutoTokenizer

    from rft_ds.data.render import ensure_chat_template, tokenizer_fingerprint
    from rft_ds.tools.tiny import build_tiny_model

    d = tmp_path_factory.mktemp("viz")
    samples = make_samples()
    data = d / "agent.jsonl"
    lines = [_data_line(s) for s in samples]
    lines.append({"id": "unlabeled-1", "messages": [{"role": "user", "content": "Hi"},
                                                    {"role": "assistant", "content": "Hello! How can I help?"}]})
    data.write_text("".join(json.dumps(x) + "\n" for x in lines))
    model = d / "tiny"
    build_tiny_model(str(data), str(model), vocab_size=500, hidden_size=32, layers=1, heads=2)
    tok = AutoTokenizer.from_pretrained(str(model))
    ensure_chat_template(tok)
    fp = tokenizer_fingerprint(tok)

    rng = random.Random(0)
    records = []
    for k, s in enumerate(samples):
        turns = []
        for i, m in enumerate(s["messages"]):
            if m["role"] == "assistant":
                ids, labels, ld = _labels_for(tok, m["segments"], rng)
                if k == 2 and i == 4:  # cut by max_seq_len: the rest of the message is unlabeled
                    ids, labels, ld = ids[:9], labels[:9], ld[:9]
                turns.append({"message": i, "token_ids": ids, "labels": labels, "loss_diff": ld})
        records.append(make_record(s["id"], fp, turns))
    ids, labels, ld = _labels_for(tok, [("Thought: ", 0), ("a sample the data file lacks", 1)], rng)
    records.insert(5, make_record("ghost-1", fp, [{"message": 2, "token_ids": ids, "labels": labels,
                                                   "loss_diff": ld}]))
    masks = d / "masks.jsonl"
    masks.write_text("".join(json.dumps(r) + "\n" for r in records))
    write_json(meta_path(masks), {"base": str(model), "shad": str(d / "shad"), "margin": 0.1,
                                  "data": str(data), "tokenizer": fp})
    read_masks(masks)  # the hand-written file is valid
    return {"dir": d, "data": data, "masks": masks, "model": model, "tok": tok, "records": records}


def _view(world, out: Path, *extra) -> int:
    return main(["view", str(world["masks"]), "--data", str(world["data"]), "--output", str(out), *extra])


def _embedded(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="rft-data">(.*?)</script>', html, re.S)
    return json.loads(m.group(1))


def _main_section(html: str) -> str:
    return re.search(r"<main\b[^>]*>(.*?)</main>", html, re.S).group(1)


def _counts(fragment: str) -> tuple[int, int, int]:
    return tuple(len(re.findall(rf'class="tok tok-{c}"', fragment)) for c in "rbu")


def _expected(world, order_ids):
    by_id = {r["id"]: r for r in world["records"]}
    r = b = 0
    for sid in order_ids:
        for t in by_id.get(sid, {"turns": []})["turns"]:
            r += sum(t["labels"])
            b += len(t["labels"]) - sum(t["labels"])
    return r, b


@pytest.fixture(scope="module")
def page(world):
    out = world["dir"] / "view" / "masks.html"
    assert _view(world, out, "--tokenizer", str(world["model"]), "--page-size", str(PAGE_SIZE)) == 0
    return out


def test_view_static_html(world, page):
    html = page.read_text()
    assert "http://" not in html and "https://" not in html  # self-contained: no network
    data = _embedded(html)
    order = [s["id"] for s in data["samples"]]
    assert order == [r["id"] for r in world["records"]] + ["unlabeled-1"]  # masks order, then data-only

    # The static first page (readable without JS) has one span per labeled token of its samples.
    r, b, u = _counts(_main_section(html))
    assert (r, b) == _expected(world, order[:PAGE_SIZE])
    assert u >= 1  # the truncated turn of agent-002
    # Every token of every sample is embedded for the JS pages.
    all_r = sum(m.get("lab", "").count("1") for s in data["samples"] for m in s["msgs"])
    all_b = sum(m.get("lab", "").count("0") for s in data["samples"] for m in s["msgs"])
    assert (all_r, all_b) == _expected(world, order)

    # Token texts are the tokens decoded one by one, and they spell the message (+ end-of-turn marker).
    tok = world["tok"]
    s0 = data["samples"][0]
    m = s0["msgs"][2]
    pieces = [data["vocab"][str(i)] for i in m["ids"]]
    assert pieces == [tok.decode([i]) for i in m["ids"]]
    assert "".join(pieces) == json.loads(world["data"].read_text().splitlines()[0])["messages"][2]["content"] \
        + "<|im_end|>"
    assert "rest" not in m
    assert re.search(r'title="LD=[+-]\d\.\d{3} (reasoning|boilerplate) · token \d+"', html)
    t0 = world["records"][0]["turns"][0]
    first_title = re.search(r'<span class="tok tok-[rb]" title="([^"]*)"', _main_section(html)).group(1)
    assert first_title.startswith(f"LD={t0['loss_diff'][0]:+.3f} {'reasoning' if t0['labels'][0] else 'boilerplate'}")

    # The truncated turn: its unlabeled remainder is the rest of the message text.
    trunc = next(s for s in data["samples"] if s["id"] == "agent-002")["msgs"][4]
    full = json.loads(world["data"].read_text().splitlines()[2])["messages"][4]["content"]
    assert "".join(data["vocab"][str(i)] for i in trunc["ids"]) + trunc["rest"] == full

    # HTML in the conversation is escaped, never live markup.
    assert "<script>alert(1)</script>" not in html and "<b>&</b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html

    # Summary and mismatch lists at the top; newlines shown faithfully (pre-wrap + marker).
    head = html.split("<main", 1)[0]
    assert "ghost-1" in head and "unlabeled-1" in head and "not in --data" in head
    total = sum(len(t["labels"]) for r in world["records"] for t in r["turns"])
    assert f"{total:,}" in head and "labeled tokens" in head
    assert '<span class="nl"></span>\n' in html
    ghost = next(s for s in data["samples"] if s["id"] == "ghost-1")
    assert ghost["notes"] and ghost["msgs"][0]["ids"]
    unl = data["samples"][-1]
    assert unl["msgs"][1].get("nolabel") and unl["msgs"][1]["rest"] == "Hello! How can I help?"


def test_view_tokenizer_from_sidecar_and_errors(world, tmp_path, capsys):
    out = tmp_path / "v.html"
    assert _view(world, out, "--max-samples", "4") == 0  # tokenizer = 'base' from the sidecar
    assert len(_embedded(out.read_text())["samples"]) == 4
    assert "4 of 25" in out.read_text()

    bare = tmp_path / "bare.jsonl"
    shutil.copy(world["masks"], bare)  # no sidecar
    rc = main(["view", str(bare), "--data", str(world["data"]), "--output", str(tmp_path / "x.html")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "pass --tokenizer" in err and "sidecar" in err
    assert not (tmp_path / "x.html").exists()

    write_json(meta_path(bare), {"base": str(tmp_path / "gone")})
    rc = main(["view", str(bare), "--data", str(world["data"]), "--output", str(tmp_path / "x.html")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err

    rc = main(["view", str(tmp_path / "none.jsonl"), "--data", str(world["data"]), "--output", str(out)])
    assert rc == 2 and "masks file not found" in capsys.readouterr().err


def test_view_warns_on_other_tokenizer(world, tmp_path):
    lines = world["masks"].read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    for r in recs:
        r["tokenizer"] = "0123456789abcdef"
    m = tmp_path / "m.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "v.html"
    assert main(["view", str(m), "--data", str(world["data"]), "--output", str(out),
                 "--tokenizer", str(world["model"])]) == 0
    assert "fingerprint 0123456789abcdef" in out.read_text()


def test_uncovered_text():
    assert view.uncovered_text("abc def", ["abc", " def", "<|im_end|>"], True) == ""
    assert view.uncovered_text("abc def", ["abc", " d"], False) == "ef"
    assert view.uncovered_text("abc def", [], False) == "abc def"
    rest = view.uncovered_text("héllo world", ["h", "\ufffd", "\ufffd", "llo"], False)  # lossy decode: estimate
    assert rest and "héllo world".endswith(rest)


@pytest.fixture(scope="module")
def chromium():
    t0 = time.monotonic()
    path, why = browser.ensure_chromium(timeout=900)
    if not path:
        print(f"SKIP browser test: {why}")
        pytest.skip(why)
    print(f"chromium: {path} (ready in {time.monotonic() - t0:.1f}s)")
    return path


def test_view_in_headless_chromium(world, page, chromium, tmp_path, monkeypatch):
    data = _embedded(page.read_text())
    order = [s["id"] for s in data["samples"]]
    url = page.resolve().as_uri()

    dom = browser.dump_dom(chromium, url)
    main_tag = re.search(r"<main\b[^>]*>", dom).group(0)
    assert 'data-renderer="js"' in main_tag and 'data-page="1"' in main_tag  # the JS ran
    r, b, _ = _counts(_main_section(dom))
    assert (r, b) == _expected(world, order[:PAGE_SIZE])
    assert "page 1 of 3" in dom

    dom2 = browser.dump_dom(chromium, url + "#page=2")
    assert 'data-page="2"' in re.search(r"<main\b[^>]*>", dom2).group(0)
    sec = _main_section(dom2)
    assert (_counts(sec)[:2]) == _expected(world, order[PAGE_SIZE:2 * PAGE_SIZE])
    assert f'data-id="{order[PAGE_SIZE]}"' in sec and f'data-id="{order[0]}"' not in sec

    dom3 = browser.dump_dom(chromium, url + "#id=unlabeled-1")
    sec = _main_section(dom3)
    assert 'data-page="3"' in re.search(r"<main\b[^>]*>", dom3).group(0) and 'data-id="unlabeled-1"' in sec
    assert _counts(sec)[2] >= 1  # the unlabeled sample is grey

    png = tmp_path / "shot.png"
    browser.screenshot(chromium, url, str(png), 1200, 900)
    from PIL import Image

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as im:
        assert im.size == (1200, 900)
        colors = im.convert("RGB").getcolors(1 << 20)
    assert len(colors) > 50  # a rendered page, not a blank one
    if os.environ.get("RFT_DS_SCREENSHOT"):
        _save_readme_screenshot(world, chromium, tmp_path / "proj", monkeypatch)


def _save_readme_screenshot(world, chromium, proj: Path, monkeypatch):
    """The README picture: the same page, made from a project-like layout with relative paths."""
    from PIL import Image

    (proj / "data").mkdir(parents=True)
    shutil.copy(world["data"], proj / "data" / "agent.jsonl")
    shutil.copytree(world["model"], proj / "outputs" / "base")
    shutil.copy(world["masks"], proj / "outputs" / "masks.jsonl")
    write_json(meta_path(proj / "outputs" / "masks.jsonl"),
               {"base": "outputs/base", "shad": "outputs/shad", "margin": 0.1, "data": "data/agent.jsonl"})
    monkeypatch.chdir(proj)
    assert main(["view", "outputs/masks.jsonl", "--data", "data/agent.jsonl", "--output", "outputs/masks.html",
                 "--page-size", str(PAGE_SIZE)]) == 0
    png = proj / "shot.png"
    browser.screenshot(chromium, (proj / "outputs" / "masks.html").as_uri(), str(png), 1200, 900)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(png) as im:  # a palette PNG keeps the file small
        im.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(SCREENSHOT, optimize=True)
    assert SCREENSHOT.stat().st_size < 300_000
    print(f"saved {SCREENSHOT} ({SCREENSHOT.stat().st_size // 1024} KB)")


# --------------------------------------------------------------------------------------------------
# plot
# --------------------------------------------------------------------------------------------------


def _write_run(d: Path, n: int, classes: bool = True, rft: bool = False, extra: str = "") -> Path:
    d.mkdir(parents=True)
    rows = []
    for s in range(1, n + 1):
        row = {"step": s, "loss": 2.5 / (1 + 0.05 * s) + 0.05 * ((s * 7) % 5)}
        if classes:
            row.update(loss_r=3.0 / (1 + 0.03 * s), loss_b=1.5 / (1 + 0.2 * s))
        if rft:
            row.update(w_r=0.8, w_b=0.2)
        rows.append(row)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + extra)
    return d


def _check_png(path: Path, min_width: int = 300):
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] >= min_width and im.size[1] >= 200
        return im.size


def test_plot_runs(tmp_path, capsys):
    sft = _write_run(tmp_path / "sft", 60, classes=True)
    rft = _write_run(tmp_path / "rft", 60, classes=True, rft=True, extra='{"step": 61, "loss": 1.')  # torn tail
    plain = _write_run(tmp_path / "plain", 40, classes=False)
    out = tmp_path / "curves.png"
    assert main(["plot", str(sft), str(rft), str(plain), "--output", str(out), "--smooth", "5"]) == 0
    w3, _ = _check_png(out, min_width=900)
    printed = capsys.readouterr().out
    assert "'plain' has no loss_b/loss_r" in printed and "reasoning-token loss" in printed

    info = plot.plot_runs([str(plain)], str(tmp_path / "plain.png"), labels=["baseline"])
    assert info["panels"] == ["total loss"]
    w1, _ = _check_png(tmp_path / "plain.png")
    assert w1 < w3

    assert main(["plot", str(sft), str(rft), "--labels", "SFT", "RFT", "--output", str(out)]) == 0
    _check_png(out)


def test_plot_throughput_metrics(tmp_path, capsys):
    """`--metrics` draws the throughput columns a training run writes (tokens_per_s, samples_per_s,
    step_time_s, mfu): the series drawn are exactly the numeric values of metrics.jsonl, a null (mfu
    on CPU) is left out, and a column no run has is a clear error."""
    runs = []
    for name, speed in (("sft", 100.0), ("rft", 90.0)):
        d = tmp_path / name
        d.mkdir()
        rows = [{"step": s, "loss": 1.0 / s, "tokens_per_s": speed + s, "samples_per_s": 0.5 + 0.01 * s,
                 "step_time_s": 2.0 - 0.01 * s, "mfu": None if s < 3 else 0.1 * s} for s in range(1, 11)]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        runs.append(d)
    out = tmp_path / "speed.png"
    info = plot.plot_runs([str(d) for d in runs], str(out), metrics=["tokens_per_s", "step_time_s", "mfu"])
    _check_png(out, min_width=900)
    assert info["panels"][0].startswith("throughput")
    for d in runs:
        rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        for key in ("tokens_per_s", "step_time_s", "mfu"):
            want = [(r["step"], r[key]) for r in rows if r[key] is not None]
            xs, ys = info["series"][key][d.name]
            assert list(zip(xs, ys)) == want
    assert main(["plot", str(runs[0]), "--metrics", "samples_per_s", "--output", str(out)]) == 0
    capsys.readouterr()
    assert main(["plot", str(runs[0]), "--metrics", "no_such_column", "--output", str(tmp_path / "x.png")]) == 2
    assert "no_such_column" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_plot_errors(tmp_path, capsys):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    out = tmp_path / "c.png"
    with pytest.raises(DataError, match=r"empty_run/metrics\.jsonl.*metrics file not found"):
        plot.plot_runs([str(empty)], str(out))
    assert main(["plot", str(empty), "--output", str(out)]) == 2
    assert "metrics.jsonl" in capsys.readouterr().err
    assert not out.exists()

    with pytest.raises(DataError, match="run directory not found"):
        plot.plot_runs([str(tmp_path / "nope")], str(out))

    bad = _write_run(tmp_path / "bad", 5, extra="not json\n" + json.dumps({"step": 7, "loss": 1.0}) + "\n")
    with pytest.raises(DataError, match=r"bad/metrics\.jsonl:6: malformed JSON"):
        plot.plot_runs([str(bad)], str(out))

    nostep = tmp_path / "nostep"
    nostep.mkdir()
    (nostep / "metrics.jsonl").write_text('{"loss": 1.0}\n')
    with pytest.raises(DataError, match="'step'"):
        plot.plot_runs([str(nostep)], str(out))

    ok = _write_run(tmp_path / "ok", 5)
    with pytest.raises(ConfigError, match="--labels"):
        plot.plot_runs([str(ok)], str(out), labels=["a", "b"])
    with pytest.raises(ConfigError, match="--smooth"):
        plot.plot_runs([str(ok)], str(out), smooth=0)
    assert not out.exists()


def test_moving_average():
    assert plot.moving_average([1, 2, 3, 4], 2) == [1, 1.5, 2.5, 3.5]
    assert plot.moving_average([5.0], 10) == [5.0]
