"""Figure 8 (issue 14): data at scale. Per-rank peak memory and time to the first step of a 2-rank
`train --max-steps 1` launch on 1k, 20k and 100k generated demo samples with the SmolLM2 tokenizer
(and model), measured side by side in one run:

  memory  every rank tokenizes into Python lists (`--no-cache`, the code before the cache)
  cold    the tokenized cache is missing: rank 0 builds it (`--num-proc 2`), both ranks map it
  warm    the cache exists: both ranks memory-map it

Memory: each rank runs under bench/mem_probe.py, which records its anonymous memory (RssAnon after
malloc_trim: private Python objects and tensors, not the file pages of the memory-mapped table, which
the ranks of a node share and the kernel drops under pressure) when deepspeed.initialize returns:
data loaded, engine built, before any step. Peak RSS over the whole launch (VmHWM, polled every
0.1 s) is kept as a detail, but it is no measure of the data: it includes step 1, whose batch is a
different draw of samples at each size (at 30k samples step 1 held 921 tokens, at 1k 419), and the
step's activations and logits dominate it. Time to the first step is `startup_s` of metrics.jsonl
(from the start of `train`, after imports, until step 1 begins: data and engine), for the same reason.

Figures: the per-rank growth of anonymous memory in bytes per token of data between the smallest and
largest launches (memory vs warm; target <= 4), the warm largest launch's start-up over the warm
smallest one's (target <= 1.2), and tokenizing throughput of the cold build at --num-proc 2 over the
in-memory single-process encode (target >= 1.7; this machine has 2 cores).

Then `rft-ds label` (2 ranks, a tiny model pair, the data preprocessed first so the cache is warm) at
--label-sizes: the ranks' peak anonymous memory over the whole launch (forward rounds, the per-chunk
gather to rank 0, rank 0's merge into masks.jsonl), as bytes per token of data between the smallest
and largest size (target <= 4, as for train). At --max-seq-len 512 the longest batch is 16 x 512
tokens at every size (the demo's longest samples are ~560 tokens; the largest draw holds longer ones
than the smallest), so its activations, label's peak, are the same and the difference is the data.
Peak RSS (VmHWM) is kept as a detail: it adds the file pages of the memory-mapped cache that the
rounds have read (shared by the node's ranks, dropped under pressure), which grow with the cache file.

    .venv/bin/python bench/fig8_data_scale.py [--sizes 1000 20000 100000] [--label-sizes 1000 30000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

from common import BIN, ROOT, env, free_port, remove_shm_buffers, save_figure, say, work_dir


def _rss(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def _ranks(root_pid: int) -> list[int]:
    """The rank processes under a launcher: python processes running `-m rft_ds`."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if (b"rft_ds" in cmd or any(a.endswith(b"mem_probe.py") for a in cmd)) and \
                    any(a.startswith(b"--local_rank") for a in cmd):
                pids.append(int(p.name))
    return pids


def launch_measured(args: list[str], log: Path, probe: Path) -> dict:
    """Run a 2-rank launch under bench/mem_probe.py (files in `probe`); poll every rank's memory
    until it exits. Returns the ranks' peaks and their anonymous memory once the engine is built."""
    port = free_port()
    shutil.rmtree(probe, ignore_errors=True)
    cmd = [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(port),
           str(ROOT / "bench" / "mem_probe.py"), "--probe-out", str(probe), *args]
    peaks: dict[int, dict[str, int]] = {}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done = threading.Event()

    def poll():
        while not done.is_set():
            for pid in _ranks(proc.pid):
                cur = _rss(pid)
                best = peaks.setdefault(pid, {})
                for k, v in cur.items():
                    best[k] = max(best.get(k, 0), v)
            time.sleep(0.1)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    out, _ = proc.communicate(timeout=3600)
    done.set()
    th.join()
    remove_shm_buffers(port)
    log.write_text(" ".join(cmd) + "\n\n" + out)
    if proc.returncode != 0:
        raise RuntimeError(f"launch failed (rc {proc.returncode}): {' '.join(cmd)}\n{out[-4000:]}")
    ranks = sorted(peaks.values(), key=lambda d: -d.get("VmHWM", 0))[:2]
    ready = [json.loads(f.read_text()).get("after_init_trimmed") for f in sorted(probe.glob("rank*.json"))]
    ready = [r for r in ready if r]
    return {"wall_s": round(time.perf_counter() - t0, 1), "peak_rss": max(r.get("VmHWM", 0) for r in ranks),
            "peak_anon": max(r.get("RssAnon", 0) for r in ranks), "peak_file": max(r.get("RssFile", 0) for r in ranks),
            "ready_anon": max(r["RssAnon"] for r in ready) if ready else None, "out": out}


def demo_data(n: int) -> Path:
    d = work_dir() / "data_scale" / f"demo-{n}"
    if not (d / "train.jsonl").exists():
        subprocess.run([str(BIN / "rft-ds"), "demo-data", "--output-dir", str(d), "--n-train", str(n),
                        "--n-heldout", "10"], check=True, capture_output=True, env=env())
    return d / "train.jsonl"


def one(model: Path, data: Path, mode: str, cache: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    if mode == "cold":
        shutil.rmtree(cache, ignore_errors=True)
    args = ["train", "--model", str(model), "--data", str(data), "--output", str(out), "--max-steps", "1",
            "--micro-batch-size", "1", "--max-seq-len", "1024", "--deepspeed", "ds_configs/zero3.json",
            "--cache-dir", str(cache), "--num-proc", "2", "--lr", "1e-5"]
    if mode == "memory":
        args.append("--no-cache")
    r = launch_measured(args, out.parent / f"{out.name}.log", out.parent / f"{out.name}.probe")
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    run = json.loads((out / "run.json").read_text())
    r.update(startup_s=row["startup_s"], first_step_s=row["elapsed_s"], step1_input_tokens=row["input_tokens"],
             tokens=run["data"]["tokens"], samples=run["data"]["samples"])
    if mode == "cold":
        done = json.loads(next(cache.glob("*/done.json")).read_text())
        r["build_s"], r["build_tokens"] = done["seconds"], done["tokens"]
    shutil.rmtree(out / "final", ignore_errors=True)
    del r["out"]
    return r


def label_one(n: int) -> dict:
    """A 2-rank `rft-ds label` of n samples with a tiny model pair (the records' memory does not depend
    on the model's size; SmolLM2 would take hours at 30k samples here), warm cache, --max-seq-len 512
    (the same longest batch at every size): the ranks' peak memory (rank 0 merges into masks.jsonl)."""
    from common import build_model, perturbed_copy

    w = work_dir() / "data_scale"
    base = build_model(w / "label-tiny", hidden=64, layers=2, heads=4, vocab=1000)
    shad = perturbed_copy(base, w / "label-tiny-shad")
    data, cache, out = demo_data(n), w / f"cache-label-{n}", w / f"label-{n}"
    for d in (out, cache):  # one cache entry: the one this preprocess builds
        shutil.rmtree(d, ignore_errors=True)
    out.mkdir(parents=True)
    args = ["label", "--base", str(base), "--shad", str(shad), "--data", str(data), "--output", str(out / "masks.jsonl"),
            "--max-seq-len", "512", "--batch-size", "16", "--deepspeed", "ds_configs/zero0.json",
            "--cache-dir", str(cache), "--num-proc", "2"]
    subprocess.run([str(BIN / "rft-ds"), "preprocess", "--model", str(base), "--data", str(data), "--max-seq-len",
                    "512", "--cache-dir", str(cache), "--num-proc", "2"], check=True, capture_output=True, env=env())
    built = sorted(cache.glob("*/done.json"))
    r = launch_measured(args, out / "label.log", out / "label.probe")
    del r["out"]
    r["cache_was_warm"] = sorted(cache.glob("*/done.json")) == built  # label built no cache of its own
    r["masks_bytes"] = (out / "masks.jsonl").stat().st_size
    r["tokens"] = json.loads(built[0].read_text())["tokens"]  # the data's tokens (after truncation)
    say(f"data scale label {n} samples (tiny models, warm cache): peak anon {r['peak_anon'] / 2**20:.0f} MiB "
        f"(peak RSS {r['peak_rss'] / 2**20:.0f}, file {r['peak_file'] / 2**20:.0f}), {r['tokens']} tokens")
    return r


def encode_rate(model: Path, data: Path) -> float:
    """Today's in-memory encode in one process: tokens per second (read + render + tokenize)."""
    code = ("import time, json; from rft_ds.modeling import load_tokenizer; from rft_ds.data.formats import "
            "read_conversations; from rft_ds.data.render import encode_dataset; "
            f"tok = load_tokenizer({str(model)!r}); t = time.perf_counter(); "
            f"e, st = encode_dataset(read_conversations({str(data)!r}), tok, 1024, keep_empty=True); "
            "print(json.dumps({'s': time.perf_counter() - t, 'tokens': sum(len(x.input_ids) for x in e)}))")
    r = subprocess.run([str(BIN / "python"), "-c", code], check=True, capture_output=True, text=True, env=env())
    got = json.loads(r.stdout.strip().splitlines()[-1])
    return got["tokens"] / got["s"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="*", default=[1000, 20000, 100000],
                    help="sizes for the train launches; fewer than 2: skip them (label only)")
    ap.add_argument("--model", default=str(ROOT / ".venv" / "models" / "smollm2-135m"))
    ap.add_argument("--label-sizes", type=int, nargs="*", default=[1000, 30000],
                    help="sizes for label's peak memory (tiny models); none: skip")
    a = ap.parse_args()
    if len(set(a.sizes)) >= 2:
        train_figures(a)
    lab = {n: label_one(n) for n in a.label_sizes}  # after the train figures: they are saved already
    if len(lab) >= 2:
        lo, hi = min(lab), max(lab)
        dtok = lab[hi]["tokens"] - lab[lo]["tokens"]
        per_tok = {k: (lab[hi][k] - lab[lo][k]) / dtok for k in ("peak_anon", "peak_rss", "peak_file")}
        save_figure("fig8_label_peak_anon_bytes_per_token", per_tok["peak_anon"], "<= 4",
                    {"runs": lab, "sizes": [lo, hi], "bytes_per_token": per_tok, "max_seq_len": 512,
                     "model": "tiny (hidden 64, vocab 1000)"})
        print(f"label per rank: peak anon {lo}: {lab[lo]['peak_anon'] / 2**20:.0f} MiB, {hi}: "
              f"{lab[hi]['peak_anon'] / 2**20:.0f} MiB; " + ", ".join(f"{k} {v:.2f}" for k, v in per_tok.items())
              + " B per token of data")


def train_figures(a) -> None:
    model, w = Path(a.model), work_dir() / "data_scale"
    res: dict[str, dict] = {}
    for n in a.sizes:
        data = demo_data(n)
        cache = w / f"cache-{n}"
        for mode in ("memory", "cold", "warm"):  # warm right after cold: the cache cold just built
            r = one(model, data, mode, cache, w / f"run-{n}-{mode}")
            res[f"{n}/{mode}"] = r
            say(f"data scale {n} samples, {mode}: start-up {r['startup_s']:.1f}s, anon once ready "
                f"{r['ready_anon'] / 2**20:.0f} MiB; launch peak RSS {r['peak_rss'] / 2**20:.0f} MiB (anon "
                f"{r['peak_anon'] / 2**20:.0f}, file {r['peak_file'] / 2**20:.0f}; step 1: {r['step1_input_tokens']} tokens)")
    lo, hi = min(a.sizes), max(a.sizes)
    dtok = res[f"{hi}/warm"]["tokens"] - res[f"{lo}/warm"]["tokens"]
    per_tok = {m: (res[f"{hi}/{m}"]["ready_anon"] - res[f"{lo}/{m}"]["ready_anon"]) / dtok for m in ("memory", "warm")}
    per_tok_rss = {m: (res[f"{hi}/{m}"]["peak_rss"] - res[f"{lo}/{m}"]["peak_rss"]) / dtok for m in ("memory", "warm")}
    first = res[f"{hi}/warm"]["startup_s"] / res[f"{lo}/warm"]["startup_s"]
    rate_mem = encode_rate(model, demo_data(hi))
    rate_cold = res[f"{hi}/cold"]["build_tokens"] / res[f"{hi}/cold"]["build_s"]
    detail = {"runs": res, "anon_bytes_per_token": per_tok, "peak_rss_bytes_per_token": per_tok_rss,
              "encode_tokens_per_s_one_process": round(rate_mem), "cold_build_tokens_per_s": round(rate_cold)}
    save_figure("fig8_rank_bytes_per_token", per_tok["warm"], "<= 4", detail)
    save_figure("fig8_warm_first_step_ratio", first, "<= 1.2", {"sizes": [lo, hi]})
    save_figure("fig8_cold_build_speedup", rate_cold / rate_mem, ">= 1.7", {"num_proc": 2})
    print(json.dumps({k: v for k, v in detail.items() if k != "runs"}, indent=2))
    print(f"warm start-up ratio {hi}/{lo}: {first:.2f}; cold build at 2 procs / one-process encode: "
          f"{rate_cold / rate_mem:.2f}")


if __name__ == "__main__":
    main()
