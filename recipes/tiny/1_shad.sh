#!/usr/bin/env bash
# Tiny pass 1 of 3 (SHAD tuning) on this machine: a random 1-layer Llama built from the data,
# 2 CPU ranks (hostfiles/localhost), ZeRO-3 over gloo. The same steps as recipes/llama3-8b, in
# seconds instead of hours: 1_shad.sh -> 2_label.sh -> 3_rft.sh (and sft_baseline.sh to compare).
# Output: $OUT/shad/final, a full Hugging Face model that 2_label.sh compares with $MODEL.
: "${HOSTFILE:=hostfiles/localhost}"      # "localhost slots=2": 2 ranks here
: "${LAUNCH_EXTRA:=--no_ssh_check}"       # a one-host hostfile needs no ssh
: "${MASTER_ADDR:=127.0.0.1}"
: "${DATA:=data/demo/train.jsonl}"        # OpenAI-messages / ShareGPT JSONL (docs/bring-your-data.md)
: "${OUT:=outputs/tiny}"                  # run directory shared by the four tiny recipes
: "${MODEL:=$OUT/model}"                  # built here from $DATA when missing (rft-ds tiny-model)
: "${DS_CONFIG:=ds_configs/zero3.json}"
: "${MICRO_BATCH:=2}"                     # samples per rank per forward
: "${GRAD_ACCUM:=1}"                      # global batch = 2 ranks x MICRO_BATCH x GRAD_ACCUM
: "${LR:=1e-3}"
: "${MAX_STEPS=20}"                       # MAX_STEPS= (empty) EPOCHS=1: whole epochs instead
: "${EPOCHS:=}"
: "${MAX_SEQ_LEN:=1024}"                  # 2_label.sh and 3_rft.sh must use the same value
: "${SHUFFLE_FRACTION:=0.05}"             # share of (context -> turn) pairs shuffled (paper: 1%)
source "$(dirname "$0")/../common.sh"

[[ -f "$MODEL/config.json" ]] || rft-ds tiny-model --data "$DATA" --output "$MODEL" \
  --vocab-size 400 --hidden-size 32 --layers 1 --heads 2
deepspeed --hostfile "$HOSTFILE" "${LAUNCH_ARGS[@]}" --module rft_ds shad-train \
  --model "$MODEL" --data "$DATA" --output "$OUT/shad" --deepspeed "$DS_CONFIG" \
  --micro-batch-size "$MICRO_BATCH" --grad-accum "$GRAD_ACCUM" --lr "$LR" "${STEPS[@]}" \
  --max-seq-len "$MAX_SEQ_LEN" --shuffle-fraction "$SHUFFLE_FRACTION" "${EXTRA[@]}"
