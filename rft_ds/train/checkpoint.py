"""Mid-run checkpoints (DeepSpeed's own format, every --save-steps) and --resume.

A checkpoint is complete when `checkpoints/latest` names it: each rank writes its RNG state first,
then DeepSpeed writes the engine state and `latest` last. Only --save-total-limit are kept.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import torch

from rft_ds import dist
from rft_ds.errors import ConfigError
from rft_ds.fsio import atomic_write


def checkpoint_dir(out: Path) -> Path:
    return out / "checkpoints"


def save_checkpoint(engine, out: Path, step: int, keep: int) -> None:
    ck = checkpoint_dir(out)
    tag = f"step-{step}"
    # RNG first: DeepSpeed writes `latest` last, so a checkpoint `latest` points to is complete.
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    with atomic_write(ck / tag / f"rng-rank{dist.rank()}.pt", "wb") as f:
        torch.save(state, f)
    engine.save_checkpoint(str(ck), tag=tag, client_state={"step": step})
    dist.barrier()
    if dist.is_main() and keep > 0:
        tags = sorted((p for p in ck.glob("step-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1]))
        for p in tags[: -keep]:
            shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(engine, out: Path) -> int:
    """Resume from checkpoints/latest. Rank 0 reads the tag and broadcasts it, so every rank loads
    the same step (each rank then reads its own partition files: OUTPUT must be on a filesystem
    every node sees, or copied to each node, when resuming a multi-node run)."""
    ck = checkpoint_dir(out)
    tag = (ck / "latest").read_text().strip() if dist.is_main() and (ck / "latest").exists() else None
    tag = dist.broadcast_object(tag)
    if tag is None:
        dist.log(f"--resume: no checkpoint in {ck}; starting from step 0")
        return 0
    if not (ck / tag).is_dir():
        raise ConfigError(f"{ck / tag}: checkpoint directory not found on rank {dist.rank()}; with --resume, "
                          "OUTPUT must be on a filesystem every node sees")
    path, client = engine.load_checkpoint(str(ck), tag=tag)
    if path is None:
        raise ConfigError(f"{ck / tag}: could not load the checkpoint")
    step = int(client["step"])
    rng = ck / tag / f"rng-rank{dist.rank()}.pt"
    if rng.exists():
        st = torch.load(rng, weights_only=False)
        torch.set_rng_state(st["torch"])
        random.setstate(st["python"])
    dist.log(f"resumed from {ck / tag} at step {step}")
    return step

