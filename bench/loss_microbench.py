"""The intrinsic cost of RFT over SFT per micro-step: the engine's loss code alone (figure 1's profile).

Times, in this process, interleaved, what `rft_ds/train/step.py` runs per micro-batch after the model's
per-token CE, forward and backward down to the CE tensor: SFT (token sum, class sums, metric
accumulators) vs RFT sample granularity (the same plus rft_ds.losses.rft_per_sample and its weight
metrics), on tensors shaped like a demo micro-batch (8 samples, ~900 loss tokens). The model's own
forward/backward is identical in both and is not run. Prints milliseconds per micro-step.

    python bench/loss_microbench.py [--tokens 900] [--samples 8] [--reps 2000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def make(n_tok: int, n_samples: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ce = (torch.rand(n_tok, generator=g) * 5).requires_grad_(True)
    seg = torch.sort(torch.randint(0, n_samples, (n_tok,), generator=g)).values
    classes = (torch.rand(n_tok, generator=g) < 0.4).long()
    return ce, seg, classes


def _step(spec, ce, seg, classes, n_samples, W=2, N=1800.0, S=16.0):
    """The engine's per-micro-batch loss code (rft_ds.train.step), on given tensors."""
    from rft_ds.train.step import MetricSums, StepCounts, micro_loss

    counts = StepCounts(tokens=N, samples=S)
    sums = MetricSums("cpu")
    out = micro_loss(ce, seg, classes, n_samples, counts, spec, W)
    out.loss.backward()
    sums.add(ce, classes, out)


def sft_step(ce, seg, classes, n_samples=8):
    from rft_ds.train.step import LossSpec

    _step(LossSpec("sft"), ce, seg, classes, n_samples)


def rft_step(ce, seg, classes, n_samples, tau=2.0):
    from rft_ds.train.step import LossSpec

    _step(LossSpec("rft", "sample", tau, True), ce, seg, classes, n_samples)


def measure(n_tok: int = 900, n_samples: int = 8, reps: int = 2000, threads: int = 1) -> dict:
    torch.set_num_threads(threads)
    ce, seg, classes = make(n_tok, n_samples)
    sft, rft = [], []
    for k in range(reps):
        for name in (("sft", "rft") if k % 2 == 0 else ("rft", "sft")):
            ce.grad = None
            t = time.perf_counter()
            if name == "sft":
                sft_step(ce, seg, classes)
                sft.append(time.perf_counter() - t)
            else:
                rft_step(ce, seg, classes, n_samples)
                rft.append(time.perf_counter() - t)
    ms = {"sft_ms": 1000 * statistics.median(sft), "rft_ms": 1000 * statistics.median(rft)}
    ms["rft_extra_ms"] = ms["rft_ms"] - ms["sft_ms"]
    return ms


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=900)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--reps", type=int, default=2000)
    a = ap.parse_args()
    print(measure(a.tokens, a.samples, a.reps))
