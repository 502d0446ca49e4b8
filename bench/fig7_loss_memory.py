"""Figure 7: peak memory of the token loss (forward + backward) against the one-chunk floor.

For V in {49152 (SmolLM2), 128256 (Llama-3)} and N in {4096, 16384} loss tokens, each case in a
fresh process: the peak resident memory added by computing the chunked token CE of N hidden
states and backpropagating it, for
  * before: plain chunking (what rft-ds did until issue 13): head + CE per chunk, autograd keeps
    every chunk's fp32 log-softmax for backward, so the saved memory is N x V x 4 bytes;
  * after:  rft_ds.losses.chunked_token_ce, each chunk recomputed in backward;
against the floor: the same computation for a single chunk (N = chunk), the least any chunked loss
at that chunk size needs (one chunk's logits, log-softmax and their gradient).
Figure = max over the cases of after / floor (target <= 1.5). H is 64 so that the hidden states and
their gradient (N x H x 4 bytes, the same in every variant) stay small beside the logits; the head
weight is fp32 [V, H]. Peak = VmHWM after `echo 5 > /proc/self/clear_refs` (Linux), minus VmRSS
at the reset; large tensors are mmap-backed, so freed memory leaves the RSS at once.

    python bench/fig7_loss_memory.py [--chunk 1024] [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

H = 64


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def measure(variant: str, n: int, vocab: int, chunk: int) -> dict:
    """Run in a child process: peak extra bytes of one forward + backward of the loss."""
    import time

    import torch
    import torch.nn.functional as F

    from rft_ds.losses import chunked_token_ce

    torch.set_num_threads(1)
    torch.manual_seed(0)
    head = torch.nn.Linear(H, vocab, bias=False)
    hidden = torch.randn(n, H, requires_grad=True)
    targets = torch.randint(0, vocab, (n,))
    head.weight.grad = torch.zeros_like(head.weight)  # gradient buffers exist before, as in training
    hidden.grad = torch.zeros_like(hidden)
    Path("/proc/self/clear_refs").write_text("5")
    base = _status("VmRSS")
    t0 = time.perf_counter()
    if variant == "before":
        ce = torch.cat([F.cross_entropy(head(hidden[s: s + chunk]).float(), targets[s: s + chunk], reduction="none")
                        for s in range(0, n, chunk)])
    else:
        ce = chunked_token_ce(hidden, head, targets, chunk)
    ce.sum().backward()
    secs = time.perf_counter() - t0
    return {"peak_bytes": _status("VmHWM") - base, "seconds": secs, "loss": float(ce.detach().mean())}


def run_case(variant: str, n: int, vocab: int, chunk: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", variant, str(n), str(vocab), str(chunk)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunk", type=int, default=None, help="default: the training default (TrainConfig)")
    ap.add_argument("--quick", action="store_true", help="V 49152 only, N 4096 only")
    ap.add_argument("--child", nargs=4, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        v, n, vocab, chunk = a.child
        print(json.dumps(measure(v, int(n), int(vocab), int(chunk))))
        return
    from common import save_figure, say
    from rft_ds.config import TrainConfig

    chunk = a.chunk or TrainConfig.logits_chunk
    vocabs = [49152] if a.quick else [49152, 128256]
    ns = [4096] if a.quick else [4096, 16384]
    cases, worst = [], 0.0
    for vocab in vocabs:
        floor = run_case("after", chunk, vocab, chunk)
        for n in ns:
            row = {"vocab": vocab, "tokens": n, "chunk": chunk, "floor_bytes": floor["peak_bytes"]}
            for variant in ("before", "after"):
                r = run_case(variant, n, vocab, chunk)
                row[f"{variant}_bytes"] = r["peak_bytes"]
                row[f"{variant}_s"] = round(r["seconds"], 2)
                row[f"{variant}_over_floor"] = round(r["peak_bytes"] / floor["peak_bytes"], 3)
            worst = max(worst, row["after_over_floor"])
            cases.append(row)
            say(f"fig7 V={vocab} N={n} chunk={chunk}: before {row['before_bytes'] / 2**30:.2f} GiB "
                f"({row['before_over_floor']:.1f}x floor), after {row['after_bytes'] / 2**30:.3f} GiB "
                f"({row['after_over_floor']:.2f}x), floor {row['floor_bytes'] / 2**30:.3f} GiB; "
                f"time {row['before_s']}s -> {row['after_s']}s")
    save_figure("loss_memory_over_one_chunk_floor", worst, "<= 1.5",
                {"cases": cases, "hidden_size": H, "chunk": chunk,
                 "floor": "peak of the same loss for one chunk (N = chunk)",
                 "measure": "VmHWM after clear_refs minus VmRSS at the reset, fresh process per case, fp32, 1 thread"})
    print(f"loss_memory_over_one_chunk_floor = {worst:.3f} (target <= 1.5)")


if __name__ == "__main__":
    main()
