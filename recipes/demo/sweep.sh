#!/usr/bin/env bash
# The SHAD sweep of docs/shad-sweep.md on SmolLM2-135M: for each setting (SHAD steps, lr, shuffle
# fraction, full weights or LoRA), shad-train on the bundled data, label a fixed subset (the first
# SWEEP_SAMPLES training samples), compare with the three truths (incl. LD ROC AUC), time each step.
# Resumable: a finished setting (OUT/<name>/result.json) is skipped. About 5-10 min per setting on 2
# cores. Extra arguments go to `python -m rft_ds.demo.sweep` (e.g. --only NAME..., --setting
# NAME:STEPS:LR:FRACTION[:LORA_RANK[:MICRO_BATCH]], --table).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${OUT:=outputs/shad-sweep}"
: "${MODEL:=.venv/models/smollm2-135m}"
: "${SWEEP_SAMPLES:=200}"
: "${RANKS:=1}" ; : "${LABEL_RANKS:=2}" ; : "${PRECISION:=fp32}"
if rft-ds fetch-model --help >/dev/null 2>&1; then rft-ds fetch-model smollm2-135m --output "$MODEL"; fi
python -m rft_ds.demo.sweep --model "$MODEL" --out "$OUT" --samples "$SWEEP_SAMPLES" --ranks "$RANKS" \
  --label-ranks "$LABEL_RANKS" --precision "$PRECISION" --label-precision "$PRECISION" "$@" | tee "$OUT.md"
