"""`rft-ds estimate-memory`: parameter counts, agreement with DeepSpeed's estimator, CLI output."""

from __future__ import annotations

import json

import pytest

from rft_ds.tools import memory as m
from rft_ds.cli import main
from rft_ds.errors import ConfigError

OFFLOAD_TO_DS = {  # our --offload -> (cpu_offload, cpu_offload_params) of DeepSpeed's estimator
    "none": (False, False),
    "optimizer": (True, False),
    "all": (True, True),
}
PASS_KEYS = ("params_gb", "grads_gb", "optimizer_gb", "activations_gb", "total_gpu_gb", "cpu_gb")


@pytest.fixture(scope="module")
def ds_estimate():
    # Pure arithmetic; on a machine without a GPU DeepSpeed falls back to its CPU accelerator
    # (with a warning) and the import works.
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    return estimate_zero3_model_states_mem_needs


# ----------------------------------------------------------------------------- counts

@pytest.mark.parametrize("name, exact, approx", [
    ("llama3-8b", 8_030_261_248, 8.03e9),
    ("llama3-70b", 70_553_706_496, 70.55e9),
    ("qwen2.5-72b", 72_706_203_648, 72.7e9),
])
def test_param_counts(name, exact, approx):
    counts = m.count_params(m.load_arch(name))
    assert counts.total == exact
    assert counts.total == pytest.approx(approx, rel=2e-3)


def test_shipped_facts_have_only_architecture_fields():
    allowed = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "tie_word_embeddings", "max_position_embeddings", "model_type"}
    assert m.shipped_models() == ["llama3-70b", "llama3-8b", "qwen2.5-72b"]
    for name in m.shipped_models():
        data = json.loads((m.FACTS_DIR / f"{name}.json").read_text())
        assert set(data) == allowed, name


def test_qwen2_counts_qkv_biases():
    qwen = m.load_arch("qwen2.5-72b")
    assert qwen.qkv_bias and not qwen.o_bias
    cfg = json.loads((m.FACTS_DIR / "qwen2.5-72b.json").read_text())
    as_llama = m.arch_from_config({**cfg, "model_type": "llama"}, "x", "x")
    diff = m.count_params(qwen).total - m.count_params(as_llama).total
    assert diff == 80 * (8192 + 1024 + 1024)


def test_tied_embeddings_drop_lm_head(tmp_path):
    cfg = json.loads((m.FACTS_DIR / "llama3-8b.json").read_text())
    cfg["tie_word_embeddings"] = True
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    tied = m.count_params(m.load_arch(str(tmp_path)))
    assert tied.total == 8_030_261_248 - 128256 * 4096
    assert tied.largest_module == 128256 * 4096


def test_largest_module_is_embedding():
    counts = m.count_params(m.load_arch("llama3-70b"))
    assert counts.largest_module == 128256 * 8192


# ----------------------------------------------------------------------------- DeepSpeed agreement

@pytest.mark.parametrize("offload", m.OFFLOAD_CHOICES)
@pytest.mark.parametrize("nodes, gpus", [(2, 8), (1, 8)])
@pytest.mark.parametrize("name", ["llama3-8b", "llama3-70b"])
def test_agrees_with_deepspeed_estimator(ds_estimate, name, nodes, gpus, offload):
    arch = m.load_arch(name)
    counts = m.count_params(arch)
    train = m.train_pass(arch, counts, m.Settings(nodes=nodes, gpus_per_node=gpus, offload=offload))
    cpu_offload, cpu_offload_params = OFFLOAD_TO_DS[offload]
    ds_cpu, ds_gpu, _ = ds_estimate(total_params=counts.total, largest_layer_params=counts.largest_module,
                                    num_gpus_per_node=gpus, num_nodes=nodes, cpu_offload=cpu_offload,
                                    cpu_offload_params=cpu_offload_params, zero_init=True)
    ours_gpu = (train["params_gb"] + train["grads_gb"] + train["optimizer_gb"] + train["buffers_gb"]) * m.GIB
    ours_cpu = train["cpu_gb"] * m.GIB
    assert ours_gpu == pytest.approx(ds_gpu, rel=0.10), f"GPU {ours_gpu / ds_gpu - 1:+.1%}"
    assert ours_cpu == pytest.approx(ds_cpu, rel=0.10), f"CPU {ours_cpu / ds_cpu - 1:+.1%}"


@pytest.mark.parametrize("offload", m.OFFLOAD_CHOICES)
@pytest.mark.parametrize("nodes, gpus", [(2, 8), (1, 8), (4, 4), (1, 1)])
def test_reproduced_deepspeed_formula_matches(ds_estimate, nodes, gpus, offload):
    counts = m.count_params(m.load_arch("llama3-70b"))
    cpu_offload, cpu_offload_params = OFFLOAD_TO_DS[offload]
    ds_cpu, ds_gpu, _ = ds_estimate(counts.total, counts.largest_module, gpus, nodes, cpu_offload=cpu_offload,
                                    cpu_offload_params=cpu_offload_params, zero_init=True)
    ref = m.deepspeed_reference(counts.total, counts.largest_module, gpus, nodes, offload)
    assert ref["gpu_gb"] * m.GIB == pytest.approx(ds_gpu, abs=1)
    assert ref["cpu_gb"] * m.GIB == pytest.approx(ds_cpu, abs=1)


# ----------------------------------------------------------------------------- model states

def _train(name="llama3-70b", **kw):
    arch = m.load_arch(name)
    s = m.Settings(**{"nodes": 2, "gpus_per_node": 8, **kw})
    return m.train_pass(arch, m.count_params(arch, s.lora_rank), s)


def test_bytes_per_param_no_offload():
    t = _train()
    p = 70_553_706_496 / 16 / m.GIB
    assert t["grads_gb"] == pytest.approx(2 * p)
    assert t["optimizer_gb"] == pytest.approx(12 * p)
    assert t["params_gb"] == pytest.approx(2 * p, rel=1e-3)  # + persistent norms kept whole


def test_offload_moves_state_to_host():
    none, opt, all_ = (_train(offload=o) for o in m.OFFLOAD_CHOICES)
    assert opt["grads_gb"] == opt["optimizer_gb"] == 0
    assert opt["params_gb"] == pytest.approx(none["params_gb"])
    assert all_["params_gb"] < 0.01  # only persistent (norm) params stay on the GPU
    assert none["cpu_gb"] < opt["cpu_gb"] < all_["cpu_gb"]
    p = 70_553_706_496
    assert opt["cpu_gb"] == pytest.approx(1.4 * 18 * p / 2 / m.GIB)
    two = _train(offload="optimizer")
    one = _train(offload="optimizer", nodes=1)
    assert one["cpu_gb"] == pytest.approx(2 * two["cpu_gb"])


def test_buffers_follow_zero3_settings():
    base = _train(offload="optimizer")
    counts = m.count_params(m.load_arch("llama3-70b"))
    expected = 2 * (counts.largest_module + 50_000_000) + 2 * counts.largest_module
    assert base["buffers_gb"] * m.GIB == pytest.approx(expected)
    # without offload the optimizer step's fp32 copy of one 1e9-element sub-group is larger
    assert _train()["buffers_gb"] * m.GIB == pytest.approx(6 * 1e9)
    assert _train(knobs=m.Zero3Knobs(sub_group_size=10**8))["buffers_gb"] * m.GIB == pytest.approx(expected)


def test_activations_and_grad_ckpt():
    full = _train(seq_len=4096)
    ckpt = _train(seq_len=4096, grad_ckpt=True)
    assert ckpt["activations_gb"] < full["activations_gb"] / 10
    arch = m.load_arch("llama3-70b")
    tokens = 4096
    per_layer = m.layer_activation_bytes(arch, tokens)
    assert per_layer == tokens * (2 * (6 * 8192 + 2 * 8192 + 2 * 1024 + 4 * 28672) + 4 * 64)
    logits = 1024 * 128256 * 16  # one chunk: bf16 logits + fp32 copy + fp32 log-softmax + fp32 grad + bf16 grad
    head = 3 * tokens * 8192 * 2 + logits  # final RMSNorm: fp32 input copy + bf16 output
    assert ckpt["activations_gb"] * m.GIB == 80 * tokens * 8192 * 2 + per_layer + head
    assert full["activations_gb"] * m.GIB == 80 * per_layer + head
    double = _train(seq_len=4096, micro_batch_size=2, grad_ckpt=True)
    # twice the tokens: everything per token doubles; the one logits chunk does not (it is 1024 tokens)
    assert double["activations_gb"] * m.GIB == (80 * 2 * tokens * 8192 * 2 + m.layer_activation_bytes(arch, 2 * tokens)
                                                + 3 * 2 * tokens * 8192 * 2 + logits)
    assert double["activations_gb"] > ckpt["activations_gb"] * 1.7


def test_total_is_peak_of_backward_and_step():
    t = _train(grad_ckpt=True)
    fixed = t["params_gb"] + t["grads_gb"] + t["optimizer_gb"] + t["comm_gb"] + t["runtime_gb"]
    assert t["total_gpu_gb"] <= fixed + t["buffers_gb"] + t["activations_gb"] + 1e-9
    assert t["total_gpu_gb"] >= fixed + t["buffers_gb"] - 1e-9
    assert t["peak_phase"] in ("forward/backward", "optimizer step")


def test_lora_trains_only_adapters():
    arch = m.load_arch("llama3-70b")
    counts = m.count_params(arch, lora_rank=16)
    h, i, kv = 8192, 28672, 1024
    per_layer = 16 * ((h + h) + 2 * (h + kv) + (h + h) + 2 * (h + i) + (i + h))
    assert counts.lora == 80 * per_layer
    lora = _train(lora_rank=16, grad_ckpt=True)
    full = _train(grad_ckpt=True)
    assert lora["grads_gb"] == pytest.approx(2 * counts.lora / 16 / m.GIB)
    assert lora["optimizer_gb"] == pytest.approx(12 * counts.lora / 16 / m.GIB)
    assert lora["params_gb"] > full["params_gb"]  # frozen base + adapters, bf16
    assert lora["total_gpu_gb"] < full["total_gpu_gb"] - 50


def test_label_pass_two_models_forward_only():
    arch = m.load_arch("llama3-70b")
    counts = m.count_params(arch)
    s = m.Settings(nodes=2, gpus_per_node=8)
    label, train = m.label_pass(arch, counts, s), m.train_pass(arch, counts, s)
    assert label["grads_gb"] == label["optimizer_gb"] == 0
    assert label["params_gb"] == pytest.approx(2 * train["params_gb"])
    assert label["activations_gb"] < train["activations_gb"]


@pytest.mark.parametrize("offload", m.OFFLOAD_CHOICES)
@pytest.mark.parametrize("lora_rank", [0, 16])
def test_rho1_adds_one_frozen_bf16_copy_of_the_base_model(offload, lora_rank):
    """Rho-1's reference is the whole base model (also when training LoRA), frozen, partitioned like
    label's models: 2 B per parameter over the ranks (on the host with offload all), and nothing else
    at the backward's peak (its no-grad forwards run before the training forward)."""
    arch = m.load_arch("llama3-70b")
    counts = m.count_params(arch, lora_rank)
    s = m.Settings(nodes=2, gpus_per_node=8, offload=offload, lora_rank=lora_rank, grad_ckpt=True)
    train, rho1 = m.train_pass(arch, counts, s), m.plan_for(arch, counts, s)["rho1"]
    persistent = counts.persistent  # norms: whole on every GPU
    ref_gpu = 2 * persistent + (0 if offload == "all" else 2 * (counts.total - persistent) / 16)
    assert counts.total == 70_553_706_496  # the base model's count, adapters not included
    assert (rho1["params_gb"] - train["params_gb"]) * m.GIB == pytest.approx(ref_gpu)
    assert (rho1["total_gpu_gb"] - train["total_gpu_gb"]) * m.GIB == pytest.approx(ref_gpu)
    for k in ("grads_gb", "optimizer_gb", "buffers_gb", "activations_gb"):
        assert rho1[k] == train[k], k
    if offload == "all":  # the reference's partitions are resident on the host, like the model's
        assert (rho1["cpu_gb"] - train["cpu_gb"]) * m.GIB == pytest.approx(1.4 * 2 * (counts.total - persistent) / 2)
    label = m.label_pass(arch, counts, s)
    assert (rho1["params_gb"] - train["params_gb"]) == pytest.approx(label["params_gb"] / 2)


def test_smallest_cluster_is_minimal():
    arch = m.load_arch("llama3-70b")
    counts = m.count_params(arch)
    s = m.Settings(nodes=2, gpus_per_node=8, grad_ckpt=True)
    sc = m.smallest_cluster(arch, counts, s)
    n = sc["nodes"]
    assert n is not None and 1 <= n <= 64
    fits = lambda k: all(m.plan_for(arch, counts, m._with(s, nodes=k))[p]["fits"] for p in m.PASSES)
    assert fits(n) and (n == 1 or not fits(n - 1))
    assert sc["by_offload"]["none"] == n
    assert sc["by_offload"]["optimizer"] <= n
    r = sc["per_pass"]["rho1"]  # the baseline's own smallest cluster, not part of "every pass"
    assert r >= sc["per_pass"]["train"] and m.plan_for(arch, counts, m._with(s, nodes=r))["rho1"]["fits"]
    assert r == 1 or not m.plan_for(arch, counts, m._with(s, nodes=r - 1))["rho1"]["fits"]


def test_nothing_fits_explains_why():
    arch = m.load_arch("llama3-70b")
    sc = m.smallest_cluster(arch, m.count_params(arch), m.Settings(nodes=1, gpus_per_node=8, seq_len=32768))
    assert sc["nodes"] is None
    assert any("activations" in w for w in sc["why_none"])


# ----------------------------------------------------------------------------- model resolution

def test_model_from_config_file_and_dir(tmp_path):
    cfg = json.loads((m.FACTS_DIR / "llama3-8b.json").read_text())
    cfg.update({"architectures": ["LlamaForCausalLM"], "rope_theta": 500000.0})
    d = tmp_path / "Meta-Llama-3-8B"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    for arg in (str(d), str(d / "config.json")):
        arch = m.load_arch(arg)
        assert arch.name == "Meta-Llama-3-8B"
        assert m.count_params(arch).total == 8_030_261_248


def test_unknown_model_name():
    with pytest.raises(ConfigError, match="unknown model 'llama9-1t'.*llama3-70b"):
        m.load_arch("llama9-1t")


def test_missing_config_fields(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "llama", "hidden_size": 4096}))
    with pytest.raises(ConfigError, match="missing field.*vocab_size.*intermediate_size"):
        m.load_arch(str(path))


def test_bad_config_values(tmp_path):
    path = tmp_path / "config.json"
    cfg = json.loads((m.FACTS_DIR / "llama3-8b.json").read_text())
    path.write_text(json.dumps({**cfg, "model_type": "mixtral"}))
    with pytest.raises(ConfigError, match="model_type 'mixtral' is not supported"):
        m.load_arch(str(path))
    path.write_text(json.dumps({**cfg, "hidden_size": "4096"}))
    with pytest.raises(ConfigError, match="hidden_size"):
        m.load_arch(str(path))
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        m.load_arch(str(path))
    with pytest.raises(ConfigError, match="no such file"):
        m.load_arch(str(tmp_path / "nope" / "config.json"))


# ----------------------------------------------------------------------------- CLI

def test_cli_json_llama3_70b(capsys):
    rc = main(["estimate-memory", "--model", "llama3-70b", "--nodes", "2", "--gpus-per-node", "8", "--json"])
    assert rc == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["model"] == "llama3-70b"
    assert plan["params"] == 70_553_706_496
    assert plan["nodes"] == 2 and plan["gpus_per_node"] == 8
    assert set(plan["passes"]) == {"train", "label", "rho1"}
    for name, row in plan["passes"].items():
        for key in PASS_KEYS:
            assert isinstance(row[key], (int, float)) and row[key] >= 0, (name, key)
        assert row["total_gpu_gb"] > 0
    assert "nodes" in plan["smallest_cluster"]
    assert set(plan["smallest_cluster"]["by_offload"]) == set(m.OFFLOAD_CHOICES)
    assert abs(plan["deepspeed_estimator"]["gpu_diff_pct"]) <= 10


@pytest.mark.parametrize("offload", m.OFFLOAD_CHOICES)
def test_cli_table(capsys, offload):
    rc = main(["estimate-memory", "--model", "llama3-70b", "--nodes", "2", "--gpus-per-node", "8",
               "--offload", offload, "--grad-ckpt"])
    assert rc == 0
    out = capsys.readouterr().out
    assert f"offload={offload}" in out
    assert "\ntrain " in out and "\nlabel " in out and "\nrho1 " in out
    assert "Smallest cluster that fits" in out


def test_cli_user_errors(capsys):
    assert main(["estimate-memory", "--model", "nope-7b", "--nodes", "1", "--gpus-per-node", "8"]) == 2
    assert "unknown model 'nope-7b'" in capsys.readouterr().err
    assert main(["estimate-memory", "--model", "llama3-8b", "--nodes", "0", "--gpus-per-node", "8"]) == 2
    assert "--nodes must be >= 1" in capsys.readouterr().err
