"""Run an `rft-ds` command with per-rank memory probes (figure 5).

    deepspeed --num_gpus N bench/mem_probe.py --probe-out DIR train --model ... --max-steps 2 ...

Runs rft_ds's own CLI in this process (the real `rft-ds train`: zero.Init loading, deepspeed.initialize,
the engine's step loop) and records, per rank, from /proc/self/status:
  baseline    after the imports (torch, deepspeed, transformers, rft_ds), before anything is loaded
  after_init  when deepspeed.initialize returns (parameters partitioned, optimizer built)
  after_step  after each optimizer step (engine.step at a gradient-accumulation boundary)
  step_peak   VmHWM over the steps: the peak is reset (/proc/self/clear_refs = 5) after
              deepspeed.initialize, so loading transients do not count
RssAnon (anonymous memory: tensors, optimizer state) after malloc_trim(0) is the figure (trimmed:
without it, freed gathered parameters stay resident in glibc's heap and look like held memory); VmRSS also counts file pages
(mapped safetensors, libraries) and /dev/shm buffers. On GPU also torch.cuda memory_allocated /
max_memory_allocated at the same points. DeepSpeed's own `see_memory_usage` reports, on CPU,
system-wide virtual memory (psutil.virtual_memory), meaningless on a shared machine, so it is not used.
Writes DIR/rank<R>.json, with the element counts DeepSpeed holds per rank (partitioned params,
fp32 master partitions, optimizer state) for an analytic cross-check.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time

import torch  # noqa: E402  (imported before the baseline on purpose)
import deepspeed  # noqa: E402
import transformers  # noqa: E402, F401

import rft_ds.cli  # noqa: E402
import rft_ds.train.loop  # noqa: E402, F401
import rft_ds.modeling  # noqa: E402, F401


def trim() -> None:
    """Hand freed heap memory back to the OS (glibc malloc_trim), so RSS counts live memory: tensors
    of 4-32 MB land on the heap once glibc's dynamic mmap threshold has grown, and the gathered
    parameters freed after a step would otherwise still count as resident."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def status(trimmed: bool = False) -> dict:
    if trimmed:
        trim()
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[k] = int(v.split()[0]) * 1024
    if torch.cuda.is_available():
        out["cuda_allocated"] = torch.cuda.memory_allocated()
        out["cuda_max_allocated"] = torch.cuda.max_memory_allocated()
    return out


def reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def ds_counts(engine) -> dict:
    """Elements DeepSpeed holds on this rank: partitioned params, fp32 master partitions, optimizer state."""
    out = {"params_total": 0, "params_partition": 0, "params_persistent": 0, "fp32_master": 0, "optimizer_state": 0}
    for p in engine.module.parameters():
        out["params_total"] += getattr(p, "ds_numel", p.numel())
        if hasattr(p, "ds_tensor"):
            out["params_partition"] += p.ds_tensor.numel()
            if getattr(p, "ds_persist", False):
                out["params_persistent"] += p.ds_numel
    opt = engine.optimizer
    for flat in getattr(opt, "fp32_partitioned_groups_flat", []) or []:
        out["fp32_master"] += flat.numel()
    inner = getattr(opt, "optimizer", opt)
    for st in getattr(inner, "state", {}).values():
        for v in st.values():
            if torch.is_tensor(v) and v.dim() > 0:
                out["optimizer_state"] += v.numel()
    return out


def main() -> None:
    args = sys.argv[1:]
    if "--probe-out" not in args:
        raise SystemExit("usage: mem_probe.py [--local_rank=N] --probe-out DIR <rft-ds command ...>")
    k = args.index("--probe-out")
    out_dir = args[k + 1]
    args = args[:k] + args[k + 2:]
    rank = int(os.environ.get("RANK", 0))
    rec = {"baseline": status(trimmed=True), "after_step": [], "rank": rank, "world": int(os.environ.get("WORLD_SIZE", 1))}
    orig_init = deepspeed.initialize

    def initialize(*a, **kw):
        res = orig_init(*a, **kw)
        engine = res[0]
        rec["after_init"] = status()
        rec["after_init_trimmed"] = status(trimmed=True)
        orig_step = engine.step

        def step(*sa, **skw):
            r = orig_step(*sa, **skw)
            rec["after_step"].append(status())  # the bench runs gradient accumulation 1
            rec.setdefault("after_step_trimmed", []).append(status(trimmed=True))
            if "counts" not in rec:
                rec["counts"] = ds_counts(engine)
            dump()
            return r

        engine.step = step
        reset_peak()
        dump()
        return res

    deepspeed.initialize = initialize

    def dump():  # rewritten whole at each point (init, every step), so the last one is complete
        if rec["after_step"]:
            rec["step_peak"] = {"VmHWM": max(s["VmHWM"] for s in rec["after_step"])}
            if torch.cuda.is_available():
                rec["step_peak"]["cuda_max_allocated"] = max(s["cuda_max_allocated"] for s in rec["after_step"])
        rec["time"] = time.time()
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, f"rank{rank}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(rec, f, indent=2)
        os.replace(path + ".tmp", path)

    atexit.register(dump)  # a world of one; with peers the command leaves with os._exit: dumped as it goes
    rc = rft_ds.cli.main(args)
    sys.exit(rc or 0)


if __name__ == "__main__":
    main()
