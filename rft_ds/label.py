"""`rft-ds label`: SHAD step 3, the offline labeling pass, sharded over data-parallel ranks.

For every assistant (loss) token y_k of every sample, teacher-forced on the original sample:
    LD(y_k) = l_shad(y_k) - l_base(y_k);   label 1 (reasoning) if LD > margin else 0 (boilerplate)

How the work is split and made crash-safe:
  * Samples are sorted by length and cut into batches of --batch-size (little padding). Batch j
    belongs to round j // W and is run by rank j % W. A rank with no batch in a round runs a dummy
    batch (the shortest one) and discards its result, so under ZeRO-3 every rank makes the same
    forward passes and collectives; nothing hangs when the count is not a multiple of W x batch.
  * Rounds are grouped in chunks. After each chunk the results are gathered to rank 0, which
    writes `<output>.work/chunk-NNNNNN.jsonl` atomically (temp + rename): rank 0 is the only
    writer, so nodes need no shared filesystem.
  * A rerun of the same command finds the finished chunks (the work dir's manifest must match the
    data, models and settings) and computes only the rest. The merge writes the masks file in
    input order, checks that every input id appears exactly once, and is byte-identical whether
    or not the run was interrupted.
  * Per-token losses: logits only at loss positions, --logits-chunk positions at a time, fp32.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from rft_ds.config import TrainConfig
from rft_ds.errors import ConfigError, MasksError
from rft_ds.fsio import command_line

WORK_SUFFIX = ".work"


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


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


def _records_for_batch(encs, idx: list[int], ce_base, ce_shad, margin: float, fp: str) -> list[dict]:
    """Split a batch's row-major loss-token losses back into per-sample, per-message turns."""
    from rft_ds.masks import make_record

    out, pos = [], 0
    base, shad = ce_base.tolist(), ce_shad.tolist()
    for i in idx:
        e = encs[i]
        turns = {m: {"message": m, "token_ids": [], "labels": [], "loss_diff": []} for m in e.assistant_messages}
        for t, m in enumerate(e.msg_index):
            if m < 0 or t < 1:
                continue
            ld = shad[pos] - base[pos]
            turn = turns[m]
            turn["token_ids"].append(e.input_ids[t])
            turn["labels"].append(1 if ld > margin else 0)  # the threshold sees LD unrounded
            turn["loss_diff"].append(round(ld, 6))
            pos += 1
        out.append(make_record(e.id, fp, [turns[m] for m in e.assistant_messages]))
    assert pos == len(base), (pos, len(base))
    return out


def _load_engine(model_dir: str, ds: dict, precision: str, chunk: int, attn: str):
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    from rft_ds.modeling import TokenLossModel, load_causal_lm

    keep = HfDeepSpeedConfig(ds)  # alive during from_pretrained: zero.Init partitions while loading
    hf = load_causal_lm(model_dir, precision, attn)
    engine, *_ = deepspeed.initialize(model=TokenLossModel(hf, chunk), config=ds)
    engine.eval()
    engine.module.check_logits(engine.device, precision)
    del keep
    return engine


def label(a: argparse.Namespace) -> int:
    import torch

    from rft_ds import dist
    from rft_ds.config import fill_zero_auto, load_ds_config
    from rft_ds.data.batching import collate
    from rft_ds.data.formats import read_conversations
    from rft_ds.data.render import encode_conversation, ensure_chat_template, tokenizer_fingerprint
    from rft_ds.fsio import atomic_write, dumps_line, fault_point, write_json
    from rft_ds.masks import meta_path
    from rft_ds.modeling import load_tokenizer, model_hidden_size

    dist.init(a.dist_timeout_min)
    W, R = dist.world_size(), dist.rank()
    out = Path(a.output)
    work = Path(str(out) + WORK_SUFFIX)

    # ---- refuse to clobber; decide on rank 0
    err = None
    if dist.is_main():
        if out.exists() and not a.overwrite:
            err = f"{out} already exists; pass --overwrite to relabel"
        elif a.overwrite:
            out.unlink(missing_ok=True)
            meta_path(out).unlink(missing_ok=True)
            shutil.rmtree(work, ignore_errors=True)
    err = dist.broadcast_object(err)
    if err:
        raise ConfigError(err)

    tok = load_tokenizer(a.base)
    fp = tokenizer_fingerprint(tok)
    shad_fp = tokenizer_fingerprint(load_tokenizer(a.shad))
    if shad_fp != fp:
        raise ConfigError(f"the SHAD model's tokenizer ({a.shad}: {shad_fp}) differs from the base model's "
                          f"({a.base}: {fp}); SHAD must tune a copy of the same base model")
    ensure_chat_template(tok)
    convs = read_conversations(a.data)
    encs = []
    for c in convs:
        e = encode_conversation(c, tok, a.max_seq_len)
        if e.truncated and a.on_overflow == "error":
            from rft_ds.errors import DataError

            raise DataError(c.path, c.line, "messages", f"sample {c.id!r} is longer than --max-seq-len {a.max_seq_len}",
                            "raise --max-seq-len, or pass --on-overflow truncate")
        encs.append(e)
    lengths = [len(e.input_ids) for e in encs]
    batches = plan_batches(lengths, a.batch_size)
    n_rounds = rounds_of(len(batches), W)
    per_chunk = a.rounds_per_chunk
    n_chunks = (n_rounds + per_chunk - 1) // per_chunk
    precision = a.precision if a.precision != "auto" else ("bf16" if dist.on_gpu() else "fp32")
    manifest = {"data": _file_digest(a.data), "base": _model_identity(a.base), "shad": _model_identity(a.shad),
                "tokenizer": fp, "batch_size": a.batch_size, "max_seq_len": a.max_seq_len, "margin": a.margin,
                "world_size": W, "rounds_per_chunk": per_chunk, "precision": precision, "samples": len(encs)}

    # ---- which chunks are left (rank 0 looks, everyone follows)
    pending = None
    if dist.is_main():
        work.mkdir(parents=True, exist_ok=True)
        mpath = work / "manifest.json"
        if mpath.exists():
            old = json.loads(mpath.read_text())
            if old != manifest:
                diff = sorted(k for k in manifest if old.get(k) != manifest[k])
                pending = f"{work} holds an unfinished run with other settings ({', '.join(diff)}); " \
                          "rerun with the same settings to resume, or pass --overwrite"
        else:
            write_json(mpath, manifest)
        if pending is None:
            pending = [k for k in range(n_chunks) if not (work / f"chunk-{k:06d}.jsonl").exists()]
    pending = dist.broadcast_object(pending)
    if isinstance(pending, str):
        raise ConfigError(pending)
    done_before = n_chunks - len(pending)
    dist.log(f"label: {len(encs)} samples in {len(batches)} batches of <= {a.batch_size} over {W} ranks; "
             f"{n_chunks} chunks, {done_before} already done" + (f" (resuming from {work})" if done_before else ""))

    # ---- models (both partitioned under ZeRO-3)
    if a.deepspeed:
        ds = load_ds_config(a.deepspeed)
        ds = {k: v for k, v in ds.items() if k not in ("optimizer", "scheduler")}
    else:
        ds = {"zero_optimization": {"stage": 3}}
    ds.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1, train_batch_size=W,
              steps_per_print=10**9)
    ds["bf16"] = {"enabled": precision == "bf16"}
    ds["fp16"] = {"enabled": precision == "fp16"}
    ds.pop("gradient_clipping", None)
    fill_zero_auto(ds, model_hidden_size(a.base))
    left = sorted(k for k, v in (ds.get("zero_optimization") or {}).items() if v == "auto")
    if left:
        raise ConfigError(f"{a.deepspeed}: zero_optimization {', '.join(left)} \"auto\" but the base model's config "
                          "has no hidden_size to fill them from; give values")
    t0 = time.time()
    engines = [_load_engine(d, ds, precision, a.logits_chunk, a.attn_implementation) for d in (a.base, a.shad)]
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    dist.log(f"label: loaded base and SHAD models ({precision}, ZeRO stage {stage}: "
             f"{'partitioned over the ranks' if stage == 3 else 'whole on every rank'}) in {time.time() - t0:.1f}s")
    device = engines[0].device
    dummy = batches[-1]

    from rft_ds.monitor import Progress

    progress = Progress(len(pending) * per_chunk, "label rounds", a.log_every_s, unit="round",
                        enabled=dist.is_main() and bool(pending))
    t_fwd = time.time()
    n_tok = 0
    with torch.no_grad():
        for k in pending:
            recs = []
            for r in range(k * per_chunk, min((k + 1) * per_chunk, n_rounds)):
                j = r * W + R
                idx = batches[j] if j < len(batches) else dummy
                mb = collate([encs[i] for i in idx], tok.pad_token_id).to(device)
                ce = [eng(mb.input_ids, mb.attention_mask, mb.target_mask, mb.targets).float().cpu() for eng in engines]
                if j < len(batches):
                    recs += _records_for_batch(encs, idx, ce[0], ce[1], a.margin, fp)
                    n_tok += mb.targets.numel()
                # this rank's loss tokens x ranks: an estimate of the job's rate, without a collective
                progress.update(1, tokens_per_s=round(n_tok * W / max(time.time() - t_fwd, 1e-9)))
            gathered = dist.all_gather_object(recs)
            if dist.is_main():
                rows = [rec for part in gathered for rec in part]
                with atomic_write(work / f"chunk-{k:06d}.jsonl") as f:
                    f.writelines(dumps_line(rec) for rec in rows)
            fault_point("label-chunk", k)
    progress.close()
    elapsed = time.time() - t_fwd
    n_tok = int(dist.all_reduce_sum(torch.tensor([float(n_tok)], dtype=torch.float64, device=device)).item())
    dist.barrier()

    # ---- merge on rank 0: input order, coverage, atomic
    if dist.is_main():
        got: dict[str, dict] = {}
        for k in range(n_chunks):
            with open(work / f"chunk-{k:06d}.jsonl", encoding="utf-8") as f:
                for line in f:
                    rec = json.loads(line)
                    if rec["id"] in got:
                        raise MasksError(f"{work}: id {rec['id']!r} labeled twice (please report this)")
                    got[rec["id"]] = rec
        missing = [e.id for e in encs if e.id not in got]
        extra = set(got) - {e.id for e in encs}
        if missing or extra:
            raise MasksError(f"{work}: coverage check failed: {len(missing)} ids missing (first {missing[:3]}), "
                             f"{len(extra)} unexpected; rerun with --overwrite")
        n_all = n_r = 0
        with atomic_write(out) as f:
            for e in encs:
                rec = got[e.id]
                for t in rec["turns"]:
                    n_all += len(t["labels"])
                    n_r += sum(t["labels"])
                f.write(dumps_line(rec))
        write_json(meta_path(out), {"base": a.base, "shad": a.shad, "data": a.data, "tokenizer": fp,
                                    "margin": a.margin, "max_seq_len": a.max_seq_len, "samples": len(encs),
                                    "tokens": n_all, "reasoning_share": n_r / max(n_all, 1),
                                    "command": command_line()})
        shutil.rmtree(work, ignore_errors=True)
        rate = n_tok / elapsed if elapsed > 0 and n_tok else 0.0
        print(f"label: wrote {out}: {len(encs)} samples, {n_all} assistant tokens, "
              f"{n_r / max(n_all, 1):.1%} labeled reasoning; {n_tok} tokens this run at {rate:.0f} tokens/s "
              f"({elapsed:.1f}s, {W} ranks)", flush=True)
    dist.barrier()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("label", help="SHAD step 3: per-token LD = l_shad - l_base -> masks.jsonl (sharded, resumable)")
    p.add_argument("--base", required=True, help="the original base model directory")
    p.add_argument("--shad", required=True, help="the shuffle-tuned model (shad-train OUTPUT/final)")
    p.add_argument("--data", required=True, help="the training JSONL to label")
    p.add_argument("--output", required=True, help="masks JSONL to write")
    p.add_argument("--batch-size", type=int, default=8, help="samples per forward pass per rank")
    p.add_argument("--max-seq-len", type=int, default=4096, help="must equal the RFT run's --max-seq-len")
    p.add_argument("--on-overflow", choices=["truncate", "error"], default="truncate")
    p.add_argument("--margin", type=float, default=0.0, help="label 1 iff LD > margin (paper: 0)")
    p.add_argument("--deepspeed", default=None, help="DeepSpeed JSON (its ZeRO section is used); default ZeRO-3")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    p.add_argument("--logits-chunk", type=int, default=TrainConfig.logits_chunk,
                   help="loss positions per lm_head call (the same default as train and estimate-memory)")
    p.add_argument("--attn-implementation", default="sdpa")
    p.add_argument("--rounds-per-chunk", type=int, default=4, help="rounds (one batch per rank) per chunk file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing masks file / unfinished work")
    p.add_argument("--dist-timeout-min", type=float, default=120.0)
    p.add_argument("--log-every-s", type=float, default=TrainConfig.log_every_s,
                   help="when stderr is not a terminal: one progress line every N seconds (a bar otherwise)")
    p.set_defaults(func=label)
