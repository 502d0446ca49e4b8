"""What an operator watches during a run: throughput, MFU, a rank-0 progress display, and the
scalars sent to TensorBoard / W&B / CSV through DeepSpeed's own monitor (`engine.monitor`).

Model FLOPs (the PaLM appendix-B convention, also Megatron's and torchtitan's): a training step
costs 6 x P x T for the weight matmuls plus 12 x L x h x sum_i T_i^2 for attention (T_i the
non-padding length of sample i, P the parameter count without the input embedding, L layers,
h hidden size; causal masking is not halved, as in those references). MFU = that / step time /
peak FLOP/s of the devices. The peak comes from `--peak-tflops` or a table of dense bf16 peaks by
GPU name; on CPU, and on a GPU not in the table, MFU is left out (null) unless `--peak-tflops` is
given.
"""

from __future__ import annotations

import os
import sys
import time

# dense bf16 peak TFLOP/s per device (vendor data sheets, without sparsity)
PEAK_BF16_TFLOPS = {
    "H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0,
    "H100": 989.0, "GH200": 989.0, "B200": 2250.0, "B100": 1750.0, "A100": 312.0, "A800": 312.0,
    "L40S": 362.0, "L40": 181.0, "L4": 121.0, "A10G": 70.0, "A10": 125.0, "RTX 4090": 165.0,
    "MI300X": 1307.0, "MI250X": 383.0,
}
REPORT_TO = ("none", "tensorboard", "wandb", "csv")
_SECTION = {"tensorboard": "tensorboard", "wandb": "wandb", "csv": "csv_monitor"}


def peak_flops(device_name: str | None, override_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of one device: the override, else the table's longest name contained in
    `device_name` (e.g. "NVIDIA H100 80GB HBM3"), else None."""
    if override_tflops:
        return override_tflops * 1e12
    if not device_name:
        return None
    hits = [k for k in PEAK_BF16_TFLOPS if k.lower() in device_name.lower()]
    return PEAK_BF16_TFLOPS[max(hits, key=len)] * 1e12 if hits else None


def model_flop_counts(config) -> tuple[int, int, int]:
    """(P without the input embedding, layers, hidden size) from a Hugging Face config."""
    cfg = getattr(config, "text_config", None) or config
    h, L, V = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    hd = getattr(cfg, "head_dim", None) or h // heads
    inter = getattr(cfg, "intermediate_size", None) or 4 * h
    experts = getattr(cfg, "num_experts_per_tok", None) or 1  # active experts (MoE)
    per_layer = h * heads * hd + 2 * h * kv * hd + heads * hd * h + 3 * h * inter * experts + 2 * h
    return L * per_layer + V * h + h, L, h  # + the output head (tied or not, it is a matmul) + final norm


def step_flops(counts: tuple[int, int, int], tokens: float, sum_sq_len: float) -> float:
    P, L, h = counts
    return 6.0 * P * tokens + 12.0 * L * h * sum_sq_len


def monitor_config(ds: dict, report_to: str, out: str) -> dict:
    """Turn on DeepSpeed's monitor section for `--report-to` (in place; returns ds). A section the
    user's JSON already has is respected as it is (only "enabled" is filled if absent), so its
    paths, project or team stay theirs; without one, files go under OUTPUT."""
    if report_to == "none":
        return ds
    key = _SECTION[report_to]
    sect = ds.setdefault(key, {})
    sect.setdefault("enabled", True)
    if key in ("tensorboard", "csv_monitor"):
        sect.setdefault("output_path", os.path.join(out, report_to))
        sect.setdefault("job_name", os.path.basename(os.path.normpath(out)) or "run")
    else:
        sect.setdefault("project", "rft-ds")
        sect.setdefault("group", os.path.basename(os.path.normpath(out)) or None)
        # no API key and no explicit mode: write the run offline (wandb sync later), never prompt
        if not os.environ.get("WANDB_API_KEY") and "WANDB_MODE" not in os.environ:
            os.environ["WANDB_MODE"] = "offline"
        os.environ.setdefault("WANDB_DIR", out)
    return ds


# scalars sent to the monitor: every numeric field of a metrics.jsonl row but these
_NOT_SCALARS = {"step", "epoch"}


def events(row: dict, prefix: str = "train/") -> list[tuple[str, float, int]]:
    """DeepSpeed monitor events (name, value, step) for one metrics.jsonl row."""
    return [(prefix + k, float(v), int(row["step"])) for k, v in row.items()
            if k not in _NOT_SCALARS and isinstance(v, (int, float)) and not isinstance(v, bool)]


def write(monitor, row: dict) -> None:
    """Send one metrics.jsonl row to DeepSpeed's monitor (rank 0). TensorBoard and CSV take
    (name, value, step) events. W&B keeps one step counter per run, which DeepSpeed's engine
    already advances with its sample count (its own Train/Samples/* events), so a row logged with
    step = optimizer step would be dropped as out of order: there the row goes in as one record
    with `train/step`, the x-axis W&B is told to use for `train/*` (define_metric)."""
    if not monitor.enabled:
        return
    evs = events(row)
    wb = getattr(monitor, "wandb_monitor", None)
    if wb is not None:
        import wandb

        if not getattr(wb, "_rft_ds_axis", False):
            wandb.define_metric("train/step")
            wandb.define_metric("train/*", step_metric="train/step")
            wb._rft_ds_axis = True
        wb.log({name: v for name, v, _ in evs} | {"train/step": int(row["step"])})
    for m in (getattr(monitor, "tb_monitor", None), getattr(monitor, "csv_monitor", None),
              getattr(monitor, "comet_monitor", None)):
        if m is not None:
            m.write_events(evs)


class Progress:
    """Rank 0's view of a loop: a tqdm bar on stderr when stderr is a terminal, otherwise one plain
    line on stdout every `every_s` seconds (and on the first and last update), for cluster logs."""

    def __init__(self, total: int, desc: str, every_s: float = 30.0, initial: int = 0, unit: str = "step",
                 enabled: bool = True, tty: bool | None = None):
        self.total, self.desc, self.every_s, self.unit = total, desc, every_s, unit
        self.enabled = enabled
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.n, self.t0, self.last = initial, time.time(), 0.0
        self.start_n = initial
        self.bar = None
        if enabled and self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def eta_s(self) -> float | None:
        done = self.n - self.start_n
        if done <= 0:
            return None
        return (time.time() - self.t0) / done * (self.total - self.n)

    def update(self, n: int = 1, **stats) -> None:
        """Advance by n; `stats` (e.g. loss=..., tokens_per_s=...) go on the bar or the line."""
        self.n += n
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix({k: _fmt(v) for k, v in stats.items() if v is not None}, refresh=False)
            self.bar.update(n)
            return
        now = time.time()
        if self.n - n == self.start_n or self.n >= self.total or now - self.last >= self.every_s:
            self.last = now
            eta = self.eta_s()
            parts = " ".join(f"{k} {_fmt(v)}" for k, v in stats.items() if v is not None)
            print(f"{self.desc} {self.n}/{self.total} {parts} elapsed {now - self.t0:.0f}s"
                  + (f" eta {eta:.0f}s" if eta is not None else ""), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)
