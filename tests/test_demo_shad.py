"""SHAD on data whose token roles are known: the tiny-model demo's own steps (0)-(2), run by its
recipe (`STOP_AFTER=label bash recipes/demo/run_tiny.sh`: tiny base warmed on fresh tasks in another
style, SHAD tuning on shuffled pairs, labeling, all 2-rank ZeRO-3 launches), then the labels
compared with the generator's ground truth (`data/demo/roles.jsonl`).

Thresholds, stated honestly: the labels are far above chance, not near the paper's <3% error. Two
demo runs on this machine gave, against the semantic truth: token accuracy 0.718 and 0.709 (labeling
every token boilerplate: 0.549), balanced accuracy 0.696 / 0.686 (chance: 0.5), reasoning precision
0.825 / 0.813, boilerplate recall 0.917 / 0.913, mean LD -6.2 / -6.4 nats on true boilerplate vs -0.52
on true reasoning (the second run after the per-rank CPU thread change, which moves float rounding).
The limit is the tiny base model: it barely copies values from its input (see the demo report and the
issue notes), so true reasoning tokens often have LD <= 0. The assertions sit ~0.02-0.06 below the
lower run, for float noise on other CPUs.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from launchutil import ROOT, env

pytestmark = pytest.mark.launch


def test_demo_shad_labels_agree_with_the_known_roles(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run(["bash", str(ROOT / "recipes" / "demo" / "run_tiny.sh")], cwd=ROOT, capture_output=True, text=True,
                       timeout=1500, stdin=subprocess.DEVNULL, env=env({"OUT": str(out), "STOP_AFTER": "label"}))
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    assert "stopped after labeling" in r.stdout

    from rft_ds.data.formats import read_conversations
    from rft_ds.demo.agreement import shad_agreement
    from rft_ds.demo.truths import read_roles
    from rft_ds.masks import read_masks
    from rft_ds.modeling import load_tokenizer

    train = read_conversations(str(ROOT / "data" / "demo" / "train.jsonl"))
    masks = read_masks(out / "masks.jsonl")
    assert len(masks) == len(train) == 1200
    ag = shad_agreement(masks, train, read_roles(ROOT / "data" / "demo" / "roles.jsonl"),
                        load_tokenizer(str(out / "base" / "final")))
    print({k: ag[k] for k in ("token_accuracy", "balanced_accuracy", "reasoning_precision", "reasoning_recall",
                              "mean_ld_true_reasoning", "mean_ld_true_boilerplate")})
    majority = max(ag["true_reasoning_share"], 1 - ag["true_reasoning_share"])  # one label for every token
    assert ag["token_accuracy"] >= 0.69 and ag["token_accuracy"] >= majority + 0.12
    assert ag["balanced_accuracy"] >= 0.66                                       # chance: 0.5
    assert ag["reasoning_precision"] >= 0.75 and ag["boilerplate_recall"] >= 0.88
    # the mechanism: the shuffle-tuned model is far better than the base on template text only
    assert ag["mean_ld_true_boilerplate"] < ag["mean_ld_true_reasoning"] - 3.0
