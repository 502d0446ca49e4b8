"""A 2-rank ZeRO-3 run through `deepspeed --hostfile`: metrics, a final/ checkpoint that loads and
generates in a plain process, and SIGKILL + --resume continuing with the uninterrupted losses."""

from __future__ import annotations

import pytest

from launchutil import ROOT, ds_launch, head_lines, metrics, plain, rel

pytestmark = pytest.mark.launch
HOSTFILE = str(ROOT / "hostfiles" / "localhost")


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_dir):
    d = tmp_path_factory.mktemp("e2e")
    data = head_lines(ROOT / "data" / "demo" / "train.jsonl", d / "train.jsonl", 48)
    common = ["train", "--model", tiny_dir, "--data", data, "--deepspeed", ROOT / "ds_configs" / "zero3.json",
              "--micro-batch-size", 2, "--grad-accum", 2, "--max-steps", 6, "--save-steps", 2, "--lr", "3e-3",
              "--seed", 3]
    full = d / "full"
    ds_launch(common + ["--output", full], hostfile=HOSTFILE)
    return {"dir": d, "data": data, "common": common, "full": full, "model": tiny_dir}


def test_metrics_and_final_checkpoint(run):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = metrics(run["full"])
    assert [r["step"] for r in rows] == list(range(1, 7))
    for r in rows:
        assert r["samples"] == 8 and r["tokens"] > 0 and r["grad_norm"] > 0 and r["elapsed_s"] >= 0
        assert set(r) >= {"step", "loss", "grad_norm", "lr", "tokens", "samples", "elapsed_s"}
    assert rows[-1]["loss"] < rows[0]["loss"]  # it learns
    final = run["full"] / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    base = AutoModelForCausalLM.from_pretrained(run["model"])
    # the consolidated weights are the trained ones, not the initial ones, and complete
    sd, sd0 = model.state_dict(), base.state_dict()
    assert sd.keys() == sd0.keys()
    assert any(not torch.equal(sd[k], sd0[k]) for k in sd)
    msgs = [{"role": "user", "content": "Can you look up TSLA shares on 2025-09-21?"}]
    x = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**x, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > x["input_ids"].shape[1]
    # the final/ checkpoint's own forward agrees with the loss the run logged for it? (cheap sanity)
    assert (run["full"] / "checkpoints").is_dir() and (run["full"] / "run.json").exists()


def test_sigkill_after_checkpoint_then_resume_matches(run):
    out = run["dir"] / "killed"
    r = ds_launch(run["common"] + ["--output", out], hostfile=HOSTFILE, check=False,
                  extra_env={"RFT_DS_FAULT": "train-step:3"})
    assert r.returncode != 0
    assert [m["step"] for m in metrics(out)] == [1, 2, 3]
    assert not (out / "final").exists()
    # the same command without --resume refuses to clobber the unfinished run
    r = ds_launch(run["common"] + ["--output", out], hostfile=HOSTFILE, check=False)
    assert r.returncode != 0 and "--resume" in r.stderr + r.stdout
    ds_launch(run["common"] + ["--output", out, "--resume"], hostfile=HOSTFILE)
    got, want = metrics(out), metrics(run["full"])
    assert [m["step"] for m in got] == list(range(1, 7))  # step 3 (after the step-2 checkpoint) redone once
    for a, b in zip(got, want):
        assert rel(a["loss"], b["loss"]) <= 1e-6, (a, b)
        assert rel(a["grad_norm"], b["grad_norm"]) <= 1e-5, (a, b)
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-9)


def test_bad_data_fails_with_file_and_line(run, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}\n'
                   '{"messages": [{"role": "user", "content": "hi"}, {"role": "wizard", "content": "x"}]}\n')
    r = plain(["train", "--model", run["model"], "--data", bad, "--output", tmp_path / "o", "--max-steps", 1],
              check=False)
    assert r.returncode == 2
    assert f"{bad}:2: field 'messages[1].role': unknown role 'wizard'" in r.stderr
    assert not (tmp_path / "o" / "metrics.jsonl").exists()


def test_zero_stage0_trains_and_matches_zero3(run, tmp_path):
    """ZeRO stage 0 (ds_configs/zero0.json) has no global grad norm: the step line prints "n/a"
    instead of crashing at the first log line, metrics.jsonl records null, and the step-1 loss is
    the ZeRO-3 run's."""
    out = tmp_path / "zero0"
    common = [a if a != ROOT / "ds_configs" / "zero3.json" else ROOT / "ds_configs" / "zero0.json"
              for a in run["common"]]
    # the same global batch of 8 as the 2-rank run (1 rank x micro-batch 4 x accumulation 2)
    r = plain(common + ["--output", out, "--max-steps", 2, "--micro-batch-size", 4])
    rows = metrics(out)
    assert [x["step"] for x in rows] == [1, 2] and all(x["grad_norm"] is None for x in rows)
    assert "grad_norm n/a" in r.stdout
    assert rel(rows[0]["loss"], metrics(run["full"])[0]["loss"]) < 1e-5
    assert (out / "final" / "model.safetensors").exists()
