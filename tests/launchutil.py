"""Run rft-ds for real: through the `deepspeed` launcher (N local ranks, or a --hostfile), or as a
plain single process. Each launch gets its own free master port."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rft_ds.dist import free_port  # noqa: F401 (tests import it from here)
from rft_ds.tools.tiny import write_random_masks  # noqa: F401 (tests import it from here)

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def env(extra: dict | None = None) -> dict:
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e.setdefault("TOKENIZERS_PARALLELISM", "false")
    # One JIT-build cache per venv: a cache shared with another checkout rebuilds DeepSpeed's
    # small CPU ops (~40-90 s) whenever the build command differs.
    e.setdefault("TORCH_EXTENSIONS_DIR", str(BIN.parent / "torch_extensions"))
    e.update(extra or {})
    return e


def launch_cmd(args: list[str], nproc: int = 2, hostfile: str | None = None) -> list[str]:
    cmd = [str(BIN / "deepspeed")]
    if hostfile:
        cmd += ["--hostfile", hostfile, "--no_ssh_check", "--master_addr", "127.0.0.1"]
    else:
        cmd += ["--num_gpus", str(nproc)]
    return cmd + ["--master_port", str(free_port()), "--module", "rft_ds", *map(str, args)]


def ds_launch(args: list[str], nproc: int = 2, hostfile: str | None = None, check: bool = True,
              timeout: int = 900, extra_env: dict | None = None, cwd: str | Path = ROOT) -> subprocess.CompletedProcess:
    r = subprocess.run(launch_cmd(args, nproc, hostfile), cwd=cwd, env=env(extra_env), capture_output=True,
                       text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"launch failed (rc {r.returncode}): {' '.join(map(str, args))}\n"
                             f"{(r.stdout + r.stderr)[-6000:]}")
    return r


def plain(args: list[str], check: bool = True, timeout: int = 900, extra_env: dict | None = None,
          cwd: str | Path = ROOT) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "rft_ds", *map(str, args)], cwd=cwd, env=env(extra_env),
                       capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"rft-ds failed (rc {r.returncode}): {' '.join(map(str, args))}\n"
                             f"{(r.stdout + r.stderr)[-6000:]}")
    return r


def metrics(run_dir: str | Path) -> list[dict]:
    return [json.loads(x) for x in Path(run_dir, "metrics.jsonl").read_text().splitlines() if x.strip()]


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def head_lines(src: str | Path, dst: str | Path, n: int) -> Path:
    lines = Path(src).read_text().splitlines(keepends=True)[:n]
    Path(dst).write_text("".join(lines))
    return Path(dst)


def perturbed_copy(src: str | Path, dst: str | Path, seed: int, scale: float = 0.05) -> Path:
    """A second model with the same tokenizer and different weights (Rho-1's reference in tests):
    every parameter of `src` plus `scale` x its own std x Gaussian noise, saved to `dst`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * float(p.std() if p.numel() > 1 else 1.0))
    model.save_pretrained(str(dst))
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(dst))
    return Path(dst)
