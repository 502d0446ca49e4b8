"""`rft-ds estimate-memory`: per-GPU and per-node memory plan for ZeRO-3 training and labeling.

Usage:
    rft-ds estimate-memory --model llama3-70b --nodes 2 --gpus-per-node 8 [--offload none|optimizer|all]
        [--seq-len 4096 --micro-batch-size 1 --grad-ckpt] [--lora-rank R]
        [--gpu-memory-gb 80 --cpu-memory-gb 1024] [--json]

`--model` is a HF `config.json`, a directory holding one, or a shipped name (`llama3-8b`,
`llama3-70b`, `qwen2.5-72b`: architecture facts in `rft_ds/tools/model_facts/<name>.json`).

All sizes are GiB (2**30 bytes), the unit DeepSpeed's own estimator prints. P is the parameter
count, T the trained parameters (P, or the LoRA adapters), N = nodes * gpus_per_node, L the
largest single module (DeepSpeed's "largest layer": embed_tokens / lm_head for these models).

Model states (ZeRO-3, bf16 params, fp32 master weights, Adam):
    bf16 param 2 B + bf16 grad 2 B + optimizer 12 B (fp32 master 4 + Adam m 4 + v 4) per trained
    parameter, each partitioned over all N GPUs. Gradients stay bf16 because DeepSpeed's gradient
    accumulation dtype defaults to the model dtype (`data_types.grad_accum_dtype` unset).
    --offload optimizer: the 12 B go to host memory, and so do the gradient partitions (DeepSpeed
      keeps its bf16 accumulation partition, 2 B, and a persistent fp32 gradient buffer, 4 B, on
      the host when the optimizer is offloaded), 18 B per trained param on the hosts, per node
      divided by the number of nodes. The GPU keeps the 2 B bf16 params.
    --offload all: the bf16 params (2 B) too; the GPU keeps only persistent params and buffers.
    Parameters smaller than stage3_param_persistence_threshold (1e5 elements: norms, biases, small
    LoRA tensors) are kept whole on every GPU.
ZeRO-3 working buffers (DeepSpeed defaults: stage3_prefetch_bucket_size 5e7,
stage3_max_live_parameters 1e9, reduce_bucket_size 5e8, sub_group_size 1e9):
    forward/backward: the gathered bf16 parameters of the largest module (with gradient
    checkpointing: of a whole decoder layer if larger, since a recomputed layer stays gathered
    until its backward, capped by max_live_parameters) plus the prefetch bucket, and in training
    the largest trained tensor's unpartitioned bf16 gradient before its reduce-scatter;
    optimizer step (optimizer on GPU): DeepSpeed flattens one sub-group's bf16 gradients and casts
    them to fp32 (2 + 4 B x min(sub_group_size, T/N));
    buffers_gb is the larger of the two. total_gpu_gb is the larger of the two phases' peaks,
    forward/backward (states + gathered buffers + activations) and optimizer step (states + step
    copy; activations are freed by then), plus comm_gb and runtime_gb in both.
    comm_gb: the gradient reduce bucket (reduce_bucket_size bf16 elements), allocated in training.
    runtime_gb: CUDA context, NCCL buffers and allocator slack (--runtime-reserve-gb).
Activations (bf16, FlashAttention/SDPA so no seq x seq matrix), per decoder layer and token:
    full: 2 B x (6h + 2 q_dim + 2 kv_dim + 4i) + 4 B x heads (attention logsumexp): two RMSNorms
    (HF upcasts to fp32: 4 B input copy + 2 B normalized output each), q and attention output,
    k and v, gate/up/SiLU/product; with --grad-ckpt only the
    2 B x h hidden state at each layer boundary plus one layer's full activations (the layer being
    recomputed). The loss computes logits only for loss tokens, in chunks, and recomputes each
    chunk in backward, so one chunk of --loss-chunk-tokens (default 1024, = train/label
    --logits-chunk) tokens is alive at a time; we assume every token is a loss token. Training:
    16 B per token x vocab (bf16 logits, their fp32 copy, fp32 log-softmax, its fp32 gradient and
    the bf16 gradient of the logits; bench/fig7_loss_memory.py measures 12-14 B in fp32, where the
    bf16 tensors do not exist). Label (no grad): 10 B (bf16 logits, fp32 copy, fp32 log-softmax).
Passes: `train` (SHAD tuning, SFT and RFT have the same footprint); `label` runs two models of this
architecture forward only (no grads, no optimizer), one after the other, both resident; `rho1` (the
Rho-1 baseline, shown but not in "every pass") is train plus one frozen bf16 copy of the base model.
Host memory per node: resident offloaded state, or when nothing is offloaded the load-time peak
    DeepSpeed assumes (each of the node's G ranks holds the largest module in fp32 while zero.Init
    partitions it, 4 B x L x G), times --host-overhead-factor (default 1.4) for pinned-memory
    rounding (PyTorch's caching host allocator rounds pinned buffers up to a power of two) and
    fragmentation. DeepSpeed's estimator applies 1.5 to 16 B/param; we count 18 B/param.

Kept to the standard library: no torch or deepspeed import.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from rft_ds.errors import ConfigError

GIB = 2**30
FACTS_DIR = Path(__file__).with_name("model_facts")
OFFLOAD_CHOICES = ("none", "optimizer", "all")
PASSES = ("train", "label")   # the three passes of SHAD + RFT: "every pass fits" means these
ROWS = PASSES + ("rho1",)     # rho1: train --loss rho1, the baseline with a frozen reference model
MAX_NODES = 64

REQUIRED_FIELDS = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                   "num_attention_heads")
# model_type -> (q/k/v bias, o_proj bias, q/k RMSNorm) defaults when the config does not say.
SUPPORTED_TYPES = {
    "llama": (False, False, False),
    "mistral": (False, False, False),
    "qwen2": (True, False, False),   # Qwen2/2.5: q_proj, k_proj, v_proj have biases
    "qwen3": (False, False, True),   # Qwen3: q_norm / k_norm of head_dim
}
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Bytes per trained parameter.
BF16, FP32 = 2, 4
OPTIMIZER_BYTES = 12          # fp32 master + Adam m + Adam v
HOST_GRAD_BYTES = BF16 + FP32  # offloaded optimizer: bf16 accumulation partition + fp32 grad buffer


@dataclass(frozen=True)
class Zero3Knobs:
    """The DeepSpeed ZeRO-3 settings the buffers depend on (defaults = DeepSpeed's)."""

    prefetch_bucket_size: int = 50_000_000          # stage3_prefetch_bucket_size
    max_live_parameters: int = 1_000_000_000        # stage3_max_live_parameters
    reduce_bucket_size: int = 500_000_000           # reduce_bucket_size
    sub_group_size: int = 1_000_000_000             # sub_group_size
    param_persistence_threshold: int = 100_000      # stage3_param_persistence_threshold


@dataclass(frozen=True)
class Arch:
    name: str
    source: str
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    tie_word_embeddings: bool
    max_position_embeddings: int | None
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def linears(self) -> list[tuple[str, int, int, bool]]:
        """(name, in_features, out_features, bias) of one decoder layer's Linear modules."""
        h, i = self.hidden_size, self.intermediate_size
        return [
            ("q_proj", h, self.q_dim, self.qkv_bias),
            ("k_proj", h, self.kv_dim, self.qkv_bias),
            ("v_proj", h, self.kv_dim, self.qkv_bias),
            ("o_proj", self.q_dim, h, self.o_bias),
            ("gate_proj", h, i, self.mlp_bias),
            ("up_proj", h, i, self.mlp_bias),
            ("down_proj", i, h, self.mlp_bias),
        ]


@dataclass
class ParamCounts:
    total: int
    embedding: int
    lm_head: int               # 0 when tied to the embedding
    per_layer: int
    largest_module: int        # params of the largest single module (DeepSpeed's largest_layer_params)
    largest_module_name: str
    largest_tensor: int        # largest single parameter tensor
    persistent: int            # params in tensors below the persistence threshold (kept whole)
    lora: int = 0              # adapter params (all layers)
    lora_largest_tensor: int = 0
    lora_persistent: int = 0
    breakdown: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- model facts

def shipped_models() -> list[str]:
    return sorted(p.stem for p in FACTS_DIR.glob("*.json"))


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read model config: {e.strerror or e}") from e
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a model config must be a JSON object, got {type(data).__name__}")
    return data


def resolve_model(model: str) -> tuple[str, Path]:
    """Name and config.json path for `--model` (a config file, a model directory or a shipped name)."""
    p = Path(model).expanduser()
    shipped = FACTS_DIR / f"{model}.json"
    if p.is_dir() and not (p / "config.json").is_file() and shipped.is_file():
        return model, shipped  # a same-named directory without a config does not hide a shipped name
    if p.is_dir():
        cfg = p / "config.json"
        if not cfg.is_file():
            raise ConfigError(f"{p}: directory has no config.json (pass a HF model directory or its config.json)")
        return p.name or str(p), cfg
    if p.is_file():
        name = p.parent.name if p.name == "config.json" and p.parent.name else p.stem
        return name, p
    if os.sep not in model and not model.endswith(".json") and shipped.is_file():
        return model, shipped
    looks_like_path = os.sep in model or model.endswith(".json") or model.startswith(".")
    if looks_like_path:
        raise ConfigError(f"{model}: no such file or directory (pass a HF config.json, a model directory "
                          f"or one of the shipped names: {', '.join(shipped_models())})")
    raise ConfigError(f"unknown model '{model}': not a file or directory, and not a shipped name "
                      f"({', '.join(shipped_models())})")


def _int_field(cfg: dict, key: str, where: str) -> int:
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ConfigError(f"{where}: field '{key}' must be a positive integer, got {v!r}")
    return v


def arch_from_config(cfg: dict, name: str, source: str) -> Arch:
    where = source
    missing = [k for k in REQUIRED_FIELDS if cfg.get(k) is None]
    if missing:
        hint = " (a multimodal config keeps them under 'text_config'; pass that part)" if "text_config" in cfg else ""
        raise ConfigError(f"{where}: missing field(s) {', '.join(missing)} needed to count parameters{hint}")
    model_type = cfg["model_type"]
    if model_type not in SUPPORTED_TYPES:
        raise ConfigError(f"{where}: model_type '{model_type}' is not supported for exact counting "
                          f"(supported: {', '.join(sorted(SUPPORTED_TYPES))})")
    heads = _int_field(cfg, "num_attention_heads", where)
    hidden = _int_field(cfg, "hidden_size", where)
    kv = cfg.get("num_key_value_heads")
    kv = heads if kv is None else _int_field(cfg, "num_key_value_heads", where)
    if heads % kv:
        raise ConfigError(f"{where}: num_attention_heads ({heads}) is not a multiple of num_key_value_heads ({kv})")
    head_dim = cfg.get("head_dim")
    if head_dim is None:
        if hidden % heads:
            raise ConfigError(f"{where}: hidden_size ({hidden}) is not a multiple of num_attention_heads "
                              f"({heads}) and there is no head_dim field")
        head_dim = hidden // heads
    else:
        head_dim = _int_field(cfg, "head_dim", where)
    qkv_bias, o_bias, qk_norm = SUPPORTED_TYPES[model_type]
    if "attention_bias" in cfg:  # llama/mistral-style configs: one flag for q, k, v and o
        qkv_bias = o_bias = bool(cfg["attention_bias"])
    return Arch(
        name=name,
        source=source,
        model_type=model_type,
        vocab_size=_int_field(cfg, "vocab_size", where),
        hidden_size=hidden,
        intermediate_size=_int_field(cfg, "intermediate_size", where),
        num_hidden_layers=_int_field(cfg, "num_hidden_layers", where),
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=head_dim,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_position_embeddings=cfg.get("max_position_embeddings"),
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        qk_norm=qk_norm,
    )


def load_arch(model: str) -> Arch:
    name, path = resolve_model(model)
    return arch_from_config(_read_json(path), name, str(path))


# ----------------------------------------------------------------------------- parameter count

def count_params(arch: Arch, lora_rank: int = 0, knobs: Zero3Knobs = Zero3Knobs()) -> ParamCounts:
    """Exact parameter count from the architecture (HF LlamaForCausalLM / Qwen2ForCausalLM layout)."""
    h, v = arch.hidden_size, arch.vocab_size
    thr = knobs.param_persistence_threshold
    tensors_per_layer: list[int] = []            # every parameter tensor of one decoder layer
    modules: dict[str, int] = {}                 # module -> its own params
    for name, fan_in, fan_out, bias in arch.linears():
        tensors_per_layer.append(fan_in * fan_out)
        if bias:
            tensors_per_layer.append(fan_out)
        modules[name] = fan_in * fan_out + (fan_out if bias else 0)
    norms = [h, h] + ([arch.head_dim, arch.head_dim] if arch.qk_norm else [])
    tensors_per_layer += norms
    per_layer = sum(tensors_per_layer)
    embedding = v * h
    lm_head = 0 if arch.tie_word_embeddings else v * h
    modules["embed_tokens"] = embedding
    modules["lm_head"] = v * h  # a tied head still owns (shares) the weight
    total = embedding + lm_head + arch.num_hidden_layers * per_layer + h  # + final norm
    largest_name = max(modules, key=lambda k: (modules[k], k))
    persistent = arch.num_hidden_layers * sum(t for t in tensors_per_layer if t < thr) + (h if h < thr else 0)
    counts = ParamCounts(
        total=total,
        embedding=embedding,
        lm_head=lm_head,
        per_layer=per_layer,
        largest_module=modules[largest_name],
        largest_module_name=largest_name,
        largest_tensor=max([embedding] + tensors_per_layer),
        persistent=persistent,
        breakdown={
            "embed_tokens": embedding,
            "lm_head": lm_head,
            "decoder_layers": arch.num_hidden_layers * per_layer,
            "per_decoder_layer": per_layer,
            "final_norm": h,
        },
    )
    if lora_rank:
        r = lora_rank
        lora_tensors = []
        for name, fan_in, fan_out, _ in arch.linears():
            lora_tensors += [r * fan_in, r * fan_out]   # lora_A: r x in, lora_B: out x r
        counts.lora = arch.num_hidden_layers * sum(lora_tensors)
        counts.lora_largest_tensor = max(lora_tensors)
        counts.lora_persistent = arch.num_hidden_layers * sum(t for t in lora_tensors if t < thr)
    return counts


# ----------------------------------------------------------------------------- the plan

@dataclass(frozen=True)
class Settings:
    nodes: int
    gpus_per_node: int
    offload: str = "none"
    seq_len: int = 4096
    micro_batch_size: int = 1
    grad_ckpt: bool = False
    lora_rank: int = 0
    loss_chunk_tokens: int = 1024
    gpu_memory_gb: float = 80.0
    cpu_memory_gb: float = 1024.0
    runtime_reserve_gb: float = 2.0
    host_overhead_factor: float = 1.4
    knobs: Zero3Knobs = Zero3Knobs()

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node


def layer_activation_bytes(arch: Arch, tokens: int, lora_rank: int = 0) -> int:
    """Activations one decoder layer saves for backward (bf16, flash attention)."""
    h, i = arch.hidden_size, arch.intermediate_size
    # two RMSNorms (HF upcasts to fp32: 4 B input copy + 2 B normalized output each = 2 B x 3h),
    # q and attention output (q_dim each), k and v (kv_dim each), gate, up, SiLU(gate), product (i each)
    per_token = BF16 * (6 * h + 2 * arch.q_dim + 2 * arch.kv_dim + 4 * i)
    per_token += FP32 * arch.num_attention_heads  # attention logsumexp
    if arch.qk_norm:
        per_token += BF16 * (arch.q_dim + arch.kv_dim)  # q/k RMSNorm inputs
    if lora_rank:
        per_token += BF16 * lora_rank * len(LORA_TARGETS)  # lora_A outputs (lora_dropout = 0)
    return tokens * per_token


# bytes per (loss token x vocab entry) of the one logits chunk alive in training (see the docstring)
LOSS_CHUNK_TRAIN_B = BF16 + FP32 + FP32 + FP32 + BF16


def layer_forward_peak_bytes(arch: Arch, tokens: int) -> int:
    """Largest transient working set inside one decoder layer's forward without autograd."""
    h, i = arch.hidden_size, arch.intermediate_size
    attn = h + 2 * arch.q_dim + 2 * arch.kv_dim     # normed input, q, k, v, attention output
    mlp = h + 3 * i                                 # normed input, gate, up, SiLU(gate)*up
    return tokens * BF16 * max(attn, mlp)


def activation_bytes(arch: Arch, s: Settings, train: bool) -> int:
    tokens = s.seq_len * s.micro_batch_size
    chunk = min(s.loss_chunk_tokens, tokens)
    hidden = tokens * BF16 * arch.hidden_size
    if not train:
        return hidden + layer_forward_peak_bytes(arch, tokens) + chunk * arch.vocab_size * (BF16 + FP32 + FP32)
    layer = layer_activation_bytes(arch, tokens, s.lora_rank)
    if s.grad_ckpt:
        body = arch.num_hidden_layers * hidden + layer
    else:
        body = arch.num_hidden_layers * layer
    head = 3 * hidden + chunk * arch.vocab_size * LOSS_CHUNK_TRAIN_B  # final RMSNorm (6 B/h) + one logits chunk
    return body + head


def _gathered_params(counts: ParamCounts, s: Settings, train: bool) -> int:
    k = s.knobs
    live = counts.largest_module
    if train and s.grad_ckpt:
        live = max(live, min(counts.per_layer, k.max_live_parameters))
    return live + k.prefetch_bucket_size


def _frozen_copy(counts: ParamCounts, s: Settings) -> tuple[float, float]:
    """One frozen, forward-only copy of the base model under ZeRO-3 (bf16): (bytes per GPU, bytes
    resident per node). Offload all: its partitions live on the host."""
    off_param = s.offload == "all"
    partitioned = BF16 * (counts.total - counts.persistent)
    gpu = BF16 * counts.persistent + (0 if off_param else partitioned / s.world)
    return gpu, (partitioned / s.nodes if off_param else 0.0)


def train_pass(arch: Arch, counts: ParamCounts, s: Settings, frozen_copies: int = 0) -> dict:
    """Bytes per GPU (and per node for cpu) for one training step. `frozen_copies`: frozen models
    beside the trained one (Rho-1's reference: 1), whose no-grad forwards run before the training
    forward, so their gathered parameters and activations are gone by the backward's peak and only
    their partitions add."""
    n, k = s.world, s.knobs
    lora = s.lora_rank > 0
    base = counts.total + (counts.lora if lora else 0)      # every parameter ZeRO-3 manages
    trained = counts.lora if lora else counts.total
    persistent = counts.persistent + (counts.lora_persistent if lora else 0)
    off_opt = s.offload in ("optimizer", "all")
    off_param = s.offload == "all"

    frozen_gpu, frozen_host = _frozen_copy(counts, s)
    params = BF16 * persistent + (0 if off_param else BF16 * (base - persistent) / n) + frozen_copies * frozen_gpu
    grads = 0 if off_opt else BF16 * trained / n
    optimizer = 0 if off_opt else OPTIMIZER_BYTES * trained / n
    largest_trained = counts.lora_largest_tensor if lora else counts.largest_module
    fwd_bwd = BF16 * _gathered_params(counts, s, train=True) + BF16 * largest_trained
    step = 0 if off_opt else (BF16 + FP32) * min(k.sub_group_size, trained / n)
    comm = BF16 * k.reduce_bucket_size
    runtime = s.runtime_reserve_gb * GIB
    activations = activation_bytes(arch, s, train=True)

    load = FP32 * counts.largest_module * s.gpus_per_node
    resident = 0.0
    if off_opt:
        resident += (OPTIMIZER_BYTES + HOST_GRAD_BYTES) * trained / s.nodes
    if off_param:
        resident += BF16 * (base - persistent) / s.nodes + frozen_copies * frozen_host
    cpu = s.host_overhead_factor * max(load, resident)
    return _finish(params, grads, optimizer, fwd_bwd, step, activations, comm, runtime, cpu, s)


def label_pass(arch: Arch, counts: ParamCounts, s: Settings) -> dict:
    """Two models of this architecture, forward only, both resident, run one after the other."""
    models = 2
    per_model, per_model_host = _frozen_copy(counts, s)
    params = models * per_model
    buffers = BF16 * _gathered_params(counts, s, train=False)
    activations = activation_bytes(arch, s, train=False)
    runtime = s.runtime_reserve_gb * GIB
    load = FP32 * counts.largest_module * s.gpus_per_node
    cpu = s.host_overhead_factor * max(load, models * per_model_host)
    return _finish(params, 0, 0, buffers, 0, activations, 0, runtime, cpu, s)


def _finish(params, grads, optimizer, fwd_bwd, step, activations, comm, runtime, cpu, s: Settings) -> dict:
    """Per-GPU figures in GiB. The peak is either the backward pass (gathered params + activations)
    or the optimizer step (fp32 grad copy, activations freed); buffers_gb is the larger buffer."""
    out = {
        "params_gb": params / GIB,
        "grads_gb": grads / GIB,
        "optimizer_gb": optimizer / GIB,
        "buffers_gb": max(fwd_bwd, step) / GIB,
        "activations_gb": activations / GIB,
        "comm_gb": comm / GIB,
        "runtime_gb": runtime / GIB,
    }
    fixed = params + grads + optimizer + comm + runtime
    backward, optimizer_step = fixed + fwd_bwd + activations, fixed + step
    out["total_gpu_gb"] = max(backward, optimizer_step) / GIB
    out["peak_phase"] = "forward/backward" if backward >= optimizer_step else "optimizer step"
    out["cpu_gb"] = cpu / GIB
    out["fits"] = out["total_gpu_gb"] <= s.gpu_memory_gb and out["cpu_gb"] <= s.cpu_memory_gb
    return out


def deepspeed_reference(total_params: int, largest_layer_params: int, gpus_per_node: int, nodes: int,
                        offload: str, additional_buffer_factor: float = 1.5) -> dict:
    """DeepSpeed's `estimate_zero3_model_states_mem_needs(..., zero_init=True)` arithmetic, in GiB.

    Reproduced so the plan can show it without importing deepspeed; tests/test_memory.py checks it
    against the real function. DeepSpeed counts 18 B/param (2 bf16 params + 16: fp32 master, m, v
    and fp32 grads) plus 4 B x the largest layer on the GPU, and 1.5 x the host bytes.
    """
    world = gpus_per_node * nodes
    largest = 4 * largest_layer_params
    if offload == "all":
        gpu = largest
        cpu = total_params * 18 / nodes * additional_buffer_factor
    elif offload == "optimizer":
        gpu = largest + int(2 * total_params / world)
        cpu = total_params * 16 / nodes * additional_buffer_factor
    else:
        gpu = largest + int(18 * total_params / world)
        cpu = largest_layer_params * 4 * gpus_per_node * additional_buffer_factor
    return {"gpu_gb": int(gpu) / GIB, "cpu_gb": int(cpu) / GIB}


def plan_for(arch: Arch, counts: ParamCounts, s: Settings) -> dict:
    return {"train": train_pass(arch, counts, s), "label": label_pass(arch, counts, s),
            "rho1": train_pass(arch, counts, s, frozen_copies=1)}


def smallest_cluster(arch: Arch, counts: ParamCounts, s: Settings) -> dict:
    """Smallest node count in 1..64 (same GPUs per node and offload) where every pass fits (train and
    label; per_pass also has the rho1 baseline's)."""
    per_pass: dict[str, int | None] = {p: None for p in ROWS}
    both = None
    for nodes in range(1, MAX_NODES + 1):
        passes = plan_for(arch, counts, _with(s, nodes=nodes))
        for p in ROWS:
            if per_pass[p] is None and passes[p]["fits"]:
                per_pass[p] = nodes
        if both is None and all(passes[p]["fits"] for p in PASSES):
            both = nodes
        if all(v is not None for v in per_pass.values()):
            break
    by_offload = {}
    for off in OFFLOAD_CHOICES:
        found = None
        for nodes in range(1, MAX_NODES + 1):
            passes = plan_for(arch, counts, _with(s, nodes=nodes, offload=off))
            if all(passes[p]["fits"] for p in PASSES):
                found = nodes
                break
        by_offload[off] = found
    why = []
    if both is None:
        last = plan_for(arch, counts, _with(s, nodes=MAX_NODES))
        for p in PASSES:
            r = last[p]
            if r["total_gpu_gb"] > s.gpu_memory_gb:
                why.append(f"{p} still needs {r['total_gpu_gb']:.1f} GiB per GPU at {MAX_NODES} nodes; "
                           f"{r['activations_gb']:.1f} GiB of it is activations, which more nodes do not shrink "
                           f"(try --grad-ckpt, a smaller --micro-batch-size or --seq-len)")
            if r["cpu_gb"] > s.cpu_memory_gb:
                why.append(f"{p} needs {r['cpu_gb']:.1f} GiB of host memory per node at {MAX_NODES} nodes")
    return {
        "nodes": both,
        "why_none": why,
        "gpus_per_node": s.gpus_per_node,
        "offload": s.offload,
        "gpu_memory_gb": s.gpu_memory_gb,
        "cpu_memory_gb": s.cpu_memory_gb,
        "per_pass": per_pass,
        "by_offload": by_offload,
        "searched_nodes": [1, MAX_NODES],
    }


def _with(s: Settings, **changes) -> Settings:
    return dataclasses.replace(s, **changes)


def _rounded(d: dict) -> dict:
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in d.items()}


def estimate(model: str, s: Settings) -> dict:
    """The full plan as a JSON-able dict."""
    validate(s)
    arch = load_arch(model)
    counts = count_params(arch, s.lora_rank, s.knobs)
    passes = plan_for(arch, counts, s)
    plan = {
        "model": arch.name,
        "config": arch.source,
        "model_type": arch.model_type,
        "params": counts.total,
        "trainable_params": counts.lora if s.lora_rank else counts.total,
        "largest_module_params": counts.largest_module,
        "largest_module": counts.largest_module_name,
        "param_breakdown": counts.breakdown,
        "nodes": s.nodes,
        "gpus_per_node": s.gpus_per_node,
        "offload": s.offload,
        "seq_len": s.seq_len,
        "micro_batch_size": s.micro_batch_size,
        "grad_ckpt": s.grad_ckpt,
        "lora_rank": s.lora_rank,
        "loss_chunk_tokens": s.loss_chunk_tokens,
        "units": "GiB (2**30 bytes)",
        "assumptions": {
            "bytes_per_trained_param": {"bf16_param": BF16, "bf16_grad": BF16, "optimizer_fp32_master_m_v": 12},
            "host_bytes_per_trained_param_offloaded": OPTIMIZER_BYTES + HOST_GRAD_BYTES,
            "zero3": {
                "stage3_prefetch_bucket_size": s.knobs.prefetch_bucket_size,
                "stage3_max_live_parameters": s.knobs.max_live_parameters,
                "reduce_bucket_size": s.knobs.reduce_bucket_size,
                "sub_group_size": s.knobs.sub_group_size,
                "stage3_param_persistence_threshold": s.knobs.param_persistence_threshold,
            },
            "runtime_reserve_gb": s.runtime_reserve_gb,
            "host_overhead_factor": s.host_overhead_factor,
            "label_models": 2,
        },
        "passes": {p: _rounded(v) for p, v in passes.items()},
        "smallest_cluster": smallest_cluster(arch, counts, s),
    }
    if not s.lora_rank:
        ds = deepspeed_reference(counts.total, counts.largest_module, s.gpus_per_node, s.nodes, s.offload)
        t = passes["train"]
        ours = t["params_gb"] + t["grads_gb"] + t["optimizer_gb"] + t["buffers_gb"]
        plan["deepspeed_estimator"] = {
            "function": "deepspeed.runtime.zero.stage3.estimate_zero3_model_states_mem_needs(zero_init=True)",
            "gpu_gb": round(ds["gpu_gb"], 3),
            "cpu_gb": round(ds["cpu_gb"], 3),
            "ours_gpu_gb": round(ours, 3),
            "ours_cpu_gb": round(t["cpu_gb"], 3),
            "gpu_diff_pct": round(100 * (ours / ds["gpu_gb"] - 1), 1),
            "cpu_diff_pct": round(100 * (t["cpu_gb"] / ds["cpu_gb"] - 1), 1),
        }
    return plan


def validate(s: Settings) -> None:
    checks = [
        (s.nodes >= 1, f"--nodes must be >= 1, got {s.nodes}"),
        (s.gpus_per_node >= 1, f"--gpus-per-node must be >= 1, got {s.gpus_per_node}"),
        (s.offload in OFFLOAD_CHOICES, f"--offload must be one of {', '.join(OFFLOAD_CHOICES)}, got {s.offload!r}"),
        (s.seq_len >= 1, f"--seq-len must be >= 1, got {s.seq_len}"),
        (s.micro_batch_size >= 1, f"--micro-batch-size must be >= 1, got {s.micro_batch_size}"),
        (s.lora_rank >= 0, f"--lora-rank must be >= 0, got {s.lora_rank}"),
        (s.loss_chunk_tokens >= 1, f"--loss-chunk-tokens must be >= 1, got {s.loss_chunk_tokens}"),
        (s.gpu_memory_gb > 0, f"--gpu-memory-gb must be > 0, got {s.gpu_memory_gb}"),
        (s.cpu_memory_gb > 0, f"--cpu-memory-gb must be > 0, got {s.cpu_memory_gb}"),
        (s.runtime_reserve_gb >= 0, f"--runtime-reserve-gb must be >= 0, got {s.runtime_reserve_gb}"),
        (s.host_overhead_factor >= 1, f"--host-overhead-factor must be >= 1, got {s.host_overhead_factor}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)


# ----------------------------------------------------------------------------- output

COLUMNS = [
    ("params_gb", "params"),
    ("grads_gb", "grads"),
    ("optimizer_gb", "optim"),
    ("buffers_gb", "buffers"),
    ("activations_gb", "activ"),
    ("comm_gb", "comm"),
    ("runtime_gb", "runtime"),
    ("total_gpu_gb", "total/GPU"),
    ("cpu_gb", "CPU/node"),
]


def _nodes_str(n: int | None) -> str:
    if n is None:
        return f"none in 1..{MAX_NODES}"
    return f"{n} node" + ("s" if n > 1 else "")


def format_table(plan: dict) -> str:
    p = plan
    lines = []
    trained = ("full fine-tune" if not p["lora_rank"] else
               f"LoRA r={p['lora_rank']} on {','.join(t.split('_')[0] for t in LORA_TARGETS)} "
               f"({p['trainable_params'] / 1e6:,.1f}M trained)")
    lines.append(f"Model {p['model']} ({p['model_type']}): {p['params'] / 1e9:.2f}B params, largest module "
                 f"{p['largest_module']} {p['largest_module_params'] / 1e9:.2f}B; {trained}")
    lines.append(f"Cluster {p['nodes']} x {p['gpus_per_node']} GPUs; offload={p['offload']}; "
                 f"seq {p['seq_len']} x micro-batch {p['micro_batch_size']}; "
                 f"grad-ckpt {'on' if p['grad_ckpt'] else 'off'}; loss chunk {p['loss_chunk_tokens']} tokens")
    sc = p["smallest_cluster"]
    lines.append(f"Limits {sc['gpu_memory_gb']:g} GiB per GPU, {sc['cpu_memory_gb']:g} GiB per node "
                 f"(all figures GiB; per GPU except CPU/node)")
    lines.append("")
    header = f"{'pass':<6}" + "".join(f"{label:>10}" for _, label in COLUMNS) + f"{'fits':>6}"
    lines.append(header)
    lines.append("-" * len(header))
    for name in ROWS:
        row = p["passes"][name]
        lines.append(f"{name:<6}" + "".join(f"{row[key]:>10.2f}" for key, _ in COLUMNS)
                     + f"{'yes' if row['fits'] else 'NO':>6}")
    lines.append("")
    per = sc["per_pass"]
    lines.append(f"Smallest cluster that fits ({sc['gpus_per_node']} GPUs/node, offload={sc['offload']}): "
                 f"{_nodes_str(sc['nodes'])}  [train: {_nodes_str(per['train'])}, label: {_nodes_str(per['label'])}; "
                 f"rho1: {_nodes_str(per['rho1'])}]")
    other = ", ".join(f"{k}: {_nodes_str(v)}" for k, v in sc["by_offload"].items())
    lines.append(f"  by offload option: {other}")
    for reason in sc["why_none"]:
        lines.append(f"  {reason}")
    ds = p.get("deepspeed_estimator")
    if ds:
        lines.append(f"DeepSpeed estimate_zero3_model_states_mem_needs: {ds['gpu_gb']:.2f} GiB/GPU, "
                     f"{ds['cpu_gb']:.2f} GiB/node; ours (params+grads+optim+buffers): {ds['ours_gpu_gb']:.2f} "
                     f"({ds['gpu_diff_pct']:+.1f}%), CPU {ds['ours_cpu_gb']:.2f} ({ds['cpu_diff_pct']:+.1f}%)")
    lines.append("train = SHAD tuning / SFT / RFT; label = two models, forward only; rho1 = the Rho-1 baseline "
                 "(train --loss rho1: + its frozen reference model; not in 'every pass'). buffers = the larger of the "
                 "ZeRO-3 gathered params (+prefetch, +largest grad) and the optimizer step's fp32 grad copy; "
                 "comm = grad reduce bucket; runtime = CUDA/NCCL reserve. total/GPU is the peak of the "
                 "backward (with activations) and the optimizer step (without), so it can be less than the "
                 "row's sum. See docs/memory.md.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI

def register(subparsers) -> None:
    d = Settings(nodes=1, gpus_per_node=1)
    k = Zero3Knobs()
    p = subparsers.add_parser(
        "estimate-memory",
        help="per-GPU / per-node memory plan for ZeRO-3 training and labeling",
        description="Estimate per-GPU and per-node memory of the train (SHAD/SFT/RFT) and label passes "
                    "under DeepSpeed ZeRO-3 (bf16 params, fp32 master weights, Adam), and the smallest "
                    "cluster that fits. Figures are GiB. Formulas and assumptions: docs/memory.md.",
    )
    p.add_argument("--model", required=True,
                   help=f"HF config.json, a model directory with one, or a shipped name ({', '.join(shipped_models())})")
    p.add_argument("--nodes", type=int, required=True, help="number of nodes")
    p.add_argument("--gpus-per-node", type=int, required=True, help="GPUs per node")
    p.add_argument("--offload", choices=OFFLOAD_CHOICES, default=d.offload,
                   help="ZeRO-3 CPU offload: none, optimizer (fp32 master + Adam + grads), all (+ bf16 params)")
    p.add_argument("--seq-len", type=int, default=d.seq_len, help=f"tokens per sample (default {d.seq_len})")
    p.add_argument("--micro-batch-size", type=int, default=d.micro_batch_size,
                   help=f"samples per GPU per forward (default {d.micro_batch_size})")
    p.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing of every decoder layer")
    p.add_argument("--lora-rank", type=int, default=0,
                   help="LoRA rank on q,k,v,o,gate,up,down (0 = full fine-tune)")
    p.add_argument("--loss-chunk-tokens", type=int, default=d.loss_chunk_tokens,
                   help=f"loss tokens whose logits are alive at once (default {d.loss_chunk_tokens})")
    p.add_argument("--gpu-memory-gb", type=float, default=d.gpu_memory_gb,
                   help=f"GiB per GPU for 'fits' (default {d.gpu_memory_gb:g})")
    p.add_argument("--cpu-memory-gb", type=float, default=d.cpu_memory_gb,
                   help=f"GiB of host memory per node for 'fits' (default {d.cpu_memory_gb:g})")
    p.add_argument("--runtime-reserve-gb", type=float, default=d.runtime_reserve_gb,
                   help=f"per-GPU reserve for CUDA context, NCCL and fragmentation (default {d.runtime_reserve_gb:g})")
    p.add_argument("--host-overhead-factor", type=float, default=d.host_overhead_factor,
                   help=f"multiplier on host bytes for pinned rounding/fragmentation (default {d.host_overhead_factor:g})")
    p.add_argument("--prefetch-bucket-size", type=float, default=k.prefetch_bucket_size,
                   help="stage3_prefetch_bucket_size, elements (DeepSpeed default 5e7)")
    p.add_argument("--max-live-parameters", type=float, default=k.max_live_parameters,
                   help="stage3_max_live_parameters, elements (DeepSpeed default 1e9)")
    p.add_argument("--reduce-bucket-size", type=float, default=k.reduce_bucket_size,
                   help="reduce_bucket_size, elements (DeepSpeed default 5e8)")
    p.add_argument("--sub-group-size", type=float, default=k.sub_group_size,
                   help="sub_group_size, elements (DeepSpeed default 1e9)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> Settings:
    def elems(flag: str, v: float) -> int:
        if not math.isfinite(v) or v < 0:
            raise ConfigError(f"--{flag} must be a non-negative number of elements, got {v}")
        return int(v)

    knobs = Zero3Knobs(
        prefetch_bucket_size=elems("prefetch-bucket-size", args.prefetch_bucket_size),
        max_live_parameters=elems("max-live-parameters", args.max_live_parameters),
        reduce_bucket_size=elems("reduce-bucket-size", args.reduce_bucket_size),
        sub_group_size=elems("sub-group-size", args.sub_group_size),
    )
    return Settings(knobs=knobs, **{f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)
                                    if f.name != "knobs"})


def run(args: argparse.Namespace) -> int:
    plan = estimate(args.model, settings_from_args(args))
    if args.json:
        print(json.dumps(plan, indent=2))
    else:
        print(format_table(plan))
    return 0
