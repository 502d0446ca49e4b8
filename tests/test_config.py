"""Flags vs DeepSpeed JSON reconciliation, TrainConfig cross-field checks, and the masks file reader."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from rft_ds.config import TrainConfig
from rft_ds.ds_config import default_ds_config, load_ds_config, resolve_ds_config, resolved_flags
from rft_ds.errors import ConfigError, MasksError
from rft_ds.masks import make_record, read_masks, validate_record

DS_DIR = Path(__file__).resolve().parent.parent / "ds_configs"
SHIPPED = sorted(DS_DIR.glob("*.json"))


def cfg(**kw) -> TrainConfig:
    base = dict(model="m", data="d.jsonl", output="out", max_steps=10)
    base.update(kw)
    return TrainConfig(**base)


def walk(x, path=""):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from walk(v, f"{path}.{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from walk(v, f"{path}[{i}]")
    else:
        yield path, x


# ------------------------------------------------------------------ shipped configs

def test_shipped_configs_exist():
    assert {p.name for p in SHIPPED} >= {"zero2.json", "zero3.json", "zero3_offload.json"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("on_gpu", [True, False])
def test_every_shipped_config_resolves(path, world, on_gpu):
    raw = load_ds_config(str(path))
    before = copy.deepcopy(raw)
    c = cfg(micro_batch_size=2, grad_accum=3, lr=2e-5, weight_decay=0.1, grad_clip=0.5)
    ds = resolve_ds_config(raw, c, world, on_gpu, src=str(path))
    assert raw == before  # not mutated
    assert [p for p, v in walk(ds) if v == "auto"] == []
    assert ds["train_micro_batch_size_per_gpu"] == 2 and ds["gradient_accumulation_steps"] == 3
    assert ds["train_batch_size"] == 2 * 3 * world
    assert ds["gradient_clipping"] == 0.5
    assert ds["optimizer"]["params"]["lr"] == 2e-5 and ds["optimizer"]["params"]["weight_decay"] == 0.1
    assert ds["bf16"]["enabled"] is on_gpu  # precision auto: bf16 on GPU, fp32 on CPU
    assert not ds.get("fp16", {}).get("enabled", False)
    if ds["zero_optimization"].get("stage") == 3:
        assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    json.dumps(ds)  # still serialisable


@pytest.mark.parametrize("world", [1, 2])
def test_default_config_resolves_with_defaults(world):
    c = cfg()
    ds = resolve_ds_config(default_ds_config(), c, world, on_gpu=False)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == \
        (1, 1, world)
    r = resolved_flags(ds, c)
    assert (r["micro_batch_size"], r["grad_accum"]) == (1, 1)
    assert ds["optimizer"]["params"]["lr"] == r["lr"] and ds["gradient_clipping"] == r["grad_clip"]
    assert ds["zero_optimization"]["stage"] == 3


# ------------------------------------------------------------------ reconciliation

def test_concrete_batch_values_are_taken_when_flags_unset():
    raw = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2, "train_batch_size": 16}
    c = cfg()
    ds = resolve_ds_config(raw, c, 2, False)
    r = resolved_flags(ds, c)
    assert (r["micro_batch_size"], r["grad_accum"], ds["train_batch_size"]) == (4, 2, 16)
    # the same values given as flags agree with the JSON
    assert resolve_ds_config(raw, cfg(micro_batch_size=4, grad_accum=2), 2, False)["train_batch_size"] == 16


@pytest.mark.parametrize("key,jv,flag,fv", [
    ("train_micro_batch_size_per_gpu", 4, "micro_batch_size", 2),
    ("gradient_accumulation_steps", 8, "grad_accum", 4),
    ("gradient_clipping", 0.3, "grad_clip", 1.0),
])
def test_flag_json_contradiction_names_both(key, jv, flag, fv):
    with pytest.raises(ConfigError) as ei:
        resolve_ds_config({key: jv}, cfg(**{flag: fv}), 1, False, src="my.json")
    msg = str(ei.value)
    assert "my.json" in msg and key in msg and repr(jv) in msg
    assert "--" + flag.replace("_", "-") in msg and repr(fv) in msg


def test_lr_contradiction_names_both():
    raw = {"optimizer": {"type": "AdamW", "params": {"lr": 3e-4, "weight_decay": "auto"}}}
    with pytest.raises(ConfigError) as ei:
        resolve_ds_config(raw, cfg(lr=1e-5), 1, False, src="my.json")
    assert "optimizer.params.lr" in str(ei.value) and "0.0003" in str(ei.value)
    assert "--lr" in str(ei.value) and "1e-05" in str(ei.value)
    ok = resolve_ds_config(raw, cfg(lr=3e-4), 1, False)  # agreeing values pass
    assert ok["optimizer"]["params"] == {"lr": 3e-4, "weight_decay": 0.0}


@pytest.mark.parametrize("tb,mb,ga,world,ok", [
    (16, 2, 4, 2, True), (8, 2, 4, 2, False), (8, 2, 4, 1, True), (3, 1, 1, 2, False), ("auto", 3, 5, 2, True),
])
def test_train_batch_size_arithmetic(tb, mb, ga, world, ok):
    raw = {"train_batch_size": tb}
    c = cfg(micro_batch_size=mb, grad_accum=ga)
    if ok:
        assert resolve_ds_config(raw, c, world, False)["train_batch_size"] == mb * ga * world
    else:
        with pytest.raises(ConfigError) as ei:
            resolve_ds_config(raw, c, world, False, src="x.json")
        msg = str(ei.value)
        assert f"train_batch_size = {tb}" in msg and f"= {mb * ga * world}" in msg
        assert f"micro-batch {mb}" in msg and f"accumulation {ga}" in msg and f"{world} ranks" in msg


@pytest.mark.parametrize("raw,precision,on_gpu,want", [
    ({"bf16": {"enabled": "auto"}}, "auto", True, "bf16"),
    ({"bf16": {"enabled": "auto"}}, "auto", False, None),
    ({"bf16": {"enabled": "auto"}}, "fp32", True, None),
    ({"bf16": {"enabled": "auto"}}, "bf16", False, "bf16"),
    ({"bf16": {"enabled": True}}, "auto", False, "bf16"),  # the JSON pins the precision
    ({"bf16": {"enabled": True}}, "bf16", True, "bf16"),
    ({}, "fp16", True, "fp16"),
    ({"fp16": {"enabled": True}}, "auto", True, "fp16"),
    ({"bf16": {"enabled": "auto"}, "fp16": {"enabled": True}}, "auto", True, "fp16"),
    ({"bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"}}, "auto", True, "bf16"),
])
def test_precision_resolution(raw, precision, on_gpu, want):
    ds = resolve_ds_config(raw, cfg(precision=precision), 1, on_gpu)
    got = [k for k in ("bf16", "fp16") if ds.get(k, {}).get("enabled")]
    assert got == ([want] if want else [])
    assert all(ds[k].get("enabled") in (True, False, None) for k in ("bf16", "fp16"))


@pytest.mark.parametrize("raw,precision,on_gpu,words", [
    ({"bf16": {"enabled": True}}, "fp32", True, ["bf16.enabled = True", "--precision fp32"]),
    ({"bf16": {"enabled": False}}, "bf16", True, ["bf16.enabled = False", "--precision bf16"]),
    ({"fp16": {"enabled": True}}, "bf16", True, ["fp16.enabled = True", "--precision bf16"]),
    ({"bf16": {"enabled": True}, "fp16": {"enabled": True}}, "auto", True, ["both enabled"]),
    ({}, "fp16", False, ["fp16 needs a GPU"]),
])
def test_precision_contradictions(raw, precision, on_gpu, words):
    with pytest.raises(ConfigError) as ei:
        resolve_ds_config(raw, cfg(precision=precision), 1, on_gpu, src="p.json")
    assert "p.json" in str(ei.value)
    for w in words:
        assert w in str(ei.value)


def test_unknown_auto_and_empty_save_are_rejected():
    with pytest.raises(ConfigError, match=r"scheduler\.params\.warmup_num_steps"):
        resolve_ds_config({"scheduler": {"params": {"warmup_num_steps": "auto"}}}, cfg(), 1, False)
    with pytest.raises(ConfigError, match="stage3_gather_16bit_weights_on_model_save"):
        resolve_ds_config({"zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": False}},
                          cfg(), 1, False)


def test_load_ds_config_errors(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{\n  "train_batch_size": 8,\n  "bf16": {"enabled": tru}\n}\n')
    with pytest.raises(ConfigError) as ei:
        load_ds_config(str(p))
    assert f"{p}:3:" in str(ei.value) and "malformed" in str(ei.value)
    q = tmp_path / "list.json"
    q.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        load_ds_config(str(q))
    with pytest.raises(ConfigError, match="not found"):
        load_ds_config(str(tmp_path / "missing.json"))


# ------------------------------------------------------------------ TrainConfig.check

@pytest.mark.parametrize("kw,words", [
    (dict(max_steps=None), "exactly one of --max-steps and --epochs"),
    (dict(max_steps=5, epochs=1.0), "exactly one of --max-steps and --epochs"),
    (dict(max_steps=0), "--max-steps must be >= 1"),
    (dict(max_steps=None, epochs=0.0), "--epochs must be > 0"),
    (dict(micro_batch_size=0), "--micro-batch-size must be >= 1"),
    (dict(grad_accum=0), "--grad-accum must be >= 1"),
    (dict(loss="rft"), "--loss rft needs --masks"),
    (dict(tau=0.0), "--tau must be > 0"),
    (dict(loss="rft", masks="m.jsonl", rft_granularity="batch", missing_masks="sft"), "--missing-masks sft"),
    (dict(resume=True, overwrite=True), "--resume and --overwrite"),
    (dict(shuffle_fraction=0.0), "--shuffle-fraction"),
    (dict(shuffle_fraction=1.5), "--shuffle-fraction"),
])
def test_train_config_check_errors(kw, words):
    with pytest.raises(ConfigError) as ei:
        cfg(**kw).check()
    assert words in str(ei.value)


def test_train_config_check_accepts_valid():
    cfg().check()
    cfg(max_steps=None, epochs=0.5, loss="rft", masks="m.jsonl", rft_granularity="batch",
        shuffle_fraction=1.0).check()
    cfg(loss="rft", masks="m.jsonl", missing_masks="sft").check()
    assert cfg().to_json()["tau"] == 2.0


# ------------------------------------------------------------------ masks

def turn(message=2, ids=(5, 6, 7), labels=(0, 1, 1), ld=(-0.1, 0.2, 0.3)):
    t = {"message": message, "token_ids": list(ids), "labels": list(labels)}
    if ld is not None:
        t["loss_diff"] = list(ld)
    return t


def write_masks(tmp_path, recs):
    p = tmp_path / "masks.jsonl"
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in recs))
    return p


def test_read_masks_ok(tmp_path):
    recs = [make_record("a", "fp", [turn()]), make_record("b", "fp", [turn(ld=None), turn(4, [], [], [])])]
    p = write_masks(tmp_path, [recs[0], "", recs[1]])
    got = read_masks(p)
    assert list(got) == ["a", "b"] and got["b"] == recs[1]


@pytest.mark.parametrize("bad,field,words", [
    ("{\"id\": ", None, ["malformed JSON"]),
    ("[1]", "<line>", ["JSON object"]),
    ({"tokenizer": "fp", "turns": []}, "id", ["missing"]),
    ({"id": "x", "turns": []}, "tokenizer", ["missing"]),
    ({"id": "x", "tokenizer": "fp", "turns": {}}, "turns", ["list"]),
    ({"id": "x", "tokenizer": "fp", "turns": [3]}, "turns[0]", ["object"]),
    ({"id": "x", "tokenizer": "fp", "turns": [turn(message="2")]}, "turns[0].message", ["int"]),
    ({"id": "x", "tokenizer": "fp", "turns": [turn(labels=(0, 2, 1))]}, "turns[0].labels", ["0 or 1", "2"]),
    ({"id": "x", "tokenizer": "fp", "turns": [turn(labels=(0, -1, 1))]}, "turns[0].labels", ["-1"]),
    ({"id": "x", "tokenizer": "fp", "turns": [turn(labels=(0, True, 1))]}, "turns[0].labels", ["True"]),
    ({"id": "x", "tokenizer": "fp", "turns": [turn(labels=(0, "1", 1))]}, "turns[0].labels", ["'1'"]),
    ({"id": "x", "tokenizer": "fp", "turns": [turn(), turn(labels=(0, 1))]}, "turns[1]",
     ["lengths disagree", "3 token_ids, 2 labels"]),
    ({"id": "x", "tokenizer": "fp", "turns": [turn(ld=(0.1,))]}, "turns[0]", ["1 loss_diff"]),
    ({"id": "x", "tokenizer": "fp", "turns": [{**turn(), "loss_diff": 0.5}]}, "turns[0].loss_diff", ["list"]),
    ({"id": "x", "tokenizer": "fp", "turns": [{"message": 1, "token_ids": 5, "labels": []}]}, "turns[0]",
     ["lists"]),
])
def test_masks_errors_name_file_line_field(tmp_path, bad, field, words):
    p = write_masks(tmp_path, [make_record("ok", "fp", [turn()]), bad])
    with pytest.raises(MasksError) as ei:
        read_masks(p)
    msg = str(ei.value)
    assert f"{p}:2:" in msg, msg
    if field:
        assert f"field '{field}'" in msg, msg
    for w in words:
        assert w in msg, msg


def test_masks_duplicate_empty_missing(tmp_path):
    p = write_masks(tmp_path, [make_record("a", "fp", []), make_record("b", "fp", []), make_record("a", "fp", [])])
    with pytest.raises(MasksError) as ei:
        read_masks(p)
    assert f"{p}:3:" in str(ei.value) and "field 'id'" in str(ei.value) and "duplicate" in str(ei.value)
    e = tmp_path / "e.jsonl"
    e.write_text("\n\n")
    with pytest.raises(MasksError, match="empty masks file"):
        read_masks(e)
    with pytest.raises(MasksError, match="not found"):
        read_masks(tmp_path / "none.jsonl")


def test_validate_record_returns_the_record():
    rec = make_record("a", "fp", [turn()])
    assert validate_record(rec, "f", 1) is rec


def test_hf_style_auto_zero_bucket_sizes_follow_the_hidden_size():
    """Configs written for HF Trainer set the ZeRO bucket sizes to "auto": filled the way transformers
    fills them (hidden^2, 0.9 hidden^2, 10 hidden); without a hidden size they stay an error."""
    raw = load_ds_config(str(DS_DIR / "zero3.json"))
    for key in ("reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold"):
        raw["zero_optimization"][key] = "auto"
    ds = resolve_ds_config(raw, cfg(), 2, on_gpu=True, hidden_size=4096)
    z = ds["zero_optimization"]
    assert (z["reduce_bucket_size"], z["stage3_prefetch_bucket_size"], z["stage3_param_persistence_threshold"]) == \
        (4096 * 4096, int(0.9 * 4096 * 4096), 40960)
    assert raw["zero_optimization"]["reduce_bucket_size"] == "auto"  # the input is not mutated
    with pytest.raises(ConfigError, match=r"zero_optimization\.reduce_bucket_size"):
        resolve_ds_config(raw, cfg(), 2, on_gpu=True)
