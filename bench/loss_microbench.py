"""The intrinsic cost of RFT over SFT per micro-step: the engine's loss code alone (figure 1's profile).

Times, in this process, interleaved, what `rft_ds/engine.py` runs per micro-batch after the model's
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


def sft_step(ce, seg, classes, W=2, N=1800.0):
    from rft_ds.losses import class_sums

    acc = torch.zeros(8, dtype=torch.float64)
    cs = class_sums(ce, classes)
    loss = ce.sum() * (W / max(N, 1.0))
    obj = ce.detach().sum() / max(N, 1.0)
    loss.backward()
    acc[0] += ce.detach().sum()
    acc[1] += ce.numel()
    acc[2] += cs[0].detach()
    acc[3] += cs[2].detach()
    acc[4] += obj


def rft_step(ce, seg, classes, n_samples, W=2, S=16.0, tau=2.0):
    from rft_ds.losses import class_sums, rft_per_sample

    acc = torch.zeros(8, dtype=torch.float64)
    cs = class_sums(ce, classes)
    cls = torch.where(classes == 2, torch.zeros_like(classes), classes)
    per, w_b, w_r, has = rft_per_sample(ce, seg, cls, n_samples, tau, True)
    loss = per.sum() * (W / max(S, 1.0))
    obj = per.detach().sum() / max(S, 1.0)
    both = has & (w_b > 0) & (w_r > 0)
    acc[5] += w_b.detach()[both].sum()
    acc[6] += w_r.detach()[both].sum()
    acc[7] += both.sum()
    loss.backward()
    acc[0] += ce.detach().sum()
    acc[1] += ce.numel()
    acc[2] += cs[0].detach()
    acc[3] += cs[2].detach()
    acc[4] += obj


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
