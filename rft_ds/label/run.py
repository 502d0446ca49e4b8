"""`rft-ds label`, the run: SHAD step 3, the offline labeling pass, sharded over data-parallel ranks.

For every assistant (loss) token y_k of every sample, teacher-forced on the original sample:
    LD(y_k) = l_shad(y_k) - l_base(y_k);   label 1 (reasoning) if LD > margin else 0 (boilerplate)

    claim the output -> tokenize -> plan batches and chunks (rft_ds/label/chunks.py) -> load the
    base and SHAD models (both partitioned under ZeRO-3) -> forward rounds: in round r rank R runs
    batch r*W + R, or a dummy batch whose result it discards, so every rank makes the same forward
    passes and collectives -> after each chunk, the ranks' records are gathered to rank 0 alone,
    which writes the chunk file -> rank 0 merges the chunks into the masks file.
Per-token losses: logits only at loss positions, --logits-chunk positions at a time, fp32.
"""

from __future__ import annotations

import time
from pathlib import Path

from rft_ds import dist
from rft_ds.config import LabelConfig
from rft_ds.errors import ConfigError
from rft_ds.label.chunks import manifest_of, merge, pending_chunks, plan_batches, rounds_of, work_dir, write_chunk
from rft_ds.runtime import build_engine, claim_output


def label(cfg: LabelConfig) -> int:
    import torch

    from rft_ds.ds_config import inference_ds_config, load_ds_config
    from rft_ds.fsio import fault_point
    from rft_ds.masks import meta_path
    from rft_ds.modeling import model_hidden_size
    from rft_ds.monitor import Progress

    cfg.check()
    dist.init(cfg.dist_timeout_min)
    W = dist.world_size()
    out = Path(cfg.output)
    work = work_dir(out)
    claim_output([out], [out, meta_path(out), work], overwrite=cfg.overwrite,
                 refusal=f"{out} already exists; pass --overwrite to relabel")
    tok, fp, encs = _encode(cfg)
    batches = plan_batches(encs.lengths, cfg.batch_size)
    n_rounds = rounds_of(len(batches), W)
    n_chunks = (n_rounds + cfg.rounds_per_chunk - 1) // cfg.rounds_per_chunk
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if dist.on_gpu() else "fp32")
    pending = pending_chunks(work, manifest_of(cfg, W, fp, precision, len(encs)), n_chunks) \
        if dist.is_main() else None
    pending = dist.broadcast_object(pending)  # rank 0 looks, everyone follows
    if isinstance(pending, str):
        raise ConfigError(pending)
    done_before = n_chunks - len(pending)
    dist.log(f"label: {len(encs)} samples in {len(batches)} batches of <= {cfg.batch_size} over {W} ranks; "
             f"{n_chunks} chunks, {done_before} already done" + (f" (resuming from {work})" if done_before else ""))

    ds = inference_ds_config(load_ds_config(cfg.deepspeed) if cfg.deepspeed else None, W, precision,
                             model_hidden_size(cfg.base), cfg.deepspeed)
    t0 = time.time()
    engines = [build_engine(d, ds, precision, logits_chunk=cfg.logits_chunk, attn=cfg.attn_implementation).engine
               for d in (cfg.base, cfg.shad)]
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    dist.log(f"label: loaded base and SHAD models ({precision}, ZeRO stage {stage}: "
             f"{'partitioned over the ranks' if stage == 3 else 'whole on every rank'}) in {time.time() - t0:.1f}s")

    progress = Progress(len(pending) * cfg.rounds_per_chunk, "label rounds", cfg.log_every_s, unit="round",
                        enabled=dist.is_main() and bool(pending))
    t_fwd = time.time()
    n_tok = 0
    with torch.no_grad():
        for k in pending:
            recs, n = _chunk_rounds(cfg, engines, tok, fp, encs, batches, k, n_rounds, progress, t_fwd, n_tok)
            n_tok += n
            gathered = dist.gather_object(recs)  # to rank 0 only: no rank but the writer holds others' records
            if dist.is_main():
                write_chunk(work, k, gathered)
            fault_point("label-chunk", k)
    progress.close()
    elapsed = time.time() - t_fwd
    dev = engines[0].device
    n_tok = int(dist.all_reduce_sum(torch.tensor([float(n_tok)], dtype=torch.float64, device=dev)).item())
    dist.barrier()
    if dist.is_main():
        meta = {"base": cfg.base, "shad": cfg.shad, "data": cfg.data, "tokenizer": fp, "margin": cfg.margin,
                "max_seq_len": cfg.max_seq_len, "samples": len(encs)}
        n_all, n_r = merge(work, out, encs.ids, n_chunks, meta)
        rate = n_tok / elapsed if elapsed > 0 and n_tok else 0.0
        print(f"label: wrote {out}: {len(encs)} samples, {n_all} assistant tokens, "
              f"{n_r / max(n_all, 1):.1%} labeled reasoning; {n_tok} tokens this run at {rate:.0f} tokens/s "
              f"({elapsed:.1f}s, {W} ranks)", flush=True)
    dist.barrier()
    return 0


def _encode(cfg: LabelConfig):
    """The base model's tokenizer (the SHAD model's must be the same), and every sample encoded
    (through the tokenized cache; samples without a loss token are kept: records cover every id)."""
    from rft_ds.modeling import check_same_tokenizer, load_tokenizer
    from rft_ds.runtime import CacheSpec, tokenized

    tok = load_tokenizer(cfg.base)
    fp = check_same_tokenizer(tok, cfg.base, cfg.shad, "--shad", "SHAD must tune a copy of the same base model")
    encs, _ = tokenized(cfg.data, tok, cfg.max_seq_len, cfg.on_overflow, CacheSpec.of(cfg), keep_empty=True)
    return tok, fp, encs


def _chunk_rounds(cfg: LabelConfig, engines, tok, fp: str, encs, batches, k: int, n_rounds: int, progress,
                  t_fwd: float, n_tok: int) -> tuple[list[dict], int]:
    """This rank's rounds of chunk k: its records and loss tokens (a dummy batch where it has none)."""
    from rft_ds.data.batching import collate

    W, R, per = dist.world_size(), dist.rank(), cfg.rounds_per_chunk
    dummy, device = batches[-1], engines[0].device
    recs, n = [], 0
    for r in range(k * per, min((k + 1) * per, n_rounds)):
        j = r * W + R
        idx = batches[j] if j < len(batches) else dummy
        mb = collate([encs[i] for i in idx], tok.pad_token_id).to(device)
        ce = [eng(mb.input_ids, mb.attention_mask, mb.target_mask, mb.targets).float().cpu() for eng in engines]
        if j < len(batches):
            recs += _records_for_batch(encs, idx, ce[0], ce[1], cfg.margin, fp)
            n += mb.targets.numel()
        # this rank's loss tokens x ranks: an estimate of the job's rate, without a collective
        progress.update(1, tokens_per_s=round((n_tok + n) * W / max(time.time() - t_fwd, 1e-9)))
    return recs, n


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

