"""A real pretrained model (SmolLM2-135M-Instruct from `rft-ds fetch-model`) through 2-rank ZeRO-3
launches with every parameter partitioned (stage3_param_persistence_threshold 0, so the tied
49152 x 576 embedding / lm_head is gathered on every call):

  * `train` 2 ranks x 2 x 1, 2 steps on 4 samples (one global batch): the step-1 loss equals a
    plain single-process Hugging Face token-mean CE over the same samples, and final/ loads;
  * the same global batch split 2 ranks x 1 x 2 with --logits-chunk 45 (2 or 3 lm_head calls per
    forward, a different count on each rank): the same step-1 loss and gradient norm;
  * `label` on 8 samples, base = SmolLM2, shad = the 2-step model: every LD equals
    CE_shad - CE_base of two plain HF forwards.

The references are computed per sample without padding, in fp32, from the project's tokenization
(rft_ds.data.render.encode_dataset), so they are independent of the batching, padding, chunking
and partitioning under test."""

from __future__ import annotations

import json
import math
import time

import pytest

from launchutil import ROOT, ds_launch, head_lines, metrics, rel

pytestmark = pytest.mark.launch
MAX_LEN = 256
TIMES: dict[str, float] = {}


def _ds_config(path):
    cfg = json.loads((ROOT / "ds_configs" / "zero3.json").read_text())
    cfg["zero_optimization"]["stage3_param_persistence_threshold"] = 0  # partition every parameter
    path.write_text(json.dumps(cfg, indent=1))
    return path


def _timed(name, fn, *a, **kw):
    t = time.time()
    r = fn(*a, **kw)
    TIMES[name] = time.time() - t
    print(f"{name}: {TIMES[name]:.1f}s")
    return r


def _hf_token_ce(model_dir, encs):
    """Per sample, the CE (fp32, nats) of each loss token, from one unpadded HF forward."""
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    m.eval()
    out = []
    with torch.no_grad():
        for e in encs:
            ids = torch.tensor([e.input_ids])
            logits = m(input_ids=ids).logits[0, :-1].float()
            ce = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
            keep = torch.tensor([mi >= 0 for mi in e.msg_index[1:]])
            out.append(ce[keep].double())
    return out


def _encode(model_dir, data, max_len=MAX_LEN):
    from rft_ds.data.formats import read_conversations
    from rft_ds.data.render import encode_dataset
    from rft_ds.modeling import load_tokenizer

    encs, _ = encode_dataset(read_conversations(data), load_tokenizer(str(model_dir)), max_len)
    return encs


@pytest.fixture(scope="module")
def runs(tmp_path_factory, smollm2_dir):
    d = tmp_path_factory.mktemp("smollm2")
    ds = _ds_config(d / "zero3-all-partitioned.json")
    data = head_lines(ROOT / "data" / "demo" / "train.jsonl", d / "train4.jsonl", 4)
    common = ["train", "--model", smollm2_dir, "--data", data, "--deepspeed", ds, "--max-seq-len", MAX_LEN,
              "--lr", "1e-4", "--lr-scheduler", "constant", "--warmup-ratio", 0, "--seed", 5]
    a = d / "a"
    _timed("train 2x2x1, 2 steps", ds_launch, common + ["--output", a, "--micro-batch-size", 2, "--grad-accum", 1,
                                                        "--max-steps", 2])
    return {"dir": d, "ds": ds, "data": data, "common": common, "a": a, "model": smollm2_dir}


def test_train_step1_loss_equals_plain_hf_and_final_loads(runs):
    import torch
    from transformers import AutoModelForCausalLM

    rows = metrics(runs["a"])
    assert [r["step"] for r in rows] == [1, 2]
    encs = _encode(runs["model"], runs["data"])
    assert len(encs) == 4  # the whole data is one global batch (2 ranks x 2 x 1)
    ce = _hf_token_ce(runs["model"], encs)
    n = sum(x.numel() for x in ce)
    ref = float(sum(x.sum() for x in ce) / n)
    for r in rows:
        assert r["samples"] == 4 and r["tokens"] == n
        assert math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0
    print(f"step-1 loss {rows[0]['loss']:.7f}, plain HF {ref:.7f}, rel {rel(rows[0]['loss'], ref):.2e}")
    assert rel(rows[0]["loss"], ref) <= 1e-5
    assert rows[1]["loss"] < rows[0]["loss"]  # step 2 sees the same 4 samples after one update

    final = runs["a"] / "final"
    m = AutoModelForCausalLM.from_pretrained(final)
    base = AutoModelForCausalLM.from_pretrained(runs["model"])
    assert m.config.tie_word_embeddings and m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
    sd, sd0 = m.state_dict(), base.state_dict()
    assert sd.keys() == sd0.keys() and all(sd[k].dtype == torch.float32 for k in sd)
    assert sum(not torch.equal(sd[k], sd0[k]) for k in sd) == len(sd)  # every tensor trained
    ce2 = _hf_token_ce(final, encs)
    after = float(sum(x.sum() for x in ce2) / n)
    assert after < rows[1]["loss"]  # two updates are better than one on the same batch


def test_same_step1_loss_with_accumulation_and_small_logits_chunk(runs):
    """2 ranks x 1 x 2 with --logits-chunk 45: the samples' 66..95 loss tokens need 2 or 3 lm_head
    calls, and in each micro-step the two ranks need a different number (ZeRO-3 must still see the
    same head fetches on both ranks)."""
    from rft_ds.data.batching import global_batches, split_global_batch
    from rft_ds.losses import n_head_calls

    chunk = 45
    encs = _encode(runs["model"], runs["data"])
    lengths = [len(e.input_ids) for e in encs]
    (gb,) = global_batches(lengths, 4, 5, 0)
    calls = [[n_head_calls(sum(encs[i].n_loss_tokens for i in part), chunk)
              for part in split_global_batch(gb, lengths, 2, 1, 2, r)] for r in range(2)]
    assert all(a != b for a, b in zip(*calls)), calls  # per micro-step: rank 0 vs rank 1
    b = runs["dir"] / "b"
    _timed(f"train 2x1x2, 1 step, logits-chunk {chunk}", ds_launch,
           runs["common"] + ["--output", b, "--micro-batch-size", 1, "--grad-accum", 2, "--max-steps", 1,
                             "--logits-chunk", chunk])
    (ra,), (rb,) = metrics(runs["a"])[:1], metrics(b)
    print(f"step-1 loss 2x2x1 {ra['loss']:.8f} 2x1x2 {rb['loss']:.8f}; grad_norm {ra['grad_norm']:.6f} "
          f"{rb['grad_norm']:.6f}")
    assert ra["tokens"] == rb["tokens"] and ra["samples"] == rb["samples"] == 4
    assert rel(ra["loss"], rb["loss"]) <= 1e-5
    assert rel(ra["grad_norm"], rb["grad_norm"]) <= 1e-4


def test_label_ld_equals_two_plain_hf_forwards(runs):
    from rft_ds.masks import read_masks

    data = head_lines(ROOT / "data" / "demo" / "train.jsonl", runs["dir"] / "train8.jsonl", 8)
    out = runs["dir"] / "masks.jsonl"
    shad = runs["a"] / "final"
    _timed("label 8 samples, 2 ranks", ds_launch,
           ["label", "--base", runs["model"], "--shad", shad, "--data", data, "--output", out, "--deepspeed", runs["ds"],
            "--max-seq-len", MAX_LEN, "--batch-size", 2, "--rounds-per-chunk", 1])
    masks = read_masks(out)
    encs = _encode(runs["model"], data)
    assert len(encs) == len(masks) == 8
    base, tuned = _hf_token_ce(runs["model"], encs), _hf_token_ce(shad, encs)
    worst, n = 0.0, 0
    for e, cb, cs in zip(encs, base, tuned):
        rec = masks[e.id]
        ids = [t for turn in rec["turns"] for t in turn["token_ids"]]
        lds = [x for turn in rec["turns"] for x in turn["loss_diff"]]
        labels = [x for turn in rec["turns"] for x in turn["labels"]]
        assert ids == [t for i, (t, m) in enumerate(zip(e.input_ids, e.msg_index)) if m >= 0 and i >= 1]
        want = (cs - cb).tolist()
        assert len(lds) == len(want)
        for got, w, lab in zip(lds, want, labels):
            worst = max(worst, abs(got - w))
            assert abs(got - w) <= 1e-4, (e.id, got, w)
            if abs(w) > 1e-4:
                assert lab == int(w > 0)
        n += len(want)
    print(f"{n} LD values, max |LD - (CE_shad - CE_base)| = {worst:.2e}")
    assert any(x != 0 for x in (x for r in masks.values() for t in r["turns"] for x in t["loss_diff"]))
