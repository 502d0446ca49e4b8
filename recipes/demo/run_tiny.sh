#!/usr/bin/env bash
# The tiny-model demo (`make demo-tiny`; `make demo` is recipes/demo/run.sh, on SmolLM2-135M):
# SHAD -> label -> RFT, plus an SFT baseline, on the bundled tool-use data (data/demo), with a tiny
# random Llama warmed on generated data, 2 local ranks, ZeRO-3, CPU, about 5 min. Every size and step
# count is a variable below; override any of them from the environment (e.g. SEEDS="0 1 2");
# STOP_AFTER=label ends the run after step (2) (tests/test_demo_shad.py checks the labels that far).
set -euo pipefail
cd "$(dirname "$0")/../.."

: "${OUT:=outputs/demo}"                 # everything the demo writes
: "${DATA:=data/demo}"                   # train.jsonl, heldout.jsonl, roles.jsonl
: "${HOSTFILE:=hostfiles/localhost}"     # localhost slots=2: two ranks on this machine
: "${DS_CONFIG:=ds_configs/zero3.json}"
: "${LABEL_DS_CONFIG:=ds_configs/zero0.json}"  # labeling: 2 tiny models fit every rank whole
: "${SEEDS:=0 1}"                        # RFT and SFT are each trained once per seed
: "${MAX_SEQ_LEN:=512}"
: "${MICRO_BATCH:=8}"                    # per rank: global batch = 2 ranks x 8 = 16
# the tiny base model (step 0 stands in for pretraining: on a cluster it is your HF model)
: "${VOCAB:=1000}" ; : "${HIDDEN:=128}" ; : "${LAYERS:=2}" ; : "${HEADS:=4}"
: "${WARM_STEPS:=400}" ; : "${WARM_LR:=4e-3}"
# warm-up data: this many freshly generated tasks (another seed, never a held-out argument combination),
# so the base sees each task about once, as in pretraining, instead of five epochs of the training set
: "${WARM_SAMPLES:=8000}"
# step 1: SHAD tuning on shuffled (context -> turn) pairs. The paper uses 1% of a large data set;
# 1200 samples need a larger share for the tiny model to see the template often enough.
: "${SHUFFLE_FRACTION:=0.1}" ; : "${SHAD_STEPS:=80}" ; : "${SHAD_LR:=1e-3}"
# step 3: RFT and the SFT baseline, same budget and seeds
: "${TRAIN_STEPS:=100}" ; : "${TRAIN_LR:=2e-3}" ; : "${TAU:=2.0}"
: "${EVAL_SAMPLES:=60}"                  # held-out samples for the report (teacher-forced + greedy tool calls)

LAUNCH=(deepspeed --hostfile "$HOSTFILE" --no_ssh_check --master_addr 127.0.0.1)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
run() { echo "+ rft-ds $*" >&2; "${LAUNCH[@]}" --master_port "$(port)" --module rft_ds "$@"; }
TRAIN=(--deepspeed "$DS_CONFIG" --micro-batch-size "$MICRO_BATCH" --max-seq-len "$MAX_SEQ_LEN" --overwrite)
start=$(date +%s)
mkdir -p "$OUT"

# (0) tiny base model: tokenizer trained on the data, random Llama, warmed on fresh tasks in another style
rft-ds tiny-model --data "$DATA/train.jsonl" --output "$OUT/init" --vocab-size "$VOCAB" \
  --hidden-size "$HIDDEN" --layers "$LAYERS" --heads "$HEADS"
rft-ds demo-data --output-dir "$OUT/pretrain" --n-train "$WARM_SAMPLES" --n-heldout 0 --seed 1
rft-ds demo-warmup-data --data "$OUT/pretrain/train.jsonl" --output "$OUT/warmup.jsonl"
run train --model "$OUT/init" --data "$OUT/warmup.jsonl" --output "$OUT/base" "${TRAIN[@]}" \
  --max-steps "$WARM_STEPS" --lr "$WARM_LR" --seed 0
# (1) SHAD: tune a copy of the base on shuffled pairs
run shad-train --model "$OUT/base/final" --data "$DATA/train.jsonl" --output "$OUT/shad" "${TRAIN[@]}" \
  --shuffle-fraction "$SHUFFLE_FRACTION" --max-steps "$SHAD_STEPS" --lr "$SHAD_LR" --seed 0
# (2) label every assistant token: LD = l_shad - l_base
#     both models whole on every rank (ZeRO stage 0): they fit, and nothing is all-gathered per layer
run label --base "$OUT/base/final" --shad "$OUT/shad/final" --data "$DATA/train.jsonl" \
  --output "$OUT/masks.jsonl" --batch-size 16 --max-seq-len "$MAX_SEQ_LEN" --overwrite --deepspeed "$LABEL_DS_CONFIG"
[[ "${STOP_AFTER:-}" == label ]] && { echo "demo: stopped after labeling (STOP_AFTER=label): $OUT/masks.jsonl"; exit 0; }
# (3) RFT and the SFT baseline (SFT gets the masks only to log per-class losses)
for seed in $SEEDS; do
  for loss in rft sft; do
    run train --model "$OUT/base/final" --data "$DATA/train.jsonl" --output "$OUT/$loss-seed$seed" "${TRAIN[@]}" \
      --loss "$loss" --masks "$OUT/masks.jsonl" --tau "$TAU" --max-steps "$TRAIN_STEPS" --lr "$TRAIN_LR" --seed "$seed"
  done
done
# (4) the report: SHAD vs the true roles, SFT vs RFT on held-out data, curves, mask viewer
rft-ds demo-report --demo-dir "$OUT" --data-dir "$DATA" --seeds $SEEDS --max-samples "$EVAL_SAMPLES"
echo "demo finished in $(( $(date +%s) - start )) s: $OUT/report.md, $OUT/curves.png, $OUT/masks.html"
