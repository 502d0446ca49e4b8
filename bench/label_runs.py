"""`rft-ds label` launches for figures 3 and 6, and the parsing of their output."""

from __future__ import annotations

import json
import re
from pathlib import Path

from common import ROOT, data_slice, launch, models, say, sizes, work_dir

LOOP_RE = re.compile(r"(\d+) tokens this run at (\d+) tokens/s \(([\d.]+)s, (\d+) ranks\)")
LOAD_RE = re.compile(r"loaded base and SHAD models \((\w+)\) in ([\d.]+)s")


def label_once(n_samples: int, tag: str, extra_args: list | None = None, extra_env: dict | None = None) -> dict:
    """One whole `rft-ds label` command (demo settings: 2 ranks, batch 16, max-seq-len 512, both models
    whole on every rank: --deepspeed ds_configs/zero0.json; BENCH_LABEL_CONFIG=ds_configs/zero3.json
    measures the partitioned path).
    Returns wall (the whole command: launcher, process start, imports, tokenization, model load,
    forward loop, chunk files, merge, exit) and loop (label's own figure: the forward loop only)."""
    s = sizes()
    base, shad = models()
    w = work_dir() / "label"
    w.mkdir(parents=True, exist_ok=True)
    data = data_slice(n_samples)
    out = w / f"masks-{n_samples}.jsonl"
    wall, text, cpu = launch(["label", "--base", base, "--shad", shad, "--data", data, "--output", out,
                         "--batch-size", s["label_batch"], "--max-seq-len", s["max_seq_len"], "--overwrite",
                         "--precision", s["precision"], "--deepspeed", ROOT / s["label_config"], *(extra_args or [])],
                        s["nproc"],
                        log=w / f"label-{n_samples}-{tag}.log", extra_env=extra_env)
    m = LOOP_RE.search(text)
    ld = LOAD_RE.search(text)
    if not m:
        raise RuntimeError(f"label output has no tokens/s line: {w / f'label-{n_samples}-{tag}.log'}")
    res = {"samples": n_samples, "wall_s": wall, "cpu_s": cpu, "loop_s": float(m.group(3)), "loss_tokens": int(m.group(1)),
           "tokens_per_s_loop": int(m.group(2)), "load_s": float(ld.group(2)) if ld else None,
           "masks": str(out), "data": str(data), "tag": tag}
    say(f"label {n_samples} samples ({tag}): wall {wall:.1f}s, loop {res['loop_s']:.1f}s, cpu {cpu:.1f}s")
    return res


def record(runs: list[dict]) -> None:
    p = work_dir() / "label" / "runs.jsonl"
    with open(p, "a") as f:
        for r in runs:
            f.write(json.dumps(r) + "\n")


def previous(n_samples: int, tag: str = "stock") -> list[dict]:
    p = work_dir() / "label" / "runs.jsonl"
    if not p.exists():
        return []
    rows = [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
    return [r for r in rows if r["samples"] == n_samples and r["tag"] == tag]


def fresh_log() -> None:
    p = work_dir() / "label" / "runs.jsonl"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("")


def n_for(mult: int) -> int:
    return sizes()["label_samples_1x"] * mult


def data_path(n: int) -> Path:
    return data_slice(n)
