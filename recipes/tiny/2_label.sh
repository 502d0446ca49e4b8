#!/usr/bin/env bash
# Tiny pass 2 of 3 (SHAD labeling): teacher-force every training sample through the base model
# and the shuffle-tuned one; token loss difference > 0 -> reasoning (1), else boilerplate (0).
# Sharded over the ranks; rank 0 gathers and writes $OUT/masks.jsonl (no shared filesystem needed).
: "${HOSTFILE:=hostfiles/localhost}"
: "${LAUNCH_EXTRA:=--no_ssh_check}"
: "${MASTER_ADDR:=127.0.0.1}"
: "${DATA:=data/demo/train.jsonl}"        # the data 3_rft.sh trains on
: "${OUT:=outputs/tiny}"
: "${MODEL:=$OUT/model}"                  # the base model of 1_shad.sh
: "${SHAD_MODEL:=$OUT/shad/final}"        # 1_shad.sh's output
: "${DS_CONFIG:=ds_configs/zero3.json}"   # only its ZeRO section is used (no optimizer here)
: "${LABEL_BATCH:=8}"                     # samples per forward per rank
: "${MAX_SEQ_LEN:=1024}"                  # must equal 3_rft.sh's
source "$(dirname "$0")/../common.sh"

deepspeed --hostfile "$HOSTFILE" "${LAUNCH_ARGS[@]}" --module rft_ds label \
  --base "$MODEL" --shad "$SHAD_MODEL" --data "$DATA" --output "$OUT/masks.jsonl" \
  --deepspeed "$DS_CONFIG" --batch-size "$LABEL_BATCH" --max-seq-len "$MAX_SEQ_LEN" "${EXTRA[@]}"
