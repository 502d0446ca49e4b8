"""Summarize a `py-spy record --format raw --subprocesses --idle` profile of a deepspeed launch.

    py-spy record --subprocesses --idle --format raw -r 40 -o prof.raw -- deepspeed ... --module rft_ds label ...
    python bench/pyspy_summary.py prof.raw --process local_rank=0 [--top 25] [--phases label|train]

Prints, for one process (a rank), the share of wall-clock samples (idle included, so time spent
waiting in a collective or on a lock counts) inclusive per function, and a split into phases.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

PHASES = {
    # first matching frame (outermost first) decides the phase of a sample
    "label": [("forward (ZeRO-3 engine forward)", r"DeepSpeedEngine\.forward"),
              ("records (per-token python)", r"_records_for_batch"),
              ("collate", r"\bcollate\b"),
              ("gather + chunk write", r"all_gather_object|atomic_write|dumps_line"),
              ("model load + deepspeed.initialize", r"_load_engine"),
              ("tokenize (render + encode)", r"encode_conversation|load_tokenizer|tokenizer_fingerprint|read_conversations|_file_digest"),
              ("dist init (+ shm op load)", r"init_distributed|\(rft_ds/dist\.py"),
              ("imports", r"_find_and_load"),
              ("merge + write masks (rank 0)", r"label \(rft_ds/label\.py"),
              ("other", r".")],
    "train": [("forward", r"DeepSpeedEngine\.forward"),
              ("backward", r"DeepSpeedEngine\.backward"),
              ("optimizer step", r"DeepSpeedEngine\.step"),
              ("collate + batches", r"\bcollate\b|split_global_batch|global_batches"),
              ("loss + class sums", r"rft_per_sample|class_sums|rft_batch_micro"),
              ("step metrics: all-reduce, grad norm, log", r"all_reduce_sum|append_line|get_global_grad_norm|get_lr"),
              ("final save", r"consolidated_state_dict|save_hf_checkpoint"),
              ("model load + deepspeed.initialize", r"load_causal_lm|initialize \(deepspeed"),
              ("tokenize", r"encode_dataset|load_tokenizer|read_conversations|attach_classes|read_masks"),
              ("dist init", r"init_distributed|\(rft_ds/dist\.py"),
              ("imports", r"_find_and_load"),
              ("other", r".")],
}


def parse(path: str, process: str):
    """{stack (tuple of frames, outermost first): samples} of the main thread of the matching process."""
    stacks = Counter()
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            parts = stack.split(";")
            k = 0
            while k < len(parts) and parts[k].startswith("process "):
                k += 1
            if not k or process not in parts[k - 1]:
                continue
            frames = parts[k:]
            # the main thread's stack starts at the module entry; other threads (heartbeat, tqdm,
            # deepspeed's) start in threading's bootstrap and are dropped
            if not frames or not (frames[0].startswith("_run_module_as_main") or frames[0].startswith("<module>")):
                continue
            stacks[tuple(frames)] += int(n)
    return stacks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("raw")
    ap.add_argument("--process", default="local_rank=0")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--phases", choices=sorted(PHASES), default=None)
    ap.add_argument("--rate", type=float, default=40.0, help="the -r used with py-spy (samples/s)")
    a = ap.parse_args()
    stacks = parse(a.raw, a.process)
    total = sum(stacks.values())
    if not total:
        raise SystemExit(f"no samples for process matching {a.process!r}")
    print(f"{total} samples (~{total / a.rate:.1f}s of wall time) in the main thread of {a.process}")
    incl = Counter()
    for frames, n in stacks.items():
        for fn in set(re.sub(r":\d+\)$", ")", fr) for fr in frames):
            incl[fn] += n
    print(f"\ninclusive share, top {a.top}:")
    for fn, n in incl.most_common(a.top):
        print(f"  {100 * n / total:5.1f}%  {n / a.rate:6.1f}s  {fn[:150]}")
    if a.phases:
        ph = Counter()
        rules = [(name, re.compile(rx)) for name, rx in PHASES[a.phases]]
        for frames, n in stacks.items():
            for name, rx in rules:
                if any(rx.search(fr) for fr in frames):
                    ph[name] += n
                    break
        print("\nphases (first matching rule wins):")
        for name, _ in PHASES[a.phases]:
            if ph[name]:
                print(f"  {100 * ph[name] / total:5.1f}%  {ph[name] / a.rate:6.1f}s  {name}")


if __name__ == "__main__":
    main()
