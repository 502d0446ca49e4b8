#!/usr/bin/env bash
# SHAD pass 1 of 3: fine-tune a copy of the base model on shuffled (context -> assistant turn)
# pairs, so it learns the data's boilerplate and none of its reasoning.
#   bash recipes/1_shad.sh MODEL     MODEL: a name in recipes/models/ (llama3-8b, tiny, ...) or an .env path
# Output: $OUT/shad/final (a full HF model) for 2_label.sh. The model's variables (MODEL, DATA, OUT,
# DS_CONFIG, batch sizes, ...) are in recipes/models/<name>.env; every variable can be set in the
# environment: `OUT=/shared/runs/x MAX_STEPS=5 bash recipes/1_shad.sh llama3-8b`. MODEL, DATA and
# OUT must be readable (OUT writable) at the same path on every node (docs/multi-node.md).
source "$(dirname "$0")/common.sh" "$@"   # the model's variables, launcher flags, node environment
: "${SAVE_STEPS:=0}"                      # DeepSpeed checkpoint every N steps (0: only final/); --resume via EXTRA_ARGS

# tiny.env only: build the random model from the data when it is missing
[[ -z "${TINY_MODEL_ARGS:-}" || -f "$MODEL/config.json" ]] || rft-ds tiny-model --data "$DATA" --output "$MODEL" $TINY_MODEL_ARGS
deepspeed --hostfile "$HOSTFILE" "${LAUNCH_ARGS[@]}" --module rft_ds shad-train \
  --model "$MODEL" --data "$DATA" --output "$OUT/shad" --deepspeed "$DS_CONFIG" \
  --micro-batch-size "$MICRO_BATCH" --grad-accum "$GRAD_ACCUM" --lr "$LR" "${STEPS[@]}" \
  --max-seq-len "$MAX_SEQ_LEN" --shuffle-fraction "$SHUFFLE_FRACTION" --save-steps "$SAVE_STEPS" \
  --precision "$PRECISION" --attn-implementation "$ATTN" "${CKPT[@]}" "${EXTRA[@]}"
