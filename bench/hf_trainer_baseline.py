"""The usual path: Hugging Face `Trainer` + DeepSpeed ZeRO-3, on exactly the batches `rft-ds train` uses.

Launched like the engine: `deepspeed --num_gpus 2 bench/hf_trainer_baseline.py --model M --data D ...`.
Everything that decides the work of a step is the same as `rft-ds train --loss sft`:
  * tokenization: rft-ds's render/encode (chat template, --max-seq-len truncation); labels are the
    input ids at assistant (loss) tokens and -100 elsewhere, so the same tokens carry the loss;
  * batches: the engine's global batches (rft_ds.data.batching.global_batches, same seed, length
    grouping) cut into the same per-rank micro-batches; the dataset is laid out so that Trainer's
    sequential sampler + accelerate's batch sharding hands rank r exactly the engine's micro-batch;
  * DeepSpeed: the engine's resolved ds_config dict (rft_ds.ds_config.resolve_ds_config of the same
    JSON and flags): ZeRO-3, DeepSpeed's AdamW with the same lr / weight decay / betas / eps,
    gradient clipping, fp32 on CPU (bf16 on GPU), micro-batch x accumulation x ranks;
  * schedule: cosine with 3% warm-up, like the engine's default.
What differs is the usual path itself: the model's own forward with `labels` (logits over every
position, HF's ForCausalLMLoss with num_items_in_batch), Trainer's loop, callbacks and accelerate.

Writes OUT/steps.jsonl: one line per optimizer step, {"step", "elapsed_s", "tokens"} on rank 0,
elapsed_s measured from the same kind of origin as the engine's metrics.jsonl (process start of
the training function), so per-step deltas compare directly.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from pathlib import Path

T_START = time.time()


def _cpu_world_state() -> dict:
    """accelerate (1.15) has no backend for DeepSpeed on a machine without an accelerator: under the
    deepspeed launcher on CPU its PartialState reports ONE process, so Trainer would size batches and
    shard data for a world of 1 (its ds_config check fails: train_batch_size 16 vs 8). DeepSpeed's gloo
    process group is up and right, so on CPU we pre-configure accelerate's state from it and let
    TrainingArguments use that state (accelerator_config use_configured_state). Nothing changes on GPU."""
    import torch
    import torch.distributed as tdist
    from accelerate.state import PartialState

    if torch.cuda.is_available() or not tdist.is_initialized():
        return {}
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    PartialState()
    PartialState._shared_state.update(num_processes=tdist.get_world_size(), process_index=tdist.get_rank(),
                                      local_process_index=int(os.environ.get("LOCAL_RANK", 0)))
    return {"accelerator_config": {"use_configured_state": True}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--deepspeed", default=None, help="DeepSpeed JSON (default: rft-ds's default ZeRO-3 config)")
    ap.add_argument("--micro-batch-size", type=int, default=8)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--max-steps", type=int, required=True)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--max-seq-len", type=int, default=4096)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--local_rank", type=int, default=-1)  # set by the deepspeed launcher
    a = ap.parse_args()

    import torch
    from torch.utils.data import Dataset, SequentialSampler
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from rft_ds import dist
    from rft_ds.config import TrainConfig
    from rft_ds.ds_config import default_ds_config, load_ds_config, resolve_ds_config, resolved_flags
    from rft_ds.data.batching import DUMMY, global_batches, split_global_batch
    from rft_ds.data.formats import read_conversations
    from rft_ds.data.render import encode_dataset
    from rft_ds.modeling import load_tokenizer, torch_dtype

    dist.init()
    W = dist.world_size()
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)

    # ---- the engine's ds_config, resolved from the same JSON and flags
    cfg = TrainConfig(model=a.model, data=a.data, output=a.output, deepspeed=a.deepspeed,
                      micro_batch_size=a.micro_batch_size, grad_accum=a.grad_accum, max_steps=a.max_steps,
                      lr=a.lr, seed=a.seed, max_seq_len=a.max_seq_len, precision=a.precision)
    raw = load_ds_config(a.deepspeed) if a.deepspeed else default_ds_config()
    ds = resolve_ds_config(raw, cfg, W, dist.on_gpu(), src=a.deepspeed or "default ds_config")
    cfg = dataclasses.replace(cfg, **resolved_flags(ds, cfg))
    precision = "bf16" if ds["bf16"].get("enabled") else "fp16" if ds["fp16"].get("enabled") else "fp32"
    B, GA = cfg.micro_batch_size, cfg.grad_accum
    G = B * GA * W
    opt = ds["optimizer"]["params"]

    # ---- tokenize the engine's way; labels = ids at loss tokens, -100 elsewhere
    tok = load_tokenizer(a.model)
    encs, _ = encode_dataset(read_conversations(a.data), tok, a.max_seq_len)
    lengths = [len(e.input_ids) for e in encs]
    rows = []
    for e in encs:
        labels = [t if (m >= 0 and i >= 1) else -100 for i, (t, m) in enumerate(zip(e.input_ids, e.msg_index))]
        rows.append({"input_ids": e.input_ids, "labels": labels})

    # ---- lay out the engine's micro-batches so that a sequential sampler + accelerate's
    # BatchSamplerShard (rank r takes batch i when i % W == r) reproduces them exactly
    steps_per_epoch = math.ceil(len(encs) / G)
    order: list[int] = []
    for step in range(a.max_steps):
        epoch, k = divmod(step, steps_per_epoch)
        gb = global_batches(lengths, G, a.seed, epoch, True)[k]
        parts = [split_global_batch(gb, lengths, W, B, GA, r) for r in range(W)]
        for m in range(GA):
            for r in range(W):
                if parts[r][m] == [DUMMY] or len(parts[r][m]) != B:
                    raise SystemExit("hf_trainer_baseline: use a step count within complete global batches")
                order += parts[r][m]

    class Laid(Dataset):
        def __len__(self):
            return len(order)

        def __getitem__(self, i):
            return rows[order[i]]

    pad = tok.pad_token_id

    def collate(batch):
        T = max(len(x["input_ids"]) for x in batch)
        ids = torch.full((len(batch), T), pad, dtype=torch.long)
        lab = torch.full((len(batch), T), -100, dtype=torch.long)
        att = torch.zeros((len(batch), T), dtype=torch.long)
        for i, x in enumerate(batch):
            n = len(x["input_ids"])
            ids[i, :n] = torch.tensor(x["input_ids"])
            lab[i, :n] = torch.tensor(x["labels"])
            att[i, :n] = 1
        return {"input_ids": ids, "attention_mask": att, "labels": lab}

    class Timing(TrainerCallback):
        def __init__(self):
            self.rows = []
            self.tokens = 0

        def on_step_end(self, args, state, control, **kw):
            self.rows.append({"step": state.global_step, "elapsed_s": round(time.time() - T_START, 3)})

    class SequentialTrainer(Trainer):
        losses: list = []

        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

        def compute_loss(self, model, inputs, *args, **kw):
            loss = super().compute_loss(model, inputs, *args, **kw)
            # this rank's part (sum of its token CE / global tokens x W); no sync here, read at the end
            self.losses.append(loss.detach())
            return loss

    # TrainingArguments before from_pretrained: its HfDeepSpeedConfig makes loading use zero.Init
    args = TrainingArguments(
        output_dir=str(out), deepspeed=ds, per_device_train_batch_size=B, gradient_accumulation_steps=GA,
        learning_rate=opt["lr"], weight_decay=opt["weight_decay"], adam_beta1=opt["betas"][0],
        adam_beta2=opt["betas"][1], adam_epsilon=opt["eps"], max_grad_norm=ds["gradient_clipping"],
        max_steps=a.max_steps, lr_scheduler_type="cosine", warmup_steps=0.03, seed=a.seed, data_seed=a.seed,
        bf16=precision == "bf16", fp16=precision == "fp16", logging_steps=10**9, save_strategy="no",
        report_to=[], disable_tqdm=True, remove_unused_columns=False, dataloader_num_workers=0,
        dataloader_drop_last=False, dataloader_pin_memory=False, **_cpu_world_state(),
    )
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch_dtype(precision), attn_implementation="sdpa")
    model.config.use_cache = False
    timing = Timing()
    trainer = SequentialTrainer(model=model, args=args, train_dataset=Laid(), data_collator=collate,
                                callbacks=[timing])
    assert args.world_size == W, (args.world_size, W)
    dist.log(f"hf_trainer_baseline: {len(encs)} samples, {a.max_steps} steps x global batch {G} "
             f"(= {W} ranks x {B} x {GA}), {precision}, ZeRO stage {ds['zero_optimization'].get('stage')}")
    res = trainer.train()
    # the global-batch token-mean loss of each step (the engine's metrics.jsonl "loss"), for a sanity check
    per_step = torch.stack(trainer.losses).double().view(a.max_steps, GA).sum(1)
    per_step = (dist.all_reduce_sum(per_step) / W).tolist()
    if dist.is_main():
        with open(out / "steps.jsonl", "w") as f:
            for r, loss in zip(timing.rows, per_step):
                f.write(json.dumps({**r, "loss": loss}) + "\n")
        print(f"hf_trainer_baseline: done, train_loss {res.training_loss:.4f} ({time.time() - T_START:.1f}s)",
              flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
