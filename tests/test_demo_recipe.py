"""`make demo`'s recipe end to end (recipes/demo/run.sh): fetch -> SHAD -> label -> RFT + SFT ->
report, with every budget shrunk and the tiny model standing in for SmolLM2 (MODEL=..., FETCH_MODEL=""),
so the wiring `make demo` runs is checked in about two minutes. The SmolLM2 shapes are covered by
tests/test_smollm2.py; the report's numbers by tests/test_report.py. Here: each phase did what its
variables say (masks of exactly TRAIN_SAMPLES samples, TRAIN_STEPS steps of RFT and of SFT, the
report's three truths and held-out rows), and the TensorBoard curves that REPORT_TO=tensorboard
writes hold the same losses as metrics.jsonl, read back with TensorBoard's own event reader."""

from __future__ import annotations

import json
import subprocess

import pytest

from launchutil import ROOT, env

pytestmark = pytest.mark.launch

BUDGET = {"TRAIN_SAMPLES": "12", "SHAD_STEPS": "2", "SHAD_MICRO_BATCH": "2", "TRAIN_STEPS": "3",
          "TRAIN_MICRO_BATCH": "2", "LABEL_BATCH": "4", "EVAL_SAMPLES": "4", "MAX_NEW_TOKENS": "8",
          "EVAL_BATCH": "4", "MAX_SEQ_LEN": "256", "SEEDS": "0",
          "LABEL_RANKS": "1"}  # the 2-rank label launch is tested elsewhere; a plain process starts faster


def _tb_scalars(run_dir, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file under {run_dir / 'tensorboard'}"
    acc = EventAccumulator(str(files[0].parent))
    acc.Reload()
    assert tag in acc.Tags()["scalars"], acc.Tags()["scalars"]
    return {e.step: e.value for e in acc.Scalars(tag)}


def test_demo_recipe_runs_every_phase(tmp_path, tiny_dir):
    out = tmp_path / "demo"
    r = subprocess.run(["bash", str(ROOT / "recipes" / "demo" / "run.sh")], cwd=ROOT, capture_output=True, text=True,
                       timeout=1200, stdin=subprocess.DEVNULL,
                       env=env({"OUT": str(out), "MODEL": str(tiny_dir), "FETCH_MODEL": "", **BUDGET}))
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]

    from rft_ds.masks import read_masks

    train = [json.loads(x)["id"] for x in (ROOT / "data" / "demo" / "train.jsonl").read_text().splitlines()[:12]]
    assert list(read_masks(out / "masks.jsonl")) == train  # the first TRAIN_SAMPLES samples, in input order

    for loss in ("rft", "sft"):
        run = out / f"{loss}-seed0"
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
        steps = [x for x in rows if "loss" in x and "step" in x]
        assert [x["step"] for x in steps] == [1, 2, 3]
        assert (run / "final" / "config.json").is_file()
        tb = _tb_scalars(run, "train/loss")
        assert sorted(tb) == [1, 2, 3]
        for x in steps:  # float32 in the event file
            assert tb[x["step"]] == pytest.approx(x["loss"], rel=1e-6)

    rep = json.loads((out / "report.json").read_text(encoding="utf-8"))
    ag = rep["shad_agreement"]
    for truth in (ag, ag["prefix_aware"], ag["needs_input"]):
        assert truth["tokens"] > 0
        assert 0.0 <= truth["ld_roc_auc"] <= 1.0
    assert rep["settings"]["TRAIN_STEPS"] == "3" and rep["settings"]["SHAD_STEPS"] == "2"
    assert [p for p, _ in rep["phase_timings_s"]][:4] == ["fetch-model", "shad-train", "label", "rft-seed0"]
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "needs-input truth" in md and "LD ROC AUC" in md
    assert "The report itself took" in md
