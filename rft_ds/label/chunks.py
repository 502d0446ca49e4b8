"""How the label pass splits its work and survives a crash: the batch plan, the manifest of a
work directory, which chunks are left, and the merge into the masks file.

  * Samples are sorted by length and cut into batches of --batch-size (little padding). Batch j
    belongs to round j // W and is run by rank j % W (a rank with no batch in a round runs a dummy).
  * Rounds are grouped in chunks; rank 0 writes `<output>.work/chunk-NNNNNN.jsonl` atomically after
    each. A rerun with the same manifest (data, models, settings) computes only the missing chunks.
  * The merge writes the masks file in input order, checks every input id appears exactly once, and
    is byte-identical whether or not the run was interrupted.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rft_ds.data.sources import data_identity, resolve
from rft_ds.errors import MasksError
from rft_ds.fsio import atomic_write, command_line, dumps_line, write_json

WORK_SUFFIX = ".work"


def work_dir(out: Path) -> Path:
    return Path(str(out) + WORK_SUFFIX)


def chunk_path(work: Path, k: int) -> Path:
    return work / f"chunk-{k:06d}.jsonl"


def _model_identity(model_dir: str) -> dict:
    """Size and mtime of the weight files: cheap, and enough to notice a different model."""
    p = Path(model_dir)
    files = sorted(list(p.glob("*.safetensors")) + list(p.glob("*.bin")))
    return {"path": str(p.resolve()), "weights": [[f.name, f.stat().st_size, int(f.stat().st_mtime)] for f in files]}


def plan_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[s: s + batch_size] for s in range(0, len(order), batch_size)]


def rounds_of(n_batches: int, world: int) -> int:
    return (n_batches + world - 1) // world



def manifest_of(cfg, world: int, fingerprint: str, precision: str, n_samples: int) -> dict:
    """What a work directory's chunks depend on: a rerun resumes only when all of it is equal."""
    return {"data": data_identity(resolve(cfg.data, cfg.data_split)),  # a single file: its digest, as before
            "base": _model_identity(cfg.base), "shad": _model_identity(cfg.shad),
            "tokenizer": fingerprint, "batch_size": cfg.batch_size, "max_seq_len": cfg.max_seq_len,
            "margin": cfg.margin, "world_size": world, "rounds_per_chunk": cfg.rounds_per_chunk,
            "precision": precision, "samples": n_samples}


def pending_chunks(work: Path, manifest: dict, n_chunks: int) -> list[int] | str:
    """Rank 0: the chunks still to compute, or the reason the work dir cannot be resumed."""
    work.mkdir(parents=True, exist_ok=True)
    mpath = work / "manifest.json"
    if mpath.exists():
        old = json.loads(mpath.read_text())
        if old != manifest:
            diff = sorted(k for k in manifest if old.get(k) != manifest[k])
            return (f"{work} holds an unfinished run with other settings ({', '.join(diff)}); "
                    "rerun with the same settings to resume, or pass --overwrite")
    else:
        write_json(mpath, manifest)
    return [k for k in range(n_chunks) if not chunk_path(work, k).exists()]


def write_chunk(work: Path, k: int, gathered: list[list[dict]]) -> None:
    """Rank 0: one chunk's records (every rank's, gathered) as one file, atomically."""
    with atomic_write(chunk_path(work, k)) as f:
        f.writelines(dumps_line(rec) for part in gathered for rec in part)


def merge(work: Path, out: Path, ids: list[str], n_chunks: int, meta: dict) -> tuple[int, int]:
    """Rank 0: every chunk into `out` in input order (`ids`), coverage checked, atomically; then the
    meta sidecar, and the work dir removed. Returns (assistant tokens, reasoning tokens).

    Streaming: only an index {id: (chunk, byte offset)} is held, and each record is copied as the
    line its chunk holds (the same bytes `dumps_line` wrote), so memory does not grow with the data."""
    from rft_ds.masks import meta_path

    where: dict[str, tuple[int, int]] = {}
    for k in range(n_chunks):
        with open(chunk_path(work, k), "rb") as f:
            for off, line in _lines_with_offsets(f):
                rid = json.loads(line)["id"]
                if rid in where:
                    raise MasksError(f"{work}: id {rid!r} labeled twice (please report this)")
                where[rid] = (k, off)
    missing = [i for i in ids if i not in where]
    extra = len(where) - (len(ids) - len(missing))
    if missing or extra:
        raise MasksError(f"{work}: coverage check failed: {len(missing)} ids missing (first {missing[:3]}), "
                         f"{extra} unexpected; rerun with --overwrite")
    n_all = n_r = 0
    files = [open(chunk_path(work, k), "rb") for k in range(n_chunks)]
    try:
        with atomic_write(out, "wb") as f:
            for i in ids:
                k, off = where[i]
                files[k].seek(off)
                line = files[k].readline()
                for t in json.loads(line)["turns"]:
                    n_all += len(t["labels"])
                    n_r += sum(t["labels"])
                f.write(line)
    finally:
        for fh in files:
            fh.close()
    write_json(meta_path(out), {**meta, "tokens": n_all, "reasoning_share": n_r / max(n_all, 1),
                                "command": command_line()})
    shutil.rmtree(work, ignore_errors=True)
    return n_all, n_r


def _lines_with_offsets(f):
    off = 0
    for line in f:
        yield off, line
        off += len(line)
