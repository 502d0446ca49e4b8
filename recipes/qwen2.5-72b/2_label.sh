#!/usr/bin/env bash
# Qwen2.5-72B-Instruct, SHAD pass 2 of 3: teacher-force every training sample through the base
# model and the shuffle-tuned one; token loss difference > 0 -> reasoning (1), else boilerplate (0).
# Sharded over all GPUs; rank 0 gathers and writes $OUT/masks.jsonl (no shared filesystem needed
# for the output; the models must be readable on every node). A rerun resumes finished chunks.
# Memory: `rft-ds estimate-memory --model qwen2.5-72b --nodes 2 --gpus-per-node 8 --grad-ckpt --offload all`
#   2 nodes x 8x80GB need CPU offload (ds_configs/zero3_offload.json, ~950 GiB host memory per
#   node); with 4+ nodes use DS_CONFIG=ds_configs/zero3.json (~50 GiB/GPU on 4x8). Label: no offload.
# Every variable can be set in the environment: `OUT=/shared/runs/x bash recipes/qwen2.5-72b/2_label.sh`.
# Relative paths are relative to the repository root. MODEL, DATA and OUT must be readable (OUT
# writable) at the same path on every node (docs/multi-node.md).
: "${HOSTFILE:=hostfiles/example-2x8}"    # one "host slots=GPUs" line per node
: "${MODEL:=/shared/models/Qwen2.5-72B-Instruct}"  # a local HF directory (huggingface-cli download ... --local-dir)
: "${DATA:=data/train.jsonl}"             # the data 3_rft.sh trains on
: "${OUT:=outputs/qwen2.5-72b}"
: "${SHAD_MODEL:=$OUT/shad/final}"        # 1_shad.sh's output
: "${DS_CONFIG:=ds_configs/zero3.json}"   # only its ZeRO section is used: forward passes, no optimizer
: "${LABEL_BATCH:=4}"                     # samples per forward per GPU
: "${MAX_SEQ_LEN:=4096}"                  # must equal 3_rft.sh's
: "${PRECISION:=bf16}"                    # bf16 on GPU (fp32 to debug numerics)
: "${ATTN:=sdpa}"                         # flash_attention_2: faster, less memory; needs `pip install flash-attn`
source "$(dirname "$0")/../common.sh"

deepspeed --hostfile "$HOSTFILE" "${LAUNCH_ARGS[@]}" --module rft_ds label \
  --base "$MODEL" --shad "$SHAD_MODEL" --data "$DATA" --output "$OUT/masks.jsonl" \
  --deepspeed "$DS_CONFIG" --batch-size "$LABEL_BATCH" --max-seq-len "$MAX_SEQ_LEN" \
  --precision "$PRECISION" --attn-implementation "$ATTN" "${EXTRA[@]}"
