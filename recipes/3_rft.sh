#!/usr/bin/env bash
# Pass 3 of 3: fine-tune the base model with the RFT loss, which weights the boilerplate and
# reasoning tokens of $OUT/masks.jsonl by softmax(class losses / TAU).
#   bash recipes/3_rft.sh MODEL      MODEL: a name in recipes/models/ (llama3-8b, tiny, ...) or an .env path
# Output: $OUT/rft/final (HF model; with EXTRA_ARGS="--lora-rank 16", a peft adapter).
# Every variable can be set in the environment (see 1_shad.sh); MAX_SEQ_LEN must equal 2_label.sh's.
source "$(dirname "$0")/common.sh" "$@"   # the model's variables, launcher flags, node environment
: "${MASKS:=$OUT/masks.jsonl}"            # 2_label.sh's output
: "${TAU:=2.0}"                           # RFT temperature; 1/TAU in the paper's robust [0.2, 0.5]
: "${SAVE_STEPS:=200}"                    # DeepSpeed checkpoint every N steps (0: only final/); --resume via EXTRA_ARGS

deepspeed --hostfile "$HOSTFILE" "${LAUNCH_ARGS[@]}" --module rft_ds train --loss rft \
  --masks "$MASKS" --tau "$TAU" --model "$MODEL" --data "$DATA" --output "$OUT/rft" \
  --deepspeed "$DS_CONFIG" --micro-batch-size "$MICRO_BATCH" --grad-accum "$GRAD_ACCUM" \
  --lr "$LR" "${STEPS[@]}" --max-seq-len "$MAX_SEQ_LEN" --save-steps "$SAVE_STEPS" \
  --precision "$PRECISION" --attn-implementation "$ATTN" "${CKPT[@]}" "${EXTRA[@]}"
