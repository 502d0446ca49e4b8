#!/usr/bin/env bash
# Tiny pass 3 of 3: fine-tune the base model with the RFT loss, which weights the boilerplate and
# reasoning tokens of $OUT/masks.jsonl by softmax(class losses / TAU). Output: $OUT/rft/final.
: "${HOSTFILE:=hostfiles/localhost}"
: "${LAUNCH_EXTRA:=--no_ssh_check}"
: "${MASTER_ADDR:=127.0.0.1}"
: "${DATA:=data/demo/train.jsonl}"
: "${OUT:=outputs/tiny}"
: "${MODEL:=$OUT/model}"
: "${MASKS:=$OUT/masks.jsonl}"            # 2_label.sh's output
: "${DS_CONFIG:=ds_configs/zero3.json}"
: "${MICRO_BATCH:=2}"
: "${GRAD_ACCUM:=1}"
: "${LR:=1e-3}"
: "${MAX_STEPS=20}"
: "${EPOCHS:=}"
: "${MAX_SEQ_LEN:=1024}"                  # as in 2_label.sh (the masks' token ids are checked)
: "${TAU:=2.0}"                           # RFT temperature; 1/TAU in the paper's [0.2, 0.5]
source "$(dirname "$0")/../common.sh"

deepspeed --hostfile "$HOSTFILE" "${LAUNCH_ARGS[@]}" --module rft_ds train --loss rft \
  --masks "$MASKS" --tau "$TAU" --model "$MODEL" --data "$DATA" --output "$OUT/rft" \
  --deepspeed "$DS_CONFIG" --micro-batch-size "$MICRO_BATCH" --grad-accum "$GRAD_ACCUM" \
  --lr "$LR" "${STEPS[@]}" --max-seq-len "$MAX_SEQ_LEN" "${EXTRA[@]}"
