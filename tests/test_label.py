"""The labeling pass through the real launcher: sharding, padding, input order, crash safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from launchutil import ROOT, ds_launch, env, head_lines, launch_cmd

pytestmark = pytest.mark.launch


@pytest.fixture(scope="module")
def lab(tmp_path_factory, tiny_dir):
    """A base model and a 'SHAD' model (the base after 2 SFT steps: any other model of the same
    tokenizer exercises the pass), and 37 samples."""
    d = tmp_path_factory.mktemp("label")
    data = head_lines(ROOT / "data" / "demo" / "train.jsonl", d / "train37.jsonl", 37)
    shad = d / "shad"
    ds_launch(["train", "--model", tiny_dir, "--data", data, "--output", shad, "--max-steps", 2,
               "--micro-batch-size", 4, "--lr", "5e-3"], nproc=1)
    return {"dir": d, "data": data, "base": tiny_dir, "shad": shad / "final"}


def _args(lab, out, *extra):
    return ["label", "--base", lab["base"], "--shad", lab["shad"], "--data", lab["data"], "--output", out,
            "--batch-size", 4, "--rounds-per-chunk", 1, *extra]


def test_label_37_samples_on_2_ranks(lab):
    from rft_ds.data.formats import read_conversations
    from rft_ds.data.render import encode_conversation, tokenizer_fingerprint
    from rft_ds.masks import read_masks, read_meta
    from rft_ds.modeling import load_tokenizer

    out = lab["dir"] / "masks.jsonl"
    r = ds_launch(_args(lab, out), nproc=2)
    assert "37 samples" in r.stdout and "labeled reasoning" in r.stdout
    lines = out.read_text().splitlines()
    assert len(lines) == 37
    convs = read_conversations(lab["data"])
    assert [json.loads(x)["id"] for x in lines] == [c.id for c in convs]  # input order
    masks = read_masks(out)
    tok = load_tokenizer(str(lab["base"]))
    fp = tokenizer_fingerprint(tok)
    for c in convs:
        rec, e = masks[c.id], encode_conversation(c, tok, 4096)
        assert rec["tokenizer"] == fp
        assert [t["message"] for t in rec["turns"]] == [i for i, m in enumerate(c.messages) if m["role"] == "assistant"]
        for t in rec["turns"]:
            assert t["token_ids"] == e.turn_tokens(t["message"])
            assert len(t["labels"]) == len(t["loss_diff"]) == len(t["token_ids"]) > 0
            assert all(lab_ == int(ld > 0) for lab_, ld in zip(t["labels"], t["loss_diff"]))
    meta = read_meta(out)
    assert meta["samples"] == 37 and meta["shad"] == str(lab["shad"])
    assert not (lab["dir"] / "masks.jsonl.work").exists()
    # the LD values are real differences of two models: not all zero, both signs present
    lds = [x for rec in masks.values() for t in rec["turns"] for x in t["loss_diff"]]
    assert any(x > 0 for x in lds) and any(x < 0 for x in lds)
    lab["reference"] = out


def test_one_rank_gives_identical_file(lab):
    out = lab["dir"] / "masks-1rank.jsonl"
    ds_launch(_args(lab, out), nproc=1)
    assert out.read_bytes() == lab["reference"].read_bytes()


def test_replicated_models_give_identical_file(lab):
    """ds_configs/zero0.json keeps both models whole on every rank (no ZeRO-3 gathers): same bytes."""
    out = lab["dir"] / "masks-zero0.jsonl"
    r = ds_launch(_args(lab, out, "--deepspeed", ROOT / "ds_configs" / "zero0.json"), nproc=2)
    assert "ZeRO stage 0: whole on every rank" in r.stdout
    assert out.read_bytes() == lab["reference"].read_bytes()


def test_hf_style_auto_zero_buckets_partition_and_give_identical_file(lab):
    """An HF-Trainer-style config ("auto" ZeRO bucket sizes) is filled from the base model's hidden
    size; at hidden 32 that partitions every weight of the tiny model (the shipped zero3.json keeps
    them whole): the masks must not change by a byte."""
    cfg = json.loads((ROOT / "ds_configs" / "zero3.json").read_text())
    for key in ("reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold"):
        cfg["zero_optimization"][key] = "auto"
    path = lab["dir"] / "zero3-hf-auto.json"
    path.write_text(json.dumps(cfg))
    out = lab["dir"] / "masks-hf-auto.jsonl"
    ds_launch(_args(lab, out, "--deepspeed", path), nproc=2)
    assert out.read_bytes() == lab["reference"].read_bytes()


@pytest.mark.parametrize("kill_at", [0, 3])
def test_sigkill_then_rerun_is_byte_identical(lab, kill_at):
    """Rank 0 SIGKILLs itself right after writing chunk `kill_at` (a deterministic crash point);
    the launcher takes the other rank down; the same command again finishes the job."""
    out = lab["dir"] / f"masks-killed-{kill_at}.jsonl"
    r = ds_launch(_args(lab, out), nproc=2, check=False, extra_env={"RFT_DS_FAULT": f"label-chunk:{kill_at}"})
    assert r.returncode != 0
    assert not out.exists()  # nothing that looks complete
    work = lab["dir"] / f"masks-killed-{kill_at}.jsonl.work"
    assert len(list(work.glob("chunk-*.jsonl"))) == kill_at + 1
    r = ds_launch(_args(lab, out), nproc=2)
    assert f"{kill_at + 1} already done" in r.stdout
    assert out.read_bytes() == lab["reference"].read_bytes()


def test_external_sigkill_of_the_launch_mid_run(lab):
    """A real SIGKILL of the whole launch (launcher and ranks) once the first chunk is on disk."""
    out = lab["dir"] / "masks-extkill.jsonl"
    work = lab["dir"] / "masks-extkill.jsonl.work"
    p = subprocess.Popen(launch_cmd(_args(lab, out, "--batch-size", 1), 2), cwd=ROOT, env=env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and not list(work.glob("chunk-*.jsonl")) and p.poll() is None:
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    if out.exists():
        pytest.fail("the run finished before it could be killed; make it longer")
    ds_launch(_args(lab, out, "--batch-size", 1), nproc=2)
    ref = lab["dir"] / "masks-bs1.jsonl"
    ds_launch(_args(lab, ref, "--batch-size", 1), nproc=2)
    assert out.read_bytes() == ref.read_bytes()


def test_existing_output_is_refused(lab):
    r = ds_launch(_args(lab, lab["reference"]), nproc=1, check=False)
    assert r.returncode != 0 and "already exists" in r.stderr + r.stdout
