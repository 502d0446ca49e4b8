#!/usr/bin/env bash
# Baseline: the run of 3_rft.sh with the plain SFT loss. The masks are read only for per-class
# metrics (loss_b / loss_r in metrics.jsonl), so the two runs compare class by class.
#   bash recipes/sft_baseline.sh MODEL   MODEL: a name in recipes/models/ (llama3-8b, tiny, ...) or an .env path
# Output: $OUT/sft/final. Every variable can be set in the environment (see 1_shad.sh).
source "$(dirname "$0")/common.sh" "$@"   # the model's variables, launcher flags, node environment
: "${MASKS:=$OUT/masks.jsonl}"            # 2_label.sh's output
: "${SAVE_STEPS:=200}"                    # DeepSpeed checkpoint every N steps (0: only final/); --resume via EXTRA_ARGS

deepspeed --hostfile "$HOSTFILE" "${LAUNCH_ARGS[@]}" --module rft_ds train --loss sft \
  --masks "$MASKS" --model "$MODEL" --data "$DATA" --output "$OUT/sft" \
  --deepspeed "$DS_CONFIG" --micro-batch-size "$MICRO_BATCH" --grad-accum "$GRAD_ACCUM" \
  --lr "$LR" "${STEPS[@]}" --max-seq-len "$MAX_SEQ_LEN" --save-steps "$SAVE_STEPS" \
  --precision "$PRECISION" --attn-implementation "$ATTN" "${CKPT[@]}" "${EXTRA[@]}"
