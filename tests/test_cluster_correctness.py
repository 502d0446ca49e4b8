"""What a real cluster run needs and the tiny defaults never exercised, checked with real launches
and against independent references (plain Hugging Face + PyTorch in this process):

* every parameter partitioned (ZeRO-3, stage3_param_persistence_threshold 0), so every lm_head call
  all-gathers; a small --logits-chunk and micro-batch 1 over samples of different lengths, so the
  ranks need different numbers of head calls per forward (before the lockstep fix rank 1 aborted
  with gloo's "Is there a distributed collective mismatch in your code?");
* the engine's whole step-1 gradient vector, read back from a 1-step SGD run (lr 1, no clipping:
  the saved weights are p0 - g), equal to the gradient of the global-batch loss computed here
  from the HF model's own logits, for SFT, RFT-sample and RFT-batch, on two splits each, and for
  the fixed-weight, DFT and Rho-1 baselines (Rho-1 with its reference model, partitioned too);
* the labeling pass's every LD value against two plain HF forwards;
* the collective-device audit (tests/collective_audit) on in every 2-rank launch: a collective
  called by rft-ds with a tensor made without device= fails the run (NCCL would crash on it).
"""

from __future__ import annotations

import json
import math
import subprocess

import pytest
import torch
import torch.nn.functional as F

from launchutil import ROOT, BIN, ds_launch, env, head_lines, metrics, perturbed_copy, plain, write_random_masks

pytestmark = pytest.mark.launch
AUDIT = {"RFT_DS_AUDIT_COLLECTIVES": "1", "PYTHONPATH": str(ROOT / "tests" / "collective_audit")}
TAU = 2.0
W_R = 0.3  # --loss weighted --w-reasoning


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_dir):
    d = tmp_path_factory.mktemp("cluster")
    data = head_lines(ROOT / "data" / "demo" / "train.jsonl", d / "train.jsonl", 4)
    masks = d / "masks.jsonl"
    write_random_masks(data, tiny_dir, masks, seed=3)
    cfg = json.loads((ROOT / "ds_configs" / "zero3.json").read_text())
    cfg["zero_optimization"].update(stage3_param_persistence_threshold=0, stage3_prefetch_bucket_size=2000,
                                    reduce_bucket_size=2000)
    (d / "z3-all.json").write_text(json.dumps(cfg))
    cfg["optimizer"] = {"type": "SGD", "params": {"lr": "auto", "weight_decay": "auto"}}
    cfg["zero_allow_untested_optimizer"] = True
    (d / "z3-all-sgd.json").write_text(json.dumps(cfg))
    return {"dir": d, "data": data, "model": tiny_dir, "masks": masks}


def _samples(setup):
    """Per sample: input ids, the loss positions (t predicts token t+1) and their classes."""
    from rft_ds.data.formats import read_conversations
    from rft_ds.data.render import encode_dataset
    from rft_ds.masks import read_masks
    from rft_ds.modeling import load_tokenizer

    encs, _ = encode_dataset(read_conversations(setup["data"]), load_tokenizer(str(setup["model"])), 4096)
    masks = read_masks(str(setup["masks"]))
    out = []
    for e in encs:
        labels = {t["message"]: list(t["labels"]) for t in masks[e.id]["turns"]}
        pos = [t - 1 for t in range(1, len(e.input_ids)) if e.msg_index[t] >= 0]
        cls = [labels[e.msg_index[t]].pop(0) for t in range(1, len(e.input_ids)) if e.msg_index[t] >= 0]
        out.append({"ids": torch.tensor(e.input_ids), "pos": torch.tensor(pos), "cls": torch.tensor(cls)})
    return out


def _softmax_w(lb, lr, nb, nr):
    """Detached RFT weights; a class without tokens drops out (the other gets weight 1)."""
    if nb == 0:
        return 0.0, 1.0
    if nr == 0:
        return 1.0, 0.0
    eb, er = math.exp(float(lb) / TAU), math.exp(float(lr) / TAU)
    return eb / (eb + er), er / (eb + er)


def _fixed_w(nb, nr):
    """--loss weighted: (1 - W_R, W_R); a class without tokens drops out (the other gets weight 1)."""
    if nb == 0:
        return 0.0, 1.0
    if nr == 0:
        return 1.0, 0.0
    return 1.0 - W_R, W_R


def _reference_grad(setup, loss: str, micro_steps: int) -> tuple[float, dict]:
    """The global-batch loss and its gradient, from the HF model's own forward, one sample at a time."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(setup["model"]), dtype=torch.float32)
    samples = _samples(setup)
    ces = []
    for s in samples:
        logits = model(input_ids=s["ids"].unsqueeze(0)).logits[0]
        ces.append(F.cross_entropy(logits[s["pos"]], s["ids"][s["pos"] + 1], reduction="none"))
    if loss == "sft":
        L = sum(ce.sum() for ce in ces) / sum(ce.numel() for ce in ces)
    elif loss == "dft":  # each token's CE times its probability, a constant: p = exp(-CE) detached
        L = sum((torch.exp(-ce.detach()) * ce).sum() for ce in ces) / sum(ce.numel() for ce in ces)
    elif loss in ("sample", "weighted"):
        per = []
        for ce, s in zip(ces, samples):
            b, r = s["cls"] == 0, s["cls"] == 1
            lb, lr = ce[b].mean() if b.any() else 0.0, ce[r].mean() if r.any() else 0.0
            nb, nr = int(b.sum()), int(r.sum())
            wb, wr = _softmax_w(lb, lr, nb, nr) if loss == "sample" else _fixed_w(nb, nr)
            per.append(wb * lb + wr * lr)
        L = sum(per) / len(per)
    else:  # batch: weights from each micro-step's class totals over all ranks; sums over the step's counts
        order = sorted(range(len(samples)), key=lambda i: (-len(samples[i]["ids"]), i))
        per_step = len(order) // micro_steps
        NB = sum(int((s["cls"] == 0).sum()) for s in samples)
        NR = sum(int((s["cls"] == 1).sum()) for s in samples)
        L = 0.0
        for m in range(micro_steps):
            idx = order[m * per_step: (m + 1) * per_step]
            Sb = sum(ces[i][samples[i]["cls"] == 0].sum() for i in idx)
            Sr = sum(ces[i][samples[i]["cls"] == 1].sum() for i in idx)
            nb = sum(int((samples[i]["cls"] == 0).sum()) for i in idx)
            nr = sum(int((samples[i]["cls"] == 1).sum()) for i in idx)
            wb, wr = _softmax_w(Sb / max(nb, 1), Sr / max(nr, 1), nb, nr)
            L = L + wb * Sb / NB + wr * Sr / NR
    L.backward()
    return float(L.detach()), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _engine_grad(setup, name, ranks, mb, ga, extra=(), lr: float = 1.0) -> tuple[dict, dict]:
    """Step 1 of a real launch with SGD at `lr` and no clipping: the gradient is (p0 - p1) / lr (a
    large lr keeps a tiny gradient, such as DFT's on a random model, above fp32's rounding of p)."""
    from transformers import AutoModelForCausalLM

    out = setup["dir"] / f"{name}-{ranks}x{mb}x{ga}"
    args = ["train", "--model", setup["model"], "--data", setup["data"], "--output", out,
            "--deepspeed", setup["dir"] / "z3-all-sgd.json", "--micro-batch-size", mb, "--grad-accum", ga,
            "--max-steps", 1, "--lr", lr, "--grad-clip", 0, "--logits-chunk", 16, "--seed", 7, *extra]
    ds_launch(args, nproc=ranks, extra_env=AUDIT if ranks > 1 else None)
    p0 = dict(AutoModelForCausalLM.from_pretrained(str(setup["model"]), dtype=torch.float32).named_parameters())
    p1 = dict(AutoModelForCausalLM.from_pretrained(str(out / "final"), dtype=torch.float32).named_parameters())
    return metrics(out)[0], {n: ((p0[n] - p1[n]) / lr).detach() for n in p0}


def _assert_grad_equal(got: dict, ref: dict) -> None:
    assert got.keys() == ref.keys()
    g = torch.cat([got[n].flatten() for n in ref])
    r = torch.cat([ref[n].flatten() for n in ref])
    assert r.norm() > 1e-3  # a real gradient, not zeros
    assert ((g - r).norm() / r.norm()).item() < 1e-5, ((g - r).norm() / r.norm()).item()
    assert (g - r).abs().max().item() < 1e-6 + 1e-4 * r.abs().max().item()


def _rft(setup, granularity):
    return ["--loss", "rft", "--masks", setup["masks"], "--rft-granularity", granularity, "--tau", TAU]


def test_sft_gradient_equals_plain_hf_reference_on_two_splits(setup):
    L, ref = _reference_grad(setup, "sft", 1)
    for split in [(1, 2, 2), (2, 1, 2)]:
        row, got = _engine_grad(setup, "sft", *split)
        assert abs(row["loss"] - L) < 1e-5 * L
        _assert_grad_equal(got, ref)


def test_rft_sample_gradient_equals_plain_hf_reference_on_two_splits(setup):
    L, ref = _reference_grad(setup, "sample", 1)
    for split in [(1, 4, 1), (2, 1, 2)]:
        row, got = _engine_grad(setup, "rfts", *split, extra=_rft(setup, "sample"))
        assert abs(row["loss"] - L) < 1e-5 * L
        _assert_grad_equal(got, ref)


def test_rft_batch_gradient_follows_each_micro_step_global_totals(setup):
    """`batch` weights come from the class totals of each micro-step over all ranks (documented in
    README): the gradient does not depend on how a micro-step is split over ranks, but it does
    depend on gradient accumulation, and each matches its own reference."""
    L2, ref2 = _reference_grad(setup, "batch", 2)
    L1, ref1 = _reference_grad(setup, "batch", 1)
    diff = torch.cat([(ref1[n] - ref2[n]).flatten() for n in ref1]).norm()
    assert diff > 1e-4 * torch.cat([ref1[n].flatten() for n in ref1]).norm()  # GA really changes the gradient
    for split in [(1, 2, 2), (2, 1, 2)]:
        row, got = _engine_grad(setup, "rftb", *split, extra=_rft(setup, "batch"))
        assert abs(row["loss"] - L2) < 1e-5 * L2
        _assert_grad_equal(got, ref2)
    row, got = _engine_grad(setup, "rftb", 2, 2, 1, extra=_rft(setup, "batch"))
    assert abs(row["loss"] - L1) < 1e-5 * L1
    _assert_grad_equal(got, ref1)


@pytest.mark.parametrize("loss", ["weighted", "dft"])
def test_baseline_losses_gradient_equals_plain_hf_reference(setup, loss):
    """The fixed-weight ablation (sample granularity) and DFT on 2 ranks x 1 x 2 micro-steps: the
    engine's whole gradient equals the plain single-process one (their split equivalence across
    more splits is tests/test_engine.py's). DFT's gradient on the random tiny model is scaled by
    p ~ 1/vocab, so it is read back through a 1000x larger SGD step."""
    L, ref = _reference_grad(setup, loss, 1)
    extra = (["--loss", "weighted", "--w-reasoning", W_R, "--masks", setup["masks"]] if loss == "weighted"
             else ["--loss", "dft", "--masks", setup["masks"]])
    row, got = _engine_grad(setup, loss, 2, 1, 2, extra=extra, lr=1.0 if loss == "weighted" else 1000.0)
    assert abs(row["loss"] - L) < 1e-5 * L
    _assert_grad_equal(got, ref)


def test_rho1_gradient_equals_plain_hf_reference(setup):
    """Rho-1 on 2 ranks x 1 x 2 micro-steps, model and reference partitioned: the kept tokens are the
    top round(K N) of all 4 samples' excess losses CE - CE_ref (from two plain HF forwards here),
    and the engine's whole gradient equals that of their mean CE."""
    from transformers import AutoModelForCausalLM

    ref_dir = setup["dir"] / "rho1-reference"
    if not ref_dir.exists():
        perturbed_copy(setup["model"], ref_dir, seed=11, scale=0.3)
    model = AutoModelForCausalLM.from_pretrained(str(setup["model"]), dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(str(ref_dir), dtype=torch.float32)
    ces, excess = [], []
    for s in _samples(setup):
        tgt = s["ids"][s["pos"] + 1]
        ce = F.cross_entropy(model(input_ids=s["ids"].unsqueeze(0)).logits[0][s["pos"]], tgt, reduction="none")
        with torch.no_grad():
            ce_ref = F.cross_entropy(reference(input_ids=s["ids"].unsqueeze(0)).logits[0][s["pos"]], tgt,
                                     reduction="none")
        ces.append(ce)
        excess += (ce.detach() - ce_ref).tolist()
    k = round(0.5 * len(excess))
    thr = sorted(excess, reverse=True)[k - 1]
    keep = torch.tensor(excess) >= thr
    ce_all = torch.cat(ces)
    L = ce_all[keep].sum() / keep.sum()
    L.backward()
    L = float(L.detach())
    ref = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    row, got = _engine_grad(setup, "rho1", 2, 1, 2, extra=["--loss", "rho1", "--reference", ref_dir,
                                                          "--keep-ratio", 0.5])
    assert row["kept"] * row["tokens"] == pytest.approx(int(keep.sum()))
    assert abs(row["loss"] - L) < 1e-5 * L
    assert abs(row["sft_loss"] - float(ce_all.mean())) < 1e-5 * float(ce_all.mean())
    _assert_grad_equal(got, ref)


def test_label_every_ld_equals_two_plain_hf_forwards(setup, tmp_path):
    """2 ranks, every parameter partitioned, one sample per forward, head chunks of 16: the ranks
    need different numbers of head calls, and 5 samples over 2 ranks leave one rank a dummy batch."""
    from transformers import AutoModelForCausalLM

    from rft_ds.masks import read_masks

    data = head_lines(ROOT / "data" / "demo" / "train.jsonl", tmp_path / "five.jsonl", 5)
    shad = tmp_path / "shad"
    plain(["train", "--model", setup["model"], "--data", data, "--output", shad, "--max-steps", 2,
           "--micro-batch-size", 5, "--lr", 5e-3])
    out = tmp_path / "masks.jsonl"
    ds_launch(["label", "--base", setup["model"], "--shad", shad / "final", "--data", data, "--output", out,
               "--batch-size", 1, "--logits-chunk", 16, "--deepspeed", setup["dir"] / "z3-all.json"],
              extra_env=AUDIT)
    got = read_masks(str(out))
    from rft_ds.data.formats import read_conversations
    from rft_ds.data.render import encode_dataset
    from rft_ds.modeling import load_tokenizer

    encs, _ = encode_dataset(read_conversations(data), load_tokenizer(str(setup["model"])), 4096)
    models = [AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32) for p in (setup["model"], shad / "final")]
    n = 0
    for e in encs:
        ids = torch.tensor([e.input_ids])
        pos = torch.tensor([t - 1 for t in range(1, len(e.input_ids)) if e.msg_index[t] >= 0])
        with torch.no_grad():
            base, tuned = [F.cross_entropy(m(input_ids=ids).logits[0][pos], ids[0][pos + 1], reduction="none")
                           for m in models]
        ld_ref = (tuned - base).tolist()
        ld = [x for t in got[e.id]["turns"] for x in t["loss_diff"]]
        labels = [x for t in got[e.id]["turns"] for x in t["labels"]]
        assert len(ld) == len(ld_ref)
        assert max(abs(a - b) for a, b in zip(ld, ld_ref)) < 1e-4
        assert all(lab == int(r > 0) for lab, r in zip(labels, ld_ref) if abs(r) > 1e-4)
        n += len(ld)
    assert n > 100


def test_collective_audit_catches_a_tensor_without_device(tmp_path):
    """The audit itself: the mistake the labeling pass had (an all-reduce of
    torch.tensor([...]) made without device=) fails a 2-rank launch under it, and passes without it."""
    script = tmp_path / "bad.py"
    script.write_text("import torch\nfrom rft_ds import dist\ndist.init()\n"
                      "n = dist.all_reduce_sum(torch.tensor([1.0], dtype=torch.float64)).item()\n"
                      "open(f'sum.{dist.rank()}', 'w').write(repr(n))\ndist.shutdown(True)\ndist.exit_now(0)\n")
    from launchutil import free_port

    cmd = [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), str(script)]
    bad = subprocess.run(cmd, cwd=tmp_path, env=env(AUDIT), capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0
    assert "collective audit: torch.distributed.all_reduce" in bad.stdout + bad.stderr
    cmd[4] = str(free_port())
    ok = subprocess.run(cmd, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
    # each rank writes its own file: two ranks printing to one pipe interleave ("sumsum  2.02.0")
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    assert [float((tmp_path / f"sum.{r}").read_text()) for r in (0, 1)] == [2.0, 2.0]
