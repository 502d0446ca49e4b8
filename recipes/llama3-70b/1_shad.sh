#!/usr/bin/env bash
# Llama-3-70B-Instruct, SHAD pass 1 of 3: fine-tune a copy of the base model on shuffled
# (context -> assistant turn) pairs, so it learns the data's boilerplate and none of its reasoning.
# Output: $OUT/shad/final (full HF model) for 2_label.sh.
# Memory: `rft-ds estimate-memory --model llama3-70b --nodes 2 --gpus-per-node 8 --grad-ckpt --offload all`
#   2 nodes x 8x80GB need CPU offload (ds_configs/zero3_offload.json: ~16 GiB/GPU, ~920 GiB host
#   memory per node, slower steps). With 4+ nodes use DS_CONFIG=ds_configs/zero3.json (no offload,
#   ~48 GiB/GPU on 4x8: `... --nodes 4 --gpus-per-node 8 --grad-ckpt`). Label: ~6-15 GiB/GPU, no offload.
# Every variable can be set in the environment: `OUT=/shared/runs/x bash recipes/llama3-70b/1_shad.sh`.
# Relative paths are relative to the repository root. MODEL, DATA and OUT must be readable (OUT
# writable) at the same path on every node (docs/multi-node.md).
: "${HOSTFILE:=hostfiles/example-2x8}"    # one "host slots=GPUs" line per node
: "${MODEL:=/shared/models/Meta-Llama-3-70B-Instruct}"  # a local HF directory (huggingface-cli download ... --local-dir)
: "${DATA:=data/train.jsonl}"             # OpenAI-messages / ShareGPT JSONL (docs/bring-your-data.md)
: "${OUT:=outputs/llama3-70b}"
: "${DS_CONFIG:=ds_configs/zero3_offload.json}"  # optimizer + params in host memory (2 nodes); zero3.json with 4+ nodes
: "${MICRO_BATCH:=1}"                     # samples per GPU per forward (MAX_SEQ_LEN tokens each)
: "${GRAD_ACCUM:=4}"                      # global batch = 2 nodes x 8 GPUs x 1 x 4 = 64 samples
: "${LR:=1e-5}"
: "${EPOCHS:=3}"
: "${MAX_STEPS:=}"                        # set to stop after N optimizer steps instead of EPOCHS
: "${MAX_SEQ_LEN:=4096}"                  # 2_label.sh and 3_rft.sh must agree (the masks' token ids are checked)
: "${SAVE_STEPS:=0}"                      # DeepSpeed checkpoint every N steps (0: only final/); --resume via EXTRA_ARGS
: "${SHUFFLE_FRACTION:=0.01}"             # share of (context -> turn) pairs shuffled (paper: 1%)
: "${PRECISION:=bf16}"                    # bf16 on GPU (fp32 to debug numerics)
: "${ATTN:=sdpa}"                         # flash_attention_2: faster, less memory; needs `pip install flash-attn`
source "$(dirname "$0")/../common.sh"

deepspeed --hostfile "$HOSTFILE" "${LAUNCH_ARGS[@]}" --module rft_ds shad-train \
  --model "$MODEL" --data "$DATA" --output "$OUT/shad" --deepspeed "$DS_CONFIG" \
  --micro-batch-size "$MICRO_BATCH" --grad-accum "$GRAD_ACCUM" --lr "$LR" "${STEPS[@]}" \
  --max-seq-len "$MAX_SEQ_LEN" --shuffle-fraction "$SHUFFLE_FRACTION" --save-steps "$SAVE_STEPS" \
  --precision "$PRECISION" --attn-implementation "$ATTN" --grad-ckpt "${EXTRA[@]}"
