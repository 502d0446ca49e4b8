"""The one training loop: SHAD tuning, SFT and RFT differ only in their data and loss.

    tokenize once -> (optional) join masks -> load model under ZeRO-3 -> deepspeed.initialize
    for each optimizer step:
        all-reduce the step's token/sample/class counts        (1 collective, every rank)
        for each micro-batch: forward -> per-token CE -> loss -> backward(scale_wrt_gas=False) -> step
            (RFT batch mode: + 1 all-reduce of 4 class sums per micro-step, every rank)
        all-reduce the step's metric sums                     (1 collective, every rank)
        rank 0 appends one line to metrics.jsonl; checkpoint every --save-steps
    consolidated 16-bit save to OUTPUT/final (Hugging Face format)

The normalisation maths is in rft_ds/losses.py.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import torch

from rft_ds import dist
from rft_ds.config import TrainConfig, default_ds_config, load_ds_config, resolve_ds_config, resolve_precision
from rft_ds.data.batching import DUMMY, collate, global_batches, split_global_batch
from rft_ds.data.formats import Conversation, read_conversations
from rft_ds.data.render import Encoded, encode_dataset, tokenizer_fingerprint
from rft_ds.errors import ConfigError, MasksError
from rft_ds.fsio import append_line, atomic_write, dumps_line, fault_point, read_jsonl_tail_safe, write_json
from rft_ds.losses import REASONING, BOILERPLATE, class_sums, rft_batch_micro, rft_per_sample
from rft_ds.monitor import Progress, model_flop_counts, monitor_config, peak_flops, step_flops
from rft_ds.monitor import write as write_monitor

UNMASKED = 2  # class of tokens of samples trained with SFT under --missing-masks sft


# ----------------------------------------------------------------------------------------------
# masks -> per-token classes
def attach_classes(encs: list[Encoded], masks: dict[str, dict], fingerprint: str, missing: str,
                   masks_path: str) -> dict:
    """Join masks by id and check their token ids against this tokenization. Sets e.classes."""
    n_missing, bad = 0, []
    for e in encs:
        rec = masks.get(e.id)
        if rec is None:
            if missing == "error":
                bad.append(e.id)
                continue
            n_missing += 1
            e.classes = [UNMASKED if (m >= 0 and t >= 1) else -1 for t, m in enumerate(e.msg_index)]
            continue
        if rec["tokenizer"] != fingerprint:
            raise MasksError(f"{masks_path}: sample {e.id!r}: masks were made with tokenizer {rec['tokenizer']}, "
                             f"this model's tokenizer is {fingerprint}; relabel with this model's tokenizer")
        turns = {t["message"]: t for t in rec["turns"]}
        labels_at: dict[int, list[int]] = {}
        for msg in e.assistant_messages:
            toks = e.turn_tokens(msg)
            t = turns.get(msg)
            if t is None or t["token_ids"] != toks:
                have = "no turn" if t is None else f"{len(t['token_ids'])} token ids"
                raise MasksError(f"{masks_path}: sample {e.id!r} message {msg}: masks have {have}, the training "
                                 f"tokenization has {len(toks)} loss tokens that differ; were the masks made with "
                                 "another tokenizer, chat template or --max-seq-len?")
            labels_at[msg] = list(t["labels"])
        cls = []
        for t, m in enumerate(e.msg_index):
            cls.append(labels_at[m].pop(0) if (m >= 0 and t >= 1) else -1)
        e.classes = cls
    if bad:
        raise MasksError(f"{masks_path}: no masks for {len(bad)} training samples (first: {bad[:5]}); label "
                         "them, or pass --missing-masks sft to train those with the SFT loss")
    return {"missing_masks": n_missing}


# ----------------------------------------------------------------------------------------------
def _lr_lambda(cfg: TrainConfig, total: int):
    warm = int(round(cfg.warmup_ratio * total))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        if cfg.lr_scheduler == "constant":
            return 1.0
        frac = (step - warm) / max(1, total - warm)
        return max(0.0, 1 - frac) if cfg.lr_scheduler == "linear" else 0.5 * (1 + math.cos(math.pi * frac))

    return f


def prepare_output(cfg: TrainConfig) -> Path:
    """Refuse to overwrite a finished run unless --overwrite/--resume. Decided on rank 0."""
    out = Path(cfg.output)
    err = None
    if dist.is_main():
        done = (out / "final").exists() or (out / "metrics.jsonl").exists()
        if done and not (cfg.overwrite or cfg.resume):
            err = (f"{out} already holds a run (final/ or metrics.jsonl); pass --resume to continue it or "
                   "--overwrite to replace it")
        elif cfg.overwrite and out.exists():
            for name in ("final", "checkpoints", "metrics.jsonl", "shuffle.jsonl", "run.json"):
                p = out / name
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
    err = dist.broadcast_object(err)
    if err:
        raise ConfigError(err)
    return out


def _checkpoint_dir(out: Path) -> Path:
    return out / "checkpoints"


def _save_checkpoint(engine, out: Path, step: int, cfg: TrainConfig) -> None:
    ck = _checkpoint_dir(out)
    tag = f"step-{step}"
    # RNG first: DeepSpeed writes `latest` last, so a checkpoint `latest` points to is complete.
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    with atomic_write(ck / tag / f"rng-rank{dist.rank()}.pt", "wb") as f:
        torch.save(state, f)
    engine.save_checkpoint(str(ck), tag=tag, client_state={"step": step})
    dist.barrier()
    if dist.is_main() and cfg.save_total_limit > 0:
        tags = sorted((p for p in ck.glob("step-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1]))
        for p in tags[: -cfg.save_total_limit]:
            shutil.rmtree(p, ignore_errors=True)


def _load_checkpoint(engine, out: Path) -> int:
    """Resume from checkpoints/latest. Rank 0 reads the tag and broadcasts it, so every rank loads
    the same step (each rank then reads its own partition files: OUTPUT must be on a filesystem
    every node sees, or copied to each node, when resuming a multi-node run)."""
    ck = _checkpoint_dir(out)
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


# ----------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, convs: list[Conversation] | None = None, extra_files: dict | None = None) -> dict:
    """Run one training job. `convs` overrides reading cfg.data (SHAD passes its shuffled pairs).
    `extra_files` maps output file names to JSONL rows written by rank 0 (e.g. shuffle.jsonl)."""
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    from rft_ds.masks import read_masks
    from rft_ds.modeling import (TokenLossModel, consolidated_state_dict, load_causal_lm, load_tokenizer,
                                 model_hidden_size, save_hf_checkpoint)

    cfg.check()
    dist.init(cfg.dist_timeout_min)
    W, R = dist.world_size(), dist.rank()
    out = prepare_output(cfg)
    t_start = time.time()

    # ---- data: read, tokenize once, join masks
    tok = load_tokenizer(cfg.model)
    if convs is None:
        convs = read_conversations(cfg.data)
    encs, st = encode_dataset(convs, tok, cfg.max_seq_len, cfg.on_overflow)
    dist.log(f"data: {st.summary()}")
    join = {}
    if cfg.masks:
        join = attach_classes(encs, read_masks(cfg.masks), tokenizer_fingerprint(tok),
                              cfg.missing_masks if cfg.loss == "rft" else "sft", cfg.masks)
        if join["missing_masks"]:
            dist.log(f"masks: {join['missing_masks']} samples have no masks and train with the SFT loss")

    # ---- DeepSpeed config, model, engine
    on_gpu = dist.on_gpu()
    raw = load_ds_config(cfg.deepspeed) if cfg.deepspeed else default_ds_config()
    ds = resolve_ds_config(raw, cfg, W, on_gpu, src=cfg.deepspeed or "default ds_config",
                           hidden_size=model_hidden_size(cfg.model))
    monitor_config(ds, cfg.report_to, str(out))
    precision = "bf16" if ds["bf16"].get("enabled") else "fp16" if ds["fp16"].get("enabled") else "fp32"
    B, GA = cfg.micro_batch_size, cfg.grad_accum
    G = B * GA * W
    lengths = [len(e.input_ids) for e in encs]
    steps_per_epoch = math.ceil(len(encs) / G)
    total = cfg.max_steps if cfg.max_steps is not None else max(1, math.ceil(cfg.epochs * steps_per_epoch))

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    hf_ds = HfDeepSpeedConfig(ds) if ds["zero_optimization"].get("stage") == 3 else None  # noqa: F841 (keep alive)
    hf = load_causal_lm(cfg.model, precision, cfg.attn_implementation)
    if cfg.grad_ckpt:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lm = hf
    if cfg.lora_rank > 0:
        from peft import LoraConfig, get_peft_model

        lm = get_peft_model(hf, LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or 2 * cfg.lora_rank,
                                           target_modules=cfg.lora_targets.split(","), lora_dropout=0.0,
                                           task_type="CAUSAL_LM"))
        if cfg.grad_ckpt:
            hf.enable_input_require_grads()
    model = TokenLossModel(lm, cfg.logits_chunk)
    params = [p for p in model.parameters() if p.requires_grad]
    sched = None if "scheduler" in ds else (lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, total)))
    opt = None
    if "optimizer" not in ds:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params, optimizer=opt, config=ds,
                                           lr_scheduler=sched)
    device = engine.device
    engine.module.check_logits(device, precision)
    flop_counts = model_flop_counts(hf.config)
    peak = peak_flops(torch.cuda.get_device_name() if on_gpu and torch.cuda.is_available() else None,
                      cfg.peak_tflops)

    start = _load_checkpoint(engine, out) if cfg.resume else 0
    if dist.is_main():
        write_json(out / "run.json", {"config": cfg.to_json(), "ds_config": ds, "world_size": W,
                                      "precision": precision, "data": st.__dict__, **join})
        rows = [r for r in read_jsonl_tail_safe(out / "metrics.jsonl") if r["step"] <= start]
        with atomic_write(out / "metrics.jsonl") as f:
            f.writelines(dumps_line(r) for r in rows)
        for name, rows in (extra_files or {}).items():
            with atomic_write(out / name) as f:
                f.writelines(dumps_line(r) for r in rows)
    dist.log(f"train: {len(encs)} samples, {total} steps x global batch {G} (= {W} ranks x {B} x {GA}), "
             f"loss {cfg.loss}" + (f" ({cfg.rft_granularity}, tau {cfg.tau})" if cfg.loss == "rft" else "")
             + f", {precision}, ZeRO stage {ds['zero_optimization'].get('stage', 0)}")

    dummy = min(encs, key=lambda e: len(e.input_ids))
    has_classes = cfg.masks is not None
    rft = cfg.loss == "rft"
    epoch_cache: dict[int, list[list[int]]] = {}
    progress = Progress(total, "step", cfg.log_every_s, initial=start, enabled=dist.is_main())
    engine.train()
    for step in range(start, total):
        t_step = time.time()
        epoch, k = divmod(step, steps_per_epoch)
        if epoch not in epoch_cache:
            epoch_cache.clear()
            epoch_cache[epoch] = global_batches(lengths, G, cfg.seed, epoch, cfg.group_by_length)
        gb = epoch_cache[epoch][k]
        micro = [collate([None if i == DUMMY else encs[i] for i in part], tok.pad_token_id, dummy).to(device)
                 for part in split_global_batch(gb, lengths, W, B, GA, R)]

        # counts of the whole step (global): loss tokens, samples with loss tokens, boilerplate, reasoning;
        # for throughput and MFU: input (non-padding) tokens and the sum of squared sample lengths
        cnt = torch.zeros(6, dtype=torch.float64, device=device)
        for mb in micro:
            cnt[0] += mb.targets.numel()
            cnt[1] += torch.unique(mb.seg).numel()
            cnt[2] += (mb.classes == BOILERPLATE).sum()
            cnt[3] += (mb.classes == REASONING).sum()
            lens = mb.attention_mask.sum(1).double()
            cnt[4] += lens.sum()
            cnt[5] += (lens * lens).sum()
        N, S, NB, NR, T_in, T_sq = dist.all_reduce_sum(cnt).tolist()

        # metric sums: ce_sum, tokens, sum_b, sum_r, objective, w_b sum, w_r sum, weighted samples
        acc = torch.zeros(8, dtype=torch.float64, device=device)
        lr = engine.get_lr()[0] if engine.get_lr() else cfg.lr
        for mb in micro:
            ce = engine(mb.input_ids, mb.attention_mask, mb.target_mask, mb.targets)
            cs = class_sums(ce, mb.classes)
            if not rft:
                loss = ce.sum() * (W / max(N, 1.0))
                obj = ce.detach().sum() / max(N, 1.0)
            elif cfg.rft_granularity == "sample":
                cls = torch.where(mb.classes == UNMASKED, torch.zeros_like(mb.classes), mb.classes)
                per, w_b, w_r, has = rft_per_sample(ce, mb.seg, cls, mb.input_ids.shape[0], cfg.tau,
                                                    cfg.detach_weights)
                loss = per.sum() * (W / max(S, 1.0))
                obj = per.detach().sum() / max(S, 1.0)
                both = has & (w_b > 0) & (w_r > 0)
                acc[5] += w_b.detach()[both].sum()
                acc[6] += w_r.detach()[both].sum()
                acc[7] += both.sum()
            else:
                g = dist.all_reduce_sum(cs.detach().clone().double()).to(cs.dtype)
                lm_, w_b, w_r = rft_batch_micro(cs, g, NB, NR, cfg.tau, cfg.detach_weights)
                loss = lm_ * W
                obj = lm_.detach() / W  # same value on every rank: the sum over ranks counts it once
                acc[5] += w_b.detach() / W
                acc[6] += w_r.detach() / W
                acc[7] += 1.0 / W
            engine.backward(loss, scale_wrt_gas=False)
            engine.step()
            acc[0] += ce.detach().sum()
            acc[1] += ce.numel()
            acc[2] += cs[0].detach()
            acc[3] += cs[2].detach()
            acc[4] += obj
        acc = dist.all_reduce_sum(acc).tolist()
        gn = engine.get_global_grad_norm()
        dt = time.time() - t_step
        row = {"step": step + 1, "loss": acc[4] if rft else acc[0] / max(N, 1.0),
               "grad_norm": float(gn) if gn is not None else None, "lr": lr,
               "tokens": int(N), "samples": int(S), "epoch": epoch + k / steps_per_epoch,
               "elapsed_s": round(time.time() - t_start, 3), "step_time_s": round(dt, 4),
               "input_tokens": int(T_in), "tokens_per_s": round(T_in / dt, 2), "samples_per_s": round(S / dt, 4),
               "mfu": round(step_flops(flop_counts, T_in, T_sq) / dt / (peak * W), 5) if peak else None}
        if rft:
            row["sft_loss"] = acc[0] / max(N, 1.0)
        if has_classes:
            row.update(loss_b=acc[2] / NB if NB else None, loss_r=acc[3] / NR if NR else None,
                       tokens_b=int(NB), tokens_r=int(NR))
        if rft:
            row.update(w_b=acc[5] / acc[7] if acc[7] else None, w_r=acc[6] / acc[7] if acc[7] else None)
        if dist.is_main():
            append_line(out / "metrics.jsonl", row)
            write_monitor(engine.monitor, row)
            progress.update(loss=row["loss"], loss_b=row.get("loss_b"), loss_r=row.get("loss_r"),
                            grad_norm=row["grad_norm"] if row["grad_norm"] is not None else "n/a", lr=lr,
                            tokens_per_s=row["tokens_per_s"], mfu=row["mfu"])
        if cfg.save_steps and (step + 1) % cfg.save_steps == 0 and step + 1 < total:
            _save_checkpoint(engine, out, step + 1, cfg)
        fault_point("train-step", step + 1)

    progress.close()
    if dist.is_main() and getattr(engine.monitor, "wandb_monitor", None) is not None:
        import wandb  # noqa: PLC0415

        wandb.finish()  # before the process leaves with os._exit: the run's files are complete
    # ---- final consolidated save (every rank takes part in the gather)
    sd = consolidated_state_dict(engine)
    if dist.is_main():
        if cfg.lora_rank > 0:
            from rft_ds.lora import save_lora  # noqa: PLC0415

            save_lora(lm, sd, tok, out, merge=cfg.merge_lora)
        else:
            save_hf_checkpoint(hf, sd, tok, out / "final")
        print(f"saved {out / 'final'} ({time.time() - t_start:.1f}s)", flush=True)
    dist.barrier()
    return {"steps": total, "output": str(out)}
