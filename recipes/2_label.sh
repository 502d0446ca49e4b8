#!/usr/bin/env bash
# SHAD pass 2 of 3: teacher-force every training sample through the base model and the
# shuffle-tuned one; token loss difference > 0 -> reasoning (1), else boilerplate (0).
#   bash recipes/2_label.sh MODEL    MODEL: a name in recipes/models/ (llama3-8b, tiny, ...) or an .env path
# Sharded over all GPUs; rank 0 gathers and writes $OUT/masks.jsonl (no shared filesystem needed
# for the output; the models must be readable on every node). A rerun resumes finished chunks.
# Every variable can be set in the environment (see 1_shad.sh); MAX_SEQ_LEN must equal 3_rft.sh's.
source "$(dirname "$0")/common.sh" "$@"   # the model's variables, launcher flags, node environment
: "${SHAD_MODEL:=$OUT/shad/final}"        # 1_shad.sh's output
: "${MASKS:=$OUT/masks.jsonl}"            # what this pass writes (3_rft.sh reads it)

deepspeed --hostfile "$HOSTFILE" "${LAUNCH_ARGS[@]}" --module rft_ds label \
  --base "$MODEL" --shad "$SHAD_MODEL" --data "$DATA" --output "$MASKS" \
  --deepspeed "$LABEL_DS_CONFIG" --batch-size "$LABEL_BATCH" --max-seq-len "$MAX_SEQ_LEN" \
  --precision "$PRECISION" --attn-implementation "$ATTN" "${EXTRA[@]}"
