"""The training engine through the real `deepspeed` launcher, ZeRO-3 on CPU (gloo).

The global batch (every micro-batch of every rank in one optimizer step) must give the same loss
and gradient however it is split over ranks, micro-batches and accumulation steps."""

from __future__ import annotations

import pytest

from launchutil import ROOT, ds_launch, head_lines, metrics, perturbed_copy, plain, rel, write_random_masks

pytestmark = pytest.mark.launch
SPLITS = [(1, 4, 1), (2, 2, 1), (1, 2, 2), (2, 1, 2)]  # ranks x micro-batch x accumulation


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_dir):
    d = tmp_path_factory.mktemp("engine")
    data = head_lines(ROOT / "data" / "demo" / "train.jsonl", d / "train.jsonl", 40)
    masks = d / "masks.jsonl"
    write_random_masks(data, tiny_dir, masks, seed=1)
    return {"dir": d, "data": data, "model": tiny_dir, "masks": masks}


def _step1(setup, name, ranks, mb, ga, extra=()):
    out = setup["dir"] / f"{name}-{ranks}x{mb}x{ga}"
    ds_launch(["train", "--model", setup["model"], "--data", setup["data"], "--output", out,
               "--deepspeed", ROOT / "ds_configs" / "zero3.json", "--micro-batch-size", mb, "--grad-accum", ga,
               "--max-steps", 1, "--lr", "1e-3", "--seed", 7, *extra], nproc=ranks)
    return metrics(out)[0]


def _assert_same(rows, keys=("loss", "grad_norm")):
    ref = rows[0]
    # the step really holds samples of different lengths, and the global batch is the same one
    assert len({r["tokens"] for r in rows}) == 1 and len({r["samples"] for r in rows}) == 1
    for r in rows[1:]:
        for k in keys:
            assert rel(r[k], ref[k]) <= 1e-5, (k, r[k], ref[k])


def test_sft_loss_and_grad_norm_equal_across_splits(setup):
    rows = [_step1(setup, "sft", *s) for s in SPLITS]
    _assert_same(rows)
    # the loss is the token mean over the global batch: its value is a plausible CE of a random model
    assert 3.0 < rows[0]["loss"] < 8.0


def test_rft_sample_equal_across_splits(setup):
    rows = [_step1(setup, "rfts", *s, extra=["--loss", "rft", "--masks", setup["masks"],
                                                "--rft-granularity", "sample"]) for s in SPLITS]
    _assert_same(rows, keys=("loss", "grad_norm", "loss_b", "loss_r", "w_b", "w_r"))
    r = rows[0]
    assert r["tokens_b"] > 0 and r["tokens_r"] > 0
    assert abs(r["w_b"] + r["w_r"] - 1) < 1e-9


def test_rft_batch_split_over_ranks(setup):
    rows = [_step1(setup, "rftb", *s, extra=["--loss", "rft", "--masks", setup["masks"],
                                                "--rft-granularity", "batch"]) for s in [(1, 4, 1), (2, 2, 1)]]
    _assert_same(rows, keys=("loss", "grad_norm", "loss_b", "loss_r", "w_b", "w_r"))
    r = rows[0]
    # batch mode with GA=1: loss = w_b L_b + w_r L_r with w = softmax([L_b, L_r] / tau), tau = 2
    import math

    eb, er = math.exp(r["loss_b"] / 2.0), math.exp(r["loss_r"] / 2.0)
    wb, wr = eb / (eb + er), er / (eb + er)
    assert rel(r["w_b"], wb) < 1e-6
    assert rel(r["loss"], wb * r["loss_b"] + wr * r["loss_r"]) < 1e-6


def test_weighted_sample_equal_across_splits(setup):
    rows = [_step1(setup, "wts", *s, extra=["--loss", "weighted", "--masks", setup["masks"], "--w-reasoning", 0.3])
            for s in SPLITS]
    _assert_same(rows, keys=("loss", "grad_norm", "sft_loss", "loss_b", "loss_r"))
    r = rows[0]
    assert r["tokens_b"] > 0 and r["tokens_r"] > 0
    assert abs(r["w_b"] - 0.7) < 1e-6 and abs(r["w_r"] - 0.3) < 1e-6  # the fixed weights (fp32), not a softmax
    assert r["loss"] != r["sft_loss"]


def test_weighted_batch_equal_across_ranks_and_accumulation(setup):
    """Fixed weights in batch mode: (1 - A) L_b + A L_r of the whole step, so unlike RFT's softmax
    weights the split into accumulation steps does not matter either."""
    rows = [_step1(setup, "wtb", *s, extra=["--loss", "weighted", "--masks", setup["masks"], "--w-reasoning", 0.3,
                                               "--rft-granularity", "batch"]) for s in [(1, 4, 1), (2, 1, 2)]]
    _assert_same(rows, keys=("loss", "grad_norm", "loss_b", "loss_r"))
    for r in rows:
        assert rel(r["loss"], 0.7 * r["loss_b"] + 0.3 * r["loss_r"]) < 1e-6


def test_dft_equal_across_splits(setup):
    # masks are optional, as with SFT: they only add the per-class metrics
    rows = [_step1(setup, "dft", *s, extra=["--loss", "dft", "--masks", setup["masks"]]) for s in SPLITS]
    _assert_same(rows, keys=("loss", "grad_norm", "sft_loss", "loss_b", "loss_r"))
    r = rows[0]
    # p CE < CE token by token (p = exp(-CE) < 1): the objective lies below the token-mean CE
    assert 0 < r["loss"] < r["sft_loss"] and "w_b" not in r


def test_rho1_equal_across_splits(setup):
    """Rho-1 keeps the top K of the global batch's tokens by excess loss over a reference model: the
    same tokens, loss and gradient whether the step is split over ranks or accumulation steps (the
    accumulation split takes the extra no-grad forward that sees the whole step first)."""
    ref = setup["dir"] / "rho1-reference"
    if not ref.exists():
        perturbed_copy(setup["model"], ref, seed=5, scale=0.3)
    rows = [_step1(setup, "rho1", *s, extra=["--loss", "rho1", "--reference", ref, "--keep-ratio", 0.6])
            for s in [(1, 4, 1), (2, 2, 1), (2, 1, 2)]]
    _assert_same(rows, keys=("loss", "grad_norm", "sft_loss", "kept", "excess_threshold"))
    r = rows[0]
    assert abs(r["kept"] * r["tokens"] - round(0.6 * r["tokens"])) < 0.5  # round(K N) tokens, no ties here
    assert r["loss"] != r["sft_loss"]


def test_masks_mismatch_and_missing_are_clear_errors(setup, tmp_path):
    base = ["train", "--model", setup["model"], "--data", setup["data"], "--max-steps", 1, "--micro-batch-size", 4,
            "--loss", "rft"]
    # masks made with a shorter --max-seq-len: the token ids of the truncated turns differ
    short = tmp_path / "short.jsonl"
    write_random_masks(setup["data"], setup["model"], short, seed=1, max_seq_len=300)
    r = plain(base + ["--masks", short, "--output", tmp_path / "a"], check=False)
    assert r.returncode == 2
    assert "sample 'demo-train-" in r.stderr and "--max-seq-len" in r.stderr
    # masks missing for some samples
    lines = setup["masks"].read_text().splitlines(keepends=True)
    part = tmp_path / "part.jsonl"
    part.write_text("".join(lines[:30]))
    r = plain(base + ["--masks", part, "--output", tmp_path / "b"], check=False)
    assert r.returncode == 2 and "no masks for 10 training samples" in r.stderr and "--missing-masks sft" in r.stderr
    # ... unless they are trained with the SFT loss, which the run records
    plain(base + ["--masks", part, "--output", tmp_path / "c", "--missing-masks", "sft"])
    import json

    assert json.loads((tmp_path / "c" / "run.json").read_text())["missing_masks"] == 10
    # a masks file for another tokenizer
    other = tmp_path / "other.jsonl"
    other.write_text("".join(x.replace(json.loads(x)["tokenizer"], "0123456789abcdef") for x in lines))
    r = plain(base + ["--masks", other, "--output", tmp_path / "d"], check=False)
    assert r.returncode == 2 and "relabel with this model's tokenizer" in r.stderr


def test_sft_equal_across_splits_with_every_parameter_partitioned(setup):
    """The shipped zero3.json keeps parameters under 1e5 elements whole on every rank
    (stage3_param_persistence_threshold), which is every weight of the tiny test model. Here nothing
    is persistent, so every forward all-gathers every weight, and the split equivalence must hold
    the same, with the same numbers as the shipped config."""
    import json

    cfg = json.loads((ROOT / "ds_configs" / "zero3.json").read_text())
    cfg["zero_optimization"].update(stage3_param_persistence_threshold=0, stage3_prefetch_bucket_size=2000,
                                    reduce_bucket_size=2000)
    path = setup["dir"] / "zero3-partition-all.json"
    path.write_text(json.dumps(cfg))
    rows = []
    for ranks, mb, ga in [(1, 4, 1), (2, 2, 1), (2, 1, 2)]:
        out = setup["dir"] / f"sftp-{ranks}x{mb}x{ga}"
        ds_launch(["train", "--model", setup["model"], "--data", setup["data"], "--output", out, "--deepspeed", path,
                   "--micro-batch-size", mb, "--grad-accum", ga, "--max-steps", 1, "--lr", "1e-3", "--seed", 7],
                  nproc=ranks)
        rows.append(metrics(out)[0])
    _assert_same(rows)
    _assert_same([rows[0], _step1(setup, "sft-shipped", 1, 4, 1)])
