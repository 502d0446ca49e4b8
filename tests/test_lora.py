"""LoRA under ZeRO-3: a 2-rank run saves a real peft adapter (gathered, not empty partitions) that
loads with `PeftModel.from_pretrained` in a plain process, changes the outputs, and leaves the base
model untouched; the adapter merges into a full model (in-process tools of rft_ds.train.lora)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from launchutil import ROOT, ds_launch, head_lines, metrics

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _digest(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_dir):
    d = tmp_path_factory.mktemp("lora")
    data = head_lines(ROOT / "data" / "demo" / "train.jsonl", d / "train.jsonl", 24)
    before = _digest(tiny_dir)
    out = d / "run"
    ds_launch(["train", "--model", tiny_dir, "--data", data, "--output", out,
               "--deepspeed", ROOT / "ds_configs" / "zero3.json", "--micro-batch-size", 2, "--max-steps", 3,
               "--lr", "1e-2", "--lr-scheduler", "constant", "--lora-rank", 4], nproc=2)
    return {"out": out, "base": Path(tiny_dir), "before": before}


@pytest.fixture(scope="module")
def ids():
    g = torch.Generator().manual_seed(0)
    return torch.randint(10, 390, (2, 24), generator=g)


@pytest.mark.launch
def test_adapter_holds_gathered_lora_weights(lora_run):
    from safetensors.torch import load_file

    final = lora_run["out"] / "final"
    files = {p.name for p in final.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= files
    assert not any(n.startswith("model") and n.endswith(".safetensors") for n in files), "adapter only"
    sd = load_file(final / "adapter_model.safetensors")
    assert len(sd) == 2 * len(TARGETS)  # one layer: A and B for each target
    for k, v in sd.items():
        assert k.startswith("base_model.model.model.layers.0.") and (".lora_A.weight" in k or ".lora_B.weight" in k), k
        assert v.numel() > 0 and 4 in v.shape, (k, v.shape)
    assert all(float(v.abs().max()) > 0 for k, v in sd.items() if "lora_B" in k), "lora_B moved off zero"
    cfg = json.loads((final / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8 and set(cfg["target_modules"]) == set(TARGETS)
    assert cfg["peft_type"] == "LORA" and cfg["inference_mode"] is True
    assert Path(cfg["base_model_name_or_path"]).resolve() == lora_run["base"].resolve()
    rows = metrics(lora_run["out"])
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["loss"] == r["loss"] for r in rows)
    run = json.loads((lora_run["out"] / "run.json").read_text())
    assert run["world_size"] == 2 and run["ds_config"]["zero_optimization"]["stage"] == 3


@pytest.mark.launch
def test_adapter_loads_with_peft_and_changes_outputs(lora_run, ids):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert _digest(lora_run["base"]) == lora_run["before"], "the base model's files are unchanged"
    base = AutoModelForCausalLM.from_pretrained(lora_run["base"])
    ref = _logits(base, ids)
    base_sd = {k: v.clone() for k, v in base.state_dict().items()}
    model = PeftModel.from_pretrained(base, str(lora_run["out"] / "final"))
    got = _logits(model, ids)
    assert (got - ref).abs().max() > 1e-3, "the adapter changes the outputs"
    with model.disable_adapter():
        assert torch.equal(_logits(model, ids), ref)
    # the base weights inside the peft model are the original ones
    for k, v in model.get_base_model().state_dict().items():
        if "lora_" in k:
            continue
        assert torch.equal(v, base_sd[k.replace(".base_layer.", ".")]), k


@pytest.mark.launch
def test_merge_adapter_dir_equals_peft(lora_run, ids, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rft_ds.train.lora import main

    merged_dir = tmp_path / "merged"
    assert main(["merge", "--adapter", str(lora_run["out"] / "final"), "--output", str(merged_dir)]) == 0
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert not any("lora" in k for k in merged.state_dict())
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(lora_run["base"]),
                                           str(lora_run["out"] / "final"))
    torch.testing.assert_close(_logits(merged, ids), _logits(peft_model, ids), rtol=1e-4, atol=1e-5)
    assert (merged_dir / "tokenizer.json").exists()


# ---- in-process: the save path the engine takes on rank 0 (no launch) -------------------------

def _peft_with_random_adapter(tiny_dir, seed=0):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    lm = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0,
                                         task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in lm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return lm


def test_save_lora_and_merge_from_state_dict(tiny_dir, tmp_path, ids):
    """save_lora(lm, full state dict, tok, out, merge=True), as the engine calls it with the gathered
    weights: the adapter reloads to the same outputs, and final-merged equals the peft model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rft_ds.train.lora import save_lora

    lm = _peft_with_random_adapter(tiny_dir)
    lm.eval()
    want = _logits(lm, ids)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    save_lora(lm, lm.state_dict(), tok, tmp_path, merge=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final", "final-merged"]  # no temp dirs left
    back = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), str(tmp_path / "final"))
    torch.testing.assert_close(_logits(back, ids), want, rtol=0, atol=0)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "final-merged")
    torch.testing.assert_close(_logits(merged, ids), want, rtol=1e-4, atol=1e-5)
    assert (tmp_path / "final-merged" / "tokenizer.json").exists()


def test_save_lora_refuses_empty_partitions(tiny_dir, tmp_path):
    """Un-gathered ZeRO-3 partitions (empty tensors) or a state dict without LoRA keys must fail
    loudly instead of writing an adapter that does nothing; nothing is left in OUT."""
    from transformers import AutoTokenizer

    from rft_ds.train.lora import EmptyAdapterError, save_lora

    lm = _peft_with_random_adapter(tiny_dir)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    sd = {k: (torch.empty(0) if "lora_" in k else v) for k, v in lm.state_dict().items()}
    with pytest.raises(EmptyAdapterError, match="partitions"):
        save_lora(lm, sd, tok, tmp_path)
    with pytest.raises(EmptyAdapterError, match="no LoRA tensors"):
        save_lora(lm, {k: v for k, v in lm.state_dict().items() if "lora_" not in k}, tok, tmp_path)
    with pytest.raises(EmptyAdapterError):
        save_lora(lm, None, tok, tmp_path)
    assert list(tmp_path.iterdir()) == []
