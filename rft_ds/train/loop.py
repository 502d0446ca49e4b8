"""The one training loop: SHAD tuning, SFT, RFT, fixed-weight, DFT and Rho-1 runs differ only in their data
and loss.

    tokenize once -> (optional) join masks -> load model under ZeRO-3 -> deepspeed.initialize
    (rho1: + the reference model, an inference engine under the same ZeRO stage 3, or whole with 0-2)
    for each optimizer step:
        all-reduce the step's token/sample/class counts        (1 collective, every rank)
        (rho1: no-grad forwards of reference and model over the step's micro-batches, then every
         token's excess loss gathered to agree on the kept tokens   (2 collectives, every rank))
        for each micro-batch: forward -> per-token CE -> loss -> backward(scale_wrt_gas=False) -> step
            (batch granularity: + 1 all-reduce of 4 class sums per micro-step, every rank)
        all-reduce the step's metric sums                     (1 collective, every rank)
        rank 0 appends one line to metrics.jsonl; checkpoint every --save-steps
    consolidated 16-bit save to OUTPUT/final (Hugging Face format)

The loss step is rft_ds/train/step.py; the normalisation maths is in rft_ds/losses.py.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from pathlib import Path

import torch

from rft_ds import dist
from rft_ds.config import CLASS_LOSSES, TrainConfig
from rft_ds.data.batching import DUMMY, collate, global_batches, split_global_batch
from rft_ds.data.formats import Conversation
from rft_ds.data.render import encode_dataset, tokenizer_fingerprint
from rft_ds.ds_config import default_ds_config, load_ds_config, precision_of, resolve_ds_config, resolved_flags
from rft_ds.fsio import append_line, atomic_write, dumps_line, fault_point, read_jsonl_tail_safe, write_json
from rft_ds.modeling import check_same_tokenizer
from rft_ds.monitor import Progress, model_flop_counts, monitor_config, peak_flops, step_flops
from rft_ds.monitor import write as write_monitor
from rft_ds.runtime import LoraSpec, build_engine, claim_output
from rft_ds.train.checkpoint import load_checkpoint, save_checkpoint
from rft_ds.train.step import LossSpec, MetricSums, StepCounts, local_counts, metrics_row, micro_loss, rho1_select

RUN_FILES = ("final", "checkpoints", "metrics.jsonl", "shuffle.jsonl", "run.json")


def train(cfg: TrainConfig, convs: list[Conversation] | None = None, extra_files: dict | None = None) -> dict:
    """Run one training job. `convs` overrides reading cfg.data (SHAD passes its shuffled pairs).
    `extra_files` maps output file names to JSONL rows written by rank 0 (e.g. shuffle.jsonl)."""
    cfg.check()
    dist.init(cfg.dist_timeout_min)
    out = Path(cfg.output)
    claim_output([out / "final", out / "metrics.jsonl"], [out / n for n in RUN_FILES], overwrite=cfg.overwrite,
                 allow=cfg.resume, mkdir=out,
                 refusal=f"{out} already holds a run (final/ or metrics.jsonl); pass --resume to continue it or "
                         "--overwrite to replace it")
    t_start = time.time()
    tok, encs, data_info = _load_data(cfg, convs)
    if cfg.loss == "rho1":  # before any model is loaded
        check_same_tokenizer(tok, cfg.model, cfg.reference, "--reference", "the excess loss compares the same tokens")
    cfg, ds, precision = _resolve(cfg, str(out))
    W, R = dist.world_size(), dist.rank()
    G = cfg.micro_batch_size * cfg.grad_accum * W
    steps_per_epoch = math.ceil(len(encs) / G)
    total = cfg.max_steps if cfg.max_steps is not None else max(1, math.ceil(cfg.epochs * steps_per_epoch))
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    built = _build(cfg, ds, precision, total)
    engine, device = built.engine, built.engine.device
    ref = _build_reference(cfg, ds, precision) if cfg.loss == "rho1" else None
    start = load_checkpoint(engine, out) if cfg.resume else 0
    _start_files(out, start, {"config": cfg.to_json(), "ds_config": ds, "world_size": W, "precision": precision,
                              **data_info}, extra_files)
    dist.log(f"train: {len(encs)} samples, {total} steps x global batch {G} (= {W} ranks x {cfg.micro_batch_size} x "
             f"{cfg.grad_accum}), loss {cfg.loss}" + _loss_detail(cfg)
             + f", {precision}, ZeRO stage {ds['zero_optimization'].get('stage', 0)}")

    spec, lengths = LossSpec.of(cfg), encs.lengths
    dummy = encs[min(range(len(lengths)), key=lengths.__getitem__)]
    flops = _FlopMeter(built.hf.config, cfg.peak_tflops, W)
    epoch_cache: dict[int, list[list[int]]] = {}
    progress = Progress(total, "step", cfg.log_every_s, initial=start, enabled=dist.is_main())
    engine.train()
    for step in range(start, total):
        t_step = time.time()
        epoch, k = divmod(step, steps_per_epoch)
        if epoch not in epoch_cache:
            epoch_cache.clear()
            epoch_cache[epoch] = global_batches(lengths, G, cfg.seed, epoch, cfg.group_by_length)
        micro = [collate([None if i == DUMMY else encs[i] for i in part], tok.pad_token_id, dummy).to(device)
                 for part in split_global_batch(epoch_cache[epoch][k], lengths, W, cfg.micro_batch_size,
                                                cfg.grad_accum, R)]
        lr = engine.get_lr()[0] if engine.get_lr() else cfg.lr
        counts, sums = _optimizer_step(engine, micro, spec, W, ref)
        gn, dt = engine.get_global_grad_norm(), time.time() - t_step
        losses = metrics_row(counts, sums, spec, cfg.masks is not None)
        row = {"step": step + 1, "loss": losses.pop("loss"), "grad_norm": float(gn) if gn is not None else None,
               "lr": lr, "tokens": int(counts.tokens), "samples": int(counts.samples),
               "epoch": epoch + k / steps_per_epoch, "elapsed_s": round(time.time() - t_start, 3),
               **flops.columns(counts, dt), **losses}
        if step == start:  # this launch's start-up: data, engine, checkpoint, until its first step began
            row["startup_s"] = round(t_step - t_start, 3)
        if dist.is_main():
            _log_row(out, engine, progress, row)
        if cfg.save_steps and (step + 1) % cfg.save_steps == 0 and step + 1 < total:
            save_checkpoint(engine, out, step + 1, cfg.save_total_limit)
        fault_point("train-step", step + 1)
    progress.close()
    _final_save(cfg, built, tok, out, t_start)
    return {"steps": total, "output": str(out)}


def _optimizer_step(engine, micro: list, spec: LossSpec, W: int, ref=None) -> tuple[StepCounts, dict[str, float]]:
    """One optimizer step over this rank's micro-batches: two all-reduces (counts, metric sums) on
    every rank, plus one per micro-step in RFT batch mode, plus Rho-1's selection (`ref`)."""
    counts = StepCounts(*dist.all_reduce_sum(local_counts(micro, engine.device)).tolist())
    sums = MetricSums(engine.device)
    sel, first = _rho1_selection(engine, ref, micro, spec) if ref is not None else (None, None)
    for m, mb in enumerate(micro):
        ce = first if first is not None and m == 0 else \
            engine(mb.input_ids, mb.attention_mask, mb.target_mask, mb.targets)
        out = micro_loss(ce, mb.seg, mb.classes, mb.input_ids.shape[0], counts, spec, W, dist.all_reduce_sum,
                         keep=sel.keep[m] if sel else None, kept=sel.kept if sel else 0)
        engine.backward(out.loss, scale_wrt_gas=False)
        engine.step()
        sums.add(ce, mb.classes, out)
    row = sums.all_reduced(dist.all_reduce_sum)
    if sel is not None:
        row.update(kept=float(sel.kept), excess_threshold=sel.threshold)
    return counts, row


def _rho1_selection(engine, ref, micro: list, spec: LossSpec):
    """Rho-1's tokens for this step: the excess loss CE - CE_ref of every loss token of every
    micro-batch, at the weights the step starts from, then the global top `keep_ratio` (every rank
    the same forwards and collectives). With one micro-batch its forward keeps its graph and is the
    training forward too (returned as `first`); with accumulation the model's CE comes from an extra
    no-grad forward per micro-batch, since the selection must see the whole step before a backward."""
    with torch.no_grad():
        ref_ce = [ref(mb.input_ids, mb.attention_mask, mb.target_mask, mb.targets).float() for mb in micro]
    first = None
    if len(micro) == 1:
        mb = micro[0]
        first = engine(mb.input_ids, mb.attention_mask, mb.target_mask, mb.targets)
        cur = [first.detach().float()]
    else:
        with torch.no_grad():
            cur = [engine(mb.input_ids, mb.attention_mask, mb.target_mask, mb.targets).float() for mb in micro]
    excess = [c - r for c, r in zip(cur, ref_ce)]
    return rho1_select(excess, spec.keep_ratio, lambda t: dist.all_gather_padded(t, float("-inf"))), first


def _loss_detail(cfg: TrainConfig) -> str:
    if cfg.loss == "rft":
        return f" ({cfg.rft_granularity}, tau {cfg.tau})"
    if cfg.loss == "weighted":
        return f" ({cfg.rft_granularity}, w_b {1 - cfg.w_reasoning:g}, w_r {cfg.w_reasoning:g})"
    if cfg.loss == "rho1":
        return f" (keep {cfg.keep_ratio:g} of the tokens by excess loss over {cfg.reference})"
    return ""


def _load_data(cfg: TrainConfig, convs: list[Conversation] | None):
    """Tokenize once (the cache, memory-mapped; SHAD's shuffled pairs in memory), join masks (the
    class losses, or per-class metrics for SFT and DFT)."""
    from rft_ds.masks import attach_classes
    from rft_ds.modeling import load_tokenizer
    from rft_ds.runtime import CacheSpec, tokenized

    tok = load_tokenizer(cfg.model)
    if convs is None:
        encs, st = tokenized(cfg.data, tok, cfg.max_seq_len, cfg.on_overflow, CacheSpec.of(cfg))
    else:
        encs, st = encode_dataset(convs, tok, cfg.max_seq_len, cfg.on_overflow)
    dist.log(f"data: {st.summary()}")
    info = {"data": st.__dict__}
    if cfg.masks:
        info.update(attach_classes(encs, cfg.masks, tokenizer_fingerprint(tok),
                                   cfg.missing_masks if cfg.loss in CLASS_LOSSES else "sft"))
        if info["missing_masks"]:
            dist.log(f"masks: {info['missing_masks']} samples have no masks and train with the SFT loss")
    return tok, encs, info


def _resolve(cfg: TrainConfig, out: str) -> tuple[TrainConfig, dict, str]:
    """The DeepSpeed config (the JSON or the default, reconciled with the flags) and the config the
    run goes on with (batch sizes, lr ... as resolved)."""
    from rft_ds.modeling import model_hidden_size

    raw = load_ds_config(cfg.deepspeed) if cfg.deepspeed else default_ds_config()
    ds = resolve_ds_config(raw, cfg, dist.world_size(), dist.on_gpu(), src=cfg.deepspeed or "default ds_config",
                           hidden_size=model_hidden_size(cfg.model))
    monitor_config(ds, cfg.report_to, out)
    return dataclasses.replace(cfg, **resolved_flags(ds, cfg)), ds, precision_of(ds)


def _build(cfg: TrainConfig, ds: dict, precision: str, total: int):
    lora = LoraSpec(cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets) if cfg.lora_rank > 0 else None
    return build_engine(cfg.model, ds, precision, logits_chunk=cfg.logits_chunk, attn=cfg.attn_implementation,
                        lora=lora, grad_ckpt=cfg.grad_ckpt,
                        optimizer=lambda params: torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
                        scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, total)))


def _build_reference(cfg: TrainConfig, ds: dict, precision: str):
    """Rho-1's reference model: an inference engine under the training JSON's ZeRO-3 (partitioned
    like the model, no optimizer), or whole on every rank where the JSON's stage (0-2) partitions
    only optimizer state and gradients, which a frozen model does not have."""
    from rft_ds.ds_config import inference_ds_config
    from rft_ds.modeling import model_hidden_size

    zero = ds.get("zero_optimization") or {}
    zero = {k: v for k, v in zero.items() if k != "offload_optimizer"} if zero.get("stage") == 3 else {"stage": 0}
    rds = inference_ds_config({"zero_optimization": zero}, dist.world_size(), precision,
                              model_hidden_size(cfg.reference), cfg.reference)
    t0 = time.time()
    ref = build_engine(cfg.reference, rds, precision, logits_chunk=cfg.logits_chunk,
                       attn=cfg.attn_implementation).engine
    dist.log(f"rho1: loaded the reference model {cfg.reference} (ZeRO stage {rds['zero_optimization']['stage']}) "
             f"in {time.time() - t0:.1f}s")
    return ref


def lr_lambda(cfg: TrainConfig, total: int):
    """Linear warm-up over --warmup-ratio of the steps, then cosine, linear or constant."""
    warm = int(round(cfg.warmup_ratio * total))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        if cfg.lr_scheduler == "constant":
            return 1.0
        frac = (step - warm) / max(1, total - warm)
        return max(0.0, 1 - frac) if cfg.lr_scheduler == "linear" else 0.5 * (1 + math.cos(math.pi * frac))

    return f


def _start_files(out: Path, start: int, run: dict, extra_files: dict | None) -> None:
    """Rank 0: run.json, metrics.jsonl cut back to the resumed step, the caller's extra files."""
    if not dist.is_main():
        return
    write_json(out / "run.json", run)
    rows = [r for r in read_jsonl_tail_safe(out / "metrics.jsonl") if r["step"] <= start]
    with atomic_write(out / "metrics.jsonl") as f:
        f.writelines(dumps_line(r) for r in rows)
    for name, rows in (extra_files or {}).items():
        with atomic_write(out / name) as f:
            f.writelines(dumps_line(r) for r in rows)


class _FlopMeter:
    """Throughput and MFU columns of a metrics row (MFU only where a peak is known: GPUs)."""

    def __init__(self, hf_config, peak_tflops: float | None, world: int):
        self.counts = model_flop_counts(hf_config)
        on_gpu = dist.on_gpu() and torch.cuda.is_available()
        self.peak = peak_flops(torch.cuda.get_device_name() if on_gpu else None, peak_tflops)
        self.world = world

    def columns(self, c: StepCounts, dt: float) -> dict:
        mfu = step_flops(self.counts, c.input_tokens, c.input_sq) / dt / (self.peak * self.world) if self.peak else None
        return {"step_time_s": round(dt, 4), "input_tokens": int(c.input_tokens),
                "tokens_per_s": round(c.input_tokens / dt, 2), "samples_per_s": round(c.samples / dt, 4),
                "mfu": round(mfu, 5) if mfu is not None else None}


def _log_row(out: Path, engine, progress: Progress, row: dict) -> None:
    append_line(out / "metrics.jsonl", row)
    write_monitor(engine.monitor, row)
    progress.update(loss=row["loss"], loss_b=row.get("loss_b"), loss_r=row.get("loss_r"),
                    grad_norm=row["grad_norm"] if row["grad_norm"] is not None else "n/a", lr=row["lr"],
                    tokens_per_s=row["tokens_per_s"], mfu=row["mfu"])


def _final_save(cfg: TrainConfig, built, tok, out: Path, t_start: float) -> None:
    """The consolidated 16-bit save to OUTPUT/final (every rank takes part in the gather)."""
    from rft_ds.modeling import consolidated_state_dict, save_hf_checkpoint

    if dist.is_main() and getattr(built.engine.monitor, "wandb_monitor", None) is not None:
        import wandb  # noqa: PLC0415

        wandb.finish()  # before the process leaves with os._exit: the run's files are complete
    sd = consolidated_state_dict(built.engine)
    if dist.is_main():
        if cfg.lora_rank > 0:
            from rft_ds.train.lora import save_lora  # noqa: PLC0415

            save_lora(built.lm, sd, tok, out, merge=cfg.merge_lora)
        else:
            save_hf_checkpoint(built.hf, sd, tok, out / "final")
        print(f"saved {out / 'final'} ({time.time() - t_start:.1f}s)", flush=True)
    dist.barrier()
