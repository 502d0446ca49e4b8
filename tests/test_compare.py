"""`rft-ds compare-report` and recipes/compare/run.sh.

The report on a hand-built comparison directory: four real tiny "runs" (the tiny Llama trained a few
Adam steps in this process, each with its own seed and learning rate, saved as final/ beside a
metrics.jsonl whose wall times are known), measured by the command and, independently, by calling
`teacher_forced` and `evaluate` directly on encodings and tool-call turns built here; the table's
mean ± std against `statistics`. Then the missing-run error, the recipe's shape and budget (the
demo's), and the recipe end to end in tiny mode (`MODEL_KIND=tiny`, one seed, 3 steps per variant:
it trains the rho1 arm, so it needs `rft-ds train --loss rho1`)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest

from launchutil import ROOT, env
from rft_ds.cli import main
from rft_ds.demo import compare as cp
from rft_ds.errors import ConfigError, DataError

DEMO_DATA = ROOT / "data" / "demo"
N_HELDOUT, MAX_SAMPLES, MAX_NEW_TOKENS, BATCH = 8, 4, 8, 4
VARIANTS, SEEDS = ["sft", "dft"], [0, 1]
WALL = {("sft", 0): 12.5, ("sft", 1): 14.0, ("dft", 0): 20.25, ("dft", 1): 17.0}  # last elapsed_s of each run
LR = {"sft": 3e-3, "dft": 1e-2}


def _train_tiny(src: Path, dst: Path, lr: float, seed: int, steps: int = 12) -> None:
    """A real tiny "run": the tiny Llama after `steps` Adam steps on demo training samples (plain
    Hugging Face + PyTorch), saved with its tokenizer to `dst`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(src))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    samples = [json.loads(x)["messages"] for x in (DEMO_DATA / "train.jsonl").read_text().splitlines()[:24]]
    for step in range(steps):
        text = tok.apply_chat_template(samples[(seed * 5 + step) % len(samples)], tokenize=False)
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"][:256]])
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(str(dst), safe_serialization=True)
    tok.save_pretrained(str(dst))


@pytest.fixture(scope="module")
def fake_compare(tmp_path_factory, tiny_dir):
    root = tmp_path_factory.mktemp("compare")
    data, runs = root / "data", root / "runs"
    data.mkdir()
    heldout = DEMO_DATA.joinpath("heldout.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:N_HELDOUT]
    (data / "heldout.jsonl").write_text("".join(heldout), encoding="utf-8")
    ids = {json.loads(x)["id"] for x in heldout}
    (data / "roles.jsonl").write_text("".join(x for x in DEMO_DATA.joinpath("roles.jsonl").read_text().splitlines(True)
                                              if json.loads(x)["id"] in ids), encoding="utf-8")
    for (v, s), wall in WALL.items():
        d = runs / f"{v}-seed{s}"
        _train_tiny(tiny_dir, d / "final", LR[v], s)
        rows = [{"step": k, "loss": 5.0 - k, "elapsed_s": round(wall * k / 3, 3)} for k in (1, 2, 3)]
        text = "".join(json.dumps(r) + "\n" for r in rows)
        if (v, s) == ("sft", 1):
            text += '{"step": 4, "elapsed_s": 99'  # a torn last line (a crash mid-append) is not a step
        (d / "metrics.jsonl").write_text(text)
    (runs / "timings.tsv").write_text("shad-masks\t51\nregex-label\t7\n")
    train = root / "train.jsonl"
    train.write_text("".join(DEMO_DATA.joinpath("train.jsonl").read_text().splitlines(True)[:5]))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["compare-report", "--compare-dir", str(runs), "--data-dir", str(data), "--base", str(tiny_dir),
                   "--variants", *VARIANTS, "--seeds", *map(str, SEEDS), "--train-data", str(train),
                   "--max-samples", str(MAX_SAMPLES), "--max-new-tokens", str(MAX_NEW_TOKENS),
                   "--batch-size", str(BATCH), "--setting", "TRAIN_STEPS=3"])
    return {"rc": rc, "stdout": out.getvalue(), "runs": runs, "data": data, "train": train,
            "rep": json.loads((runs / "compare.json").read_text()), "md": (runs / "compare.md").read_text()}


@pytest.fixture(scope="module")
def direct(fake_compare, tiny_dir, tmp_path_factory):
    """Every run measured without the compare code: encodings from `token_truth`, the tool-call turns
    picked here from the raw messages, `teacher_forced` and `evaluate` called directly."""
    import torch

    from rft_ds.data.formats import read_conversations
    from rft_ds.demo.heldout import teacher_forced
    from rft_ds.demo.truths import read_roles, token_truth
    from rft_ds.modeling import load_tokenizer
    from rft_ds.tools.evaluate import evaluate

    tok = load_tokenizer(str(tiny_dir))
    roles = read_roles(fake_compare["data"] / "roles.jsonl")
    convs = read_conversations(fake_compare["data"] / "heldout.jsonl")[:MAX_SAMPLES]
    encs = []
    for c in convs:
        enc, _, classes = token_truth(c, tok, roles[c.id])
        enc.classes = classes
        encs.append(enc)
    calls = [{"id": f"{c.id}@{k}", "messages": c.messages[:k + 1]} for c in convs for k, m in enumerate(c.messages)
             if m["role"] == "assistant" and "\nAction: " in m["content"]]
    calls_file = tmp_path_factory.mktemp("direct") / "calls.jsonl"
    calls_file.write_text("".join(json.dumps(s) + "\n" for s in calls))
    out = {}
    for v in VARIANTS:
        for s in SEEDS:
            model_dir = str(fake_compare["runs"] / f"{v}-seed{s}" / "final")
            tf = teacher_forced(model_dir, encs, tok.pad_token_id, 1, torch.device("cpu"))
            ev = evaluate(model_dir, str(calls_file), max_new_tokens=MAX_NEW_TOKENS, batch_size=BATCH,
                          dtype="float32", quiet=True)
            out[(v, s)] = {**tf, "call_exact_match": ev["call_exact_match"], "args_exact_match": ev["args_exact_match"],
                           "name_accuracy": ev["name_accuracy"], "turn_exact_match": ev["exact_match"],
                           "train_wall_s": WALL[(v, s)]}
    return {"runs": out, "n_calls": len(calls)}


def test_report_writes_files(fake_compare):
    assert fake_compare["rc"] == 0
    runs = fake_compare["runs"]
    for name in ("compare.md", "compare.json", "eval/heldout-calls.jsonl", "eval/sft-seed0.jsonl",
                 "eval/dft-seed1.jsonl.summary.json"):
        assert (runs / name).is_file(), name
    assert fake_compare["md"].strip() in fake_compare["stdout"]
    assert not list(runs.glob(".*.tmp")), "atomic writes leave no temp file"


def test_per_seed_numbers_equal_the_direct_measurement(fake_compare, direct):
    rep = fake_compare["rep"]
    assert rep["heldout"]["samples"] == MAX_SAMPLES and rep["heldout"]["call_turns"] == direct["n_calls"]
    assert rep["heldout"]["max_new_tokens"] == MAX_NEW_TOKENS
    assert rep["train_data"] == {"path": str(fake_compare["train"]), "samples": 5}
    tf_keys = ("tokens_reasoning", "tokens_boilerplate", "tf_acc_reasoning", "tf_acc_boilerplate", "tf_ce_reasoning",
               "tf_ce_boilerplate", "tf_acc_all", "tf_ce_all")
    for (v, s), want in direct["runs"].items():
        got = rep["runs"][v][str(s)]
        for k in tf_keys:
            assert got[k] == pytest.approx(want[k], rel=1e-5), (v, s, k)
        for k in ("call_exact_match", "args_exact_match", "name_accuracy", "turn_exact_match", "train_wall_s"):
            assert got[k] == want[k], (v, s, k)
        assert got["train_steps"] == 3
    # the runs differ: the table is not comparing copies
    assert len({direct["runs"][r]["tf_ce_all"] for r in direct["runs"]}) == 4
    assert min(direct["runs"][r]["tf_acc_boilerplate"] for r in direct["runs"]) > 0.05


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values)


def test_mean_and_std_are_plain_statistics(fake_compare, direct):
    summary = fake_compare["rep"]["summary"]
    for v in VARIANTS:
        for k in ("tf_acc_reasoning", "tf_acc_boilerplate", "call_exact_match", "args_exact_match", "train_wall_s"):
            m, sd = _stats([direct["runs"][(v, s)][k] for s in SEEDS])
            got = summary[v][k]
            assert got["n"] == 2 and got["mean"] == pytest.approx(m, rel=1e-5, abs=1e-12), (v, k)
            assert got["std"] == pytest.approx(sd, rel=1e-4, abs=1e-12), (v, k)
    assert summary["dft"]["train_wall_s"]["mean"] == pytest.approx(18.625)


def test_markdown_table_has_a_row_per_variant(fake_compare, direct):
    md = fake_compare["md"]
    assert ("| method | tool-call exact match | argument exact match | reasoning-token accuracy | "
            "boilerplate-token accuracy | training wall time (s) |") in md
    for v, label in (("sft", "SFT"), ("dft", "DFT")):
        cells = []
        for k in ("call_exact_match", "args_exact_match", "tf_acc_reasoning", "tf_acc_boilerplate", "train_wall_s"):
            m, sd = _stats([direct["runs"][(v, s)][k] for s in SEEDS])
            d = 0 if k == "train_wall_s" else 3
            cells.append(f"{m:.{d}f} ± {sd:.{d}f} (n=2)")
        row = f"| {label} (`{v}`) | " + " | ".join(cells) + " |"
        assert row in md, (row, md)
    assert len(re.findall(r"^\| (SFT|DFT) \(`", md, flags=re.M)) == 2
    assert "| shad-masks | 51 |" in md and "| `TRAIN_STEPS` | `3` |" in md
    assert re.search(r"This report took \d+ s \(measuring 4 of the 4 runs\)", md)
    assert fake_compare["rep"]["timing_s"]["report_s"] > 0


def test_saved_measurements_are_reused_until_a_model_or_setting_changes(fake_compare, tiny_dir, tmp_path, capsys):
    """A second report measures nothing it measured before (same numbers, per-sample files untouched);
    a moved directory, a touched model file or another generation limit is measured again, and
    --remeasure measures everything."""
    runs = tmp_path / "runs"
    shutil.copytree(fake_compare["runs"], runs)  # keeps mtimes: only the model paths changed

    def report(*extra, max_new=MAX_NEW_TOKENS):
        rc = main(["compare-report", "--compare-dir", str(runs), "--data-dir", str(fake_compare["data"]),
                   "--base", str(tiny_dir), "--variants", *VARIANTS, "--seeds", *map(str, SEEDS),
                   "--max-samples", str(MAX_SAMPLES), "--max-new-tokens", str(max_new), "--batch-size", str(BATCH),
                   *extra])
        assert rc == 0
        rep = json.loads((runs / "compare.json").read_text())
        err = capsys.readouterr().err
        return rep, sorted(f"{v}-seed{s}" for v in VARIANTS for s in SEEDS
                           if f"{v}-seed{s}: call exact match" in err and f"(reused {v}-seed{s}.measured.json" not in err)

    def numbers(rep):
        return {(v, s): {k: x for k, x in r.items() if k not in ("measured", "model_dir")}
                for v in VARIANTS for s, r in rep["runs"][v].items()}

    every = sorted(f"{v}-seed{s}" for v in VARIANTS for s in SEEDS)
    rep1, fresh = report()
    assert fresh == every  # moved: the model paths are part of the key
    stamp = {p.name: p.stat().st_mtime_ns for p in (runs / "eval").glob("*-seed*.jsonl")}
    rep2, fresh = report()
    assert fresh == [] and {r["measured"] for v in VARIANTS for r in rep2["runs"][v].values()} == {"reused"}
    assert numbers(rep2) == numbers(rep1)  # exactly: read back, not recomputed
    for run, want in numbers(fake_compare["rep"]).items():
        assert numbers(rep1)[run] == pytest.approx(want), run
    assert {p.name: p.stat().st_mtime_ns for p in (runs / "eval").glob("*-seed*.jsonl")} == stamp
    assert re.search(r"measuring 0 of the 4 runs; 4 measurements reused", (runs / "compare.md").read_text())
    weights = runs / "dft-seed1" / "final" / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert report()[1] == ["dft-seed1"]
    assert report(max_new=MAX_NEW_TOKENS - 2)[1] == every
    assert report("--remeasure", max_new=MAX_NEW_TOKENS - 2)[1] == every


def test_missing_runs_are_one_error_listing_every_path(fake_compare, tmp_path, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(fake_compare["runs"] / "sft-seed0", runs / "sft-seed0")
    shutil.copytree(fake_compare["runs"] / "sft-seed1" / "final", runs / "sft-seed1" / "final")
    (runs / "rft-seed0").mkdir()
    rc = main(["compare-report", "--compare-dir", str(runs), "--data-dir", str(fake_compare["data"]),
               "--base", str(runs / "sft-seed0" / "final"), "--variants", "sft", "rft", "--seeds", "0", "1"])
    err = capsys.readouterr().err
    assert rc == 2
    want = [runs / "sft-seed1" / "metrics.jsonl", runs / "rft-seed0" / "final", runs / "rft-seed0" / "metrics.jsonl",
            runs / "rft-seed1" / "final", runs / "rft-seed1" / "metrics.jsonl"]
    assert f"missing {len(want)}: " + ", ".join(map(str, want)) in err
    assert not (runs / "compare.md").exists()


def test_train_wall_and_option_errors(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    with pytest.raises(DataError, match=r"metrics.jsonl: field 'elapsed_s': no step row"):
        cp.train_wall(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "elapsed_s": 3.5}\n{"step": 2, "elapsed_s": "late"}\n')
    with pytest.raises(DataError, match=r"metrics.jsonl:2: field 'elapsed_s': expected seconds"):
        cp.train_wall(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "elapsed_s": 3.5}\n{"step": 2, "elapsed_s": 7.25}\n')
    assert cp.train_wall(tmp_path) == (7.25, 2)
    with pytest.raises(ConfigError, match="--variants has duplicates"):
        cp.build_compare(str(tmp_path), str(tmp_path), str(tmp_path), ["sft", "sft"], [0])
    with pytest.raises(ConfigError, match="'a/b' is not a run directory prefix"):
        cp.build_compare(str(tmp_path), str(tmp_path), str(tmp_path), ["a/b"], [0])
    assert cp.variant_label("regex-rft") == "Regex+RFT" and cp.variant_label("mine") == "mine"
    assert cp.cell({"mean": 0.5, "std": None, "n": 1}) == "0.500 (n=1)"


# ---------------------------------------------------------------------------------------------
# recipes/compare/run.sh

RECIPE = ROOT / "recipes" / "compare" / "run.sh"
SETTING = re.compile(r': "\$\{([A-Z_][A-Z0-9_]*):?=([^}]*)\}"')


def _defaults(path: Path) -> dict[str, str]:
    """NAME -> default of every `: "${NAME:=value}"` outside an `if` block."""
    out, depth = {}, 0
    for ln in path.read_text().splitlines():
        depth += bool(re.match(r"^\s*if\b", ln))
        if depth == 0:
            for name, value in SETTING.findall(ln):
                out.setdefault(name, value)
        depth -= bool(re.match(r"^\s*fi\b", ln) or re.search(r"\bfi\s*$", ln))
    return out


def test_recipe_is_thin_valid_and_uses_the_demo_budget():
    subprocess.run(["bash", "-n", str(RECIPE)], check=True)
    text = RECIPE.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    assert RECIPE.stat().st_mode & 0o111 and len(text.splitlines()) <= 120
    assert [ln for ln in text.splitlines() if re.match(r"^[A-Z_][A-Z0-9_]*=", ln)] == ["SETTINGS=()"], \
        "every budget is a `: \"${NAME:=default}\"` the environment overrides"
    mine, demo = _defaults(RECIPE), _defaults(ROOT / "recipes" / "demo" / "run.sh")
    for k in ("TRAIN_SAMPLES", "TRAIN_STEPS", "TRAIN_LR", "TRAIN_MICRO_BATCH", "TAU", "MAX_SEQ_LEN", "DS_CONFIG",
              "PRECISION", "RANKS", "EVAL_SAMPLES", "MAX_NEW_TOKENS", "EVAL_BATCH"):
        assert mine[k] == demo[k], (k, mine[k], demo[k])
    assert mine["OUT"] == "outputs/compare" and mine["SEEDS"] == "0 1" and mine["KEEP_RATIO"] == "0.6"
    assert mine["VARIANTS"] == "sft rft weighted regex-rft rho1 dft" and mine["W_REASONING"] == "0.5"
    assert '--loss rho1 --reference "$OUT/sft-seed$seed/final" --keep-ratio "$KEEP_RATIO"' in text
    assert '--loss rft --masks "$OUT/regex-masks.jsonl"' in text and "--method regex" in text


def test_recipe_refuses_an_unknown_variant_before_any_work(tmp_path):
    r = subprocess.run(["bash", str(RECIPE)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL,
                       env=env({"OUT": str(tmp_path / "out"), "VARIANTS": "sft rtf", "MODEL": str(tmp_path)}))
    assert r.returncode == 2 and "unknown variant 'rtf'" in r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.launch
def test_compare_recipe_end_to_end_tiny(tmp_path):
    """MODEL_KIND=tiny, one seed, 3 steps: SHAD masks through the demo recipe, regex masks, the six
    variants (rho1 with the SFT run as its reference), the report; then a rerun keeps every run and
    every measurement.
    Needs `rft-ds train --loss rho1 --reference DIR --keep-ratio K`."""
    out = tmp_path / "out"
    e = env({"OUT": str(out), "MODEL_KIND": "tiny", "HIDDEN": "64", "EVAL_SAMPLES": "4", "MAX_NEW_TOKENS": "8",
             "EVAL_BATCH": "4"})
    for k in ("MODEL", "SEEDS", "VARIANTS", "MASKS", "FORCE", "TRAIN_STEPS"):
        e.pop(k, None)
    r = subprocess.run(["bash", str(RECIPE)], cwd=ROOT, capture_output=True, text=True, timeout=900,
                       stdin=subprocess.DEVNULL, env=e)
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    rep = json.loads((out / "compare.json").read_text())
    variants = ["sft", "rft", "weighted", "regex-rft", "rho1", "dft"]
    assert rep["variants"] == variants and rep["seeds"] == [0]
    for v in variants:
        run = json.loads((out / f"{v}-seed0" / "run.json").read_text())
        assert rep["runs"][v]["0"]["train_steps"] == 3, v
        assert f"--data {out}/demo/train.jsonl" in run["config"]["command"], v
    cmd = {v: json.loads((out / f"{v}-seed0" / "run.json").read_text())["config"]["command"] for v in variants}
    assert f"--reference {out}/sft-seed0/final --keep-ratio 0.6" in cmd["rho1"]
    assert f"--masks {out}/regex-masks.jsonl" in cmd["regex-rft"] and "--w-reasoning 0.5" in cmd["weighted"]
    assert json.loads((out / "regex-masks.jsonl.meta.json").read_text())["method"] == "regex"
    phases = [ln.split("\t")[0] for ln in (out / "timings.tsv").read_text().splitlines()]
    assert phases == ["shad-masks", "regex-label"] + [f"{v}-seed0" for v in variants] + ["report"]
    assert "| Rho-1 (`rho1`) |" in (out / "compare.md").read_text()
    # rerun: every final/ is kept, only the labels and the report run again
    mtimes = {v: (out / f"{v}-seed0" / "metrics.jsonl").stat().st_mtime_ns for v in variants}
    r = subprocess.run(["bash", str(RECIPE)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       stdin=subprocess.DEVNULL, env=e)
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    assert {v: (out / f"{v}-seed0" / "metrics.jsonl").stat().st_mtime_ns for v in variants} == mtimes
    assert [ln.split("\t")[0] for ln in (out / "timings.tsv").read_text().splitlines()] == \
        ["shad-masks", "regex-label", "report"]
    assert "measuring 0 of the 6 runs; 6 measurements reused" in (out / "compare.md").read_text()
