"""Throughput, MFU, the progress display and the TensorBoard / CSV / W&B scalars (issue 16)."""

from __future__ import annotations

import csv
import json

import pytest

from launchutil import ROOT, head_lines, metrics, plain
from rft_ds.monitor import Progress, events, model_flop_counts, peak_flops, step_flops


def test_model_flop_count_matches_the_models_own_parameter_count():
    """P (no input embedding, the head counted) from the config equals counting a real HF model's
    parameters; an untied head is its own matrix, a tied one still costs its matmul."""
    import transformers as T

    cfg = T.LlamaConfig(vocab_size=101, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    model = T.LlamaForCausalLM(cfg)
    n = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    assert model_flop_counts(cfg) == (n, 3, 48)
    assert step_flops((n, 3, 48), tokens=10, sum_sq_len=4 ** 2 + 6 ** 2) == 6 * n * 10 + 12 * 3 * 48 * 52


def test_peak_table_and_override():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12  # the longest matching name wins
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops(None) is None and peak_flops("Some Future GPU") is None
    assert peak_flops(None, override_tflops=1.5) == 1.5e12


def test_plain_progress_lines_are_periodic(capsys):
    p = Progress(5, "step", every_s=3600, tty=False)
    for i in range(5):
        p.update(loss=1.0 / (i + 1), tokens_per_s=1234.5)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("step 1/5 loss 1") and lines[1].startswith("step 5/5 loss 0.2")
    assert "tokens_per_s 1234" in lines[0] and "eta" in lines[1]
    p = Progress(3, "label rounds", every_s=0, tty=False)
    for _ in range(3):
        p.update()
    assert len(capsys.readouterr().out.strip().splitlines()) == 3


def test_events_are_the_rows_scalars():
    row = {"step": 3, "loss": 1.5, "grad_norm": None, "tokens": 10, "epoch": 0.5, "w_b": 0.25}
    assert events(row) == [("train/loss", 1.5, 3), ("train/tokens", 10.0, 3), ("train/w_b", 0.25, 3)]


@pytest.fixture(scope="module")
def small(tmp_path_factory, tiny_dir):
    d = tmp_path_factory.mktemp("monitor")
    data = head_lines(ROOT / "data" / "demo" / "train.jsonl", d / "train.jsonl", 12)
    from launchutil import write_random_masks

    write_random_masks(data, tiny_dir, d / "masks.jsonl", seed=2)
    return {"dir": d, "data": data, "model": tiny_dir, "masks": d / "masks.jsonl"}


def _train(small, name, *extra, env=None):
    out = small["dir"] / name
    r = plain(["train", "--model", small["model"], "--data", small["data"], "--output", out, "--max-steps", 3,
               "--micro-batch-size", 4, "--lr", "1e-3", "--loss", "rft", "--masks", small["masks"],
               "--log-every-s", 0, "--peak-tflops", 0.05, *extra], extra_env=env)
    return out, r


def test_metrics_throughput_mfu_and_tensorboard_scalars_equal_metrics(small):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, r = _train(small, "tb", "--report-to", "tensorboard")
    rows = metrics(out)
    for row in rows:
        assert row["step_time_s"] > 0 and row["input_tokens"] > row["tokens"] > 0
        assert abs(row["tokens_per_s"] - row["input_tokens"] / row["step_time_s"]) < 0.01 * row["tokens_per_s"] + 0.1
        assert abs(row["samples_per_s"] - row["samples"] / row["step_time_s"]) < 0.01 * row["samples_per_s"] + 1e-3
        assert 0 < row["mfu"] < 1
    # every step printed a line (--log-every-s 0, not a terminal)
    assert [ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("step ")] == ["1/3", "2/3", "3/3"]
    runs = list((out / "tensorboard").iterdir())
    assert len(runs) == 1
    acc = EventAccumulator(str(runs[0]))
    acc.Reload()
    for key in ("loss", "loss_b", "loss_r", "w_b", "w_r", "sft_loss", "tokens_per_s", "mfu", "lr", "grad_norm"):
        got = [(e.step, e.value) for e in acc.Scalars(f"train/{key}")]
        want = [(row["step"], row[key]) for row in rows]
        assert [s for s, _ in got] == [s for s, _ in want]
        assert all(abs(g - w) <= 1e-6 * max(1.0, abs(w)) for (_, g), (_, w) in zip(got, want)), key


def test_csv_scalars_equal_metrics(small):
    out, _ = _train(small, "csv", "--report-to", "csv")
    rows = metrics(out)
    files = {p.name: p for p in (out / "csv").rglob("*.csv")}
    with open(files["train_loss.csv"]) as f:
        got = [(int(r[0]), float(r[1])) for r in list(csv.reader(f))[1:]]
    assert got == [(row["step"], pytest.approx(row["loss"], rel=1e-6)) for row in rows]
    assert "train_w_r.csv" in files and "train_tokens_per_s.csv" in files


def test_wandb_offline_writes_its_run_directory(small):
    out, _ = _train(small, "wandb", "--report-to", "wandb", env={"WANDB_API_KEY": "", "WANDB_SILENT": "true"})
    runs = list((out / "wandb").glob("offline-run-*"))  # WANDB_DIR = OUTPUT; wandb adds wandb/
    assert len(runs) == 1
    log = next(runs[0].glob("*.wandb")).read_bytes()  # the run's records (protobuf; `wandb sync` uploads it)
    for key in ("train/loss", "train/loss_r", "train/w_r", "train/tokens_per_s"):
        assert key.encode() in log, key


def test_report_to_respects_the_users_json_section(small, tmp_path):
    cfg = json.loads((ROOT / "ds_configs" / "zero3.json").read_text())
    cfg["tensorboard"] = {"enabled": True, "output_path": str(tmp_path / "mine"), "job_name": "kept"}
    (tmp_path / "ds.json").write_text(json.dumps(cfg))
    out, _ = _train(small, "tb-user", "--report-to", "tensorboard", "--deepspeed", tmp_path / "ds.json")
    assert (tmp_path / "mine" / "kept").is_dir() and not (out / "tensorboard").exists()
