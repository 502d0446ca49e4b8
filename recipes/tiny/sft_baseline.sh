#!/usr/bin/env bash
# Tiny baseline: the same run as 3_rft.sh with the plain SFT loss. The masks are only read for the
# per-class metrics (loss_b / loss_r in metrics.jsonl), so the two runs compare class by class.
: "${HOSTFILE:=hostfiles/localhost}"
: "${LAUNCH_EXTRA:=--no_ssh_check}"
: "${MASTER_ADDR:=127.0.0.1}"
: "${DATA:=data/demo/train.jsonl}"
: "${OUT:=outputs/tiny}"
: "${MODEL:=$OUT/model}"
: "${MASKS:=$OUT/masks.jsonl}"
: "${DS_CONFIG:=ds_configs/zero3.json}"
: "${MICRO_BATCH:=2}"
: "${GRAD_ACCUM:=1}"
: "${LR:=1e-3}"
: "${MAX_STEPS=20}"
: "${EPOCHS:=}"
: "${MAX_SEQ_LEN:=1024}"
source "$(dirname "$0")/../common.sh"

deepspeed --hostfile "$HOSTFILE" "${LAUNCH_ARGS[@]}" --module rft_ds train --loss sft \
  --masks "$MASKS" --model "$MODEL" --data "$DATA" --output "$OUT/sft" \
  --deepspeed "$DS_CONFIG" --micro-batch-size "$MICRO_BATCH" --grad-accum "$GRAD_ACCUM" \
  --lr "$LR" "${STEPS[@]}" --max-seq-len "$MAX_SEQ_LEN" "${EXTRA[@]}"
