#!/usr/bin/env bash
# The paper's comparison (its Table 2) on one engine: SFT, SHAD+RFT, SHAD + fixed weights, Regex+RFT,
# Rho-1 and DFT, each trained with the demo's RFT/SFT budget on the same training subset, per seed, then
# `rft-ds compare-report` measures every run on the held-out split (docs/losses.md, "Comparing the
# losses"). Every budget is a variable below; override any from the environment. A run whose final/
# exists is kept (an interrupted comparison resumes); FORCE=1 trains every run again (the SHAD masks are
# made only when MASKS is missing: delete $OUT/demo to remake them). MODEL_KIND=tiny:
# a tiny random Llama (`rft-ds tiny-model`, as recipes/demo/run_tiny.sh builds it, without its warm-up)
# and tiny budgets: the wiring in about 4 min, not a measurement. The SmolLM2 default (6 variants x 2
# seeds) is estimated at about 70 min on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/../.."

: "${OUT:=outputs/compare}"                    # the runs <variant>-seed<S>/, compare.md, compare.json
: "${DATA:=data/demo}"                         # train.jsonl, heldout.jsonl, roles.jsonl
: "${MODEL_KIND:=smollm2}"                     # smollm2 | tiny
if [[ "$MODEL_KIND" == tiny ]]; then           # tiny budgets (each still overridable)
  : "${MODEL:=$OUT/tiny-base}" ; : "${VOCAB:=1000}" ; : "${HIDDEN:=128}" ; : "${LAYERS:=2}" ; : "${HEADS:=4}"
  : "${SEEDS:=0}" ; : "${TRAIN_SAMPLES:=16}" ; : "${TRAIN_STEPS:=3}" ; : "${TRAIN_MICRO_BATCH:=2}"
  : "${EVAL_SAMPLES:=6}" ; : "${MAX_NEW_TOKENS:=16}"
  : "${SHAD_STEPS:=3}" ; : "${LABEL_RANKS:=1}" ; export SHAD_STEPS LABEL_RANKS  # for recipes/demo/run.sh
fi
# the base model: by default SmolLM2-135M, as in the demo (`rft-ds fetch-model`, instant once there)
if [[ -z "${MODEL:-}" ]]; then MODEL=.venv/models/smollm2-135m; : "${FETCH_MODEL=smollm2-135m}"; fi
: "${FETCH_MODEL:=}"
: "${SEEDS:=0 1}"                              # every variant is trained once per seed
: "${VARIANTS:=sft rft weighted regex-rft rho1 dft}"  # table rows; sft before rho1 (its reference)
: "${RANKS:=1}" ; : "${HOSTFILE:=hostfiles/localhost}"  # 1 plain process; 2: deepspeed --hostfile
: "${DS_CONFIG:=ds_configs/zero2.json}" ; : "${PRECISION:=fp32}" ; : "${MAX_SEQ_LEN:=512}"
# the demo's RFT/SFT budget: 20 steps x 4 = one epoch of the first 80 training samples
: "${TRAIN_SAMPLES:=80}" ; : "${TRAIN_STEPS:=20}" ; : "${TRAIN_LR:=1e-4}" ; : "${TRAIN_MICRO_BATCH:=4}"
: "${TAU:=2.0}" ; : "${W_REASONING:=0.5}" ; : "${KEEP_RATIO:=0.6}"
# SHAD masks: reused when MASKS is a file (its train.jsonl beside it: e.g. outputs/demo/masks.jsonl of
# `make demo`), else made by `STOP_AFTER=label recipes/demo/run.sh` in $OUT/demo
: "${MASKS:=$OUT/demo/masks.jsonl}" ; : "${TRAIN_DATA:=$(dirname "$MASKS")/train.jsonl}"
: "${EVAL_SAMPLES:=40}" ; : "${MAX_NEW_TOKENS:=80}" ; : "${EVAL_BATCH:=16}"  # the demo report's held-out set
: "${FORCE:=0}"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
launch() {  # launch CMD ARGS...: one plain process, or `deepspeed --hostfile` with RANKS ranks
  echo "+ rft-ds $*" >&2
  if [[ "$RANKS" == 1 ]]; then rft-ds "$@"; else
    deepspeed --hostfile "$HOSTFILE" --no_ssh_check --master_addr 127.0.0.1 --master_port "$(port)" --module rft_ds "$@"
  fi
}
phase_start=$(date +%s)
phase() {  # phase NAME: the wall time since the previous phase, into $OUT/timings.tsv
  local now; now=$(date +%s)
  printf '%s\t%s\n' "$1" "$(( now - phase_start ))" >> "$OUT/timings.tsv"
  echo "compare: $1 took $(( now - phase_start )) s" >&2
  phase_start=$now
}
for v in $VARIANTS; do
  case "$v" in sft|rft|weighted|regex-rft|rho1|dft) ;;
    *) echo "compare: VARIANTS: unknown variant '$v' (sft rft weighted regex-rft rho1 dft)" >&2; exit 2 ;; esac
done
start=$(date +%s)
mkdir -p "$OUT" ; : > "$OUT/timings.tsv"

# (0) the base model and (1) the SHAD masks of the training subset, unless they are there
if [[ "$MODEL_KIND" == tiny && ! -f "$MODEL/config.json" ]]; then
  rft-ds tiny-model --data "$DATA/train.jsonl" --output "$MODEL" --vocab-size "$VOCAB" --hidden-size "$HIDDEN" \
    --layers "$LAYERS" --heads "$HEADS"
fi
[[ -n "$FETCH_MODEL" ]] && rft-ds fetch-model "$FETCH_MODEL" --output "$MODEL"
[[ -f "$MODEL/config.json" ]] || { echo "compare: $MODEL holds no model (config.json): \`make install\`, or set MODEL" >&2
                                   exit 2; }
if [[ ! -f "$MASKS" ]]; then
  [[ "$MASKS" == "$OUT/demo/masks.jsonl" ]] || { echo "compare: MASKS=$MASKS: no such file" >&2; exit 2; }
  OUT="$OUT/demo" DATA="$DATA" MODEL="$MODEL" FETCH_MODEL="" TRAIN_SAMPLES="$TRAIN_SAMPLES" \
    MAX_SEQ_LEN="$MAX_SEQ_LEN" PRECISION="$PRECISION" STOP_AFTER=label bash recipes/demo/run.sh
fi
phase shad-masks
# (2) the paper's Regex baseline: regex labels of the same samples, same schema
rft-ds label --method regex --base "$MODEL" --data "$TRAIN_DATA" --output "$OUT/regex-masks.jsonl" \
  --max-seq-len "$MAX_SEQ_LEN" --overwrite
phase regex-label
# (3) every variant, per seed, with the same data, budget and seed
for seed in $SEEDS; do
  for v in $VARIANTS; do
    run="$OUT/$v-seed$seed"
    if [[ -d "$run/final" && "$FORCE" != 1 ]]; then
      echo "compare: $run/final exists: kept (FORCE=1 retrains)" >&2; continue
    fi
    case "$v" in
      sft) LOSS=(--loss sft --masks "$MASKS") ;;            # masks only add per-class metrics
      rft) LOSS=(--loss rft --masks "$MASKS" --tau "$TAU") ;;
      weighted) LOSS=(--loss weighted --masks "$MASKS" --w-reasoning "$W_REASONING") ;;
      regex-rft) LOSS=(--loss rft --masks "$OUT/regex-masks.jsonl" --tau "$TAU") ;;
      # Rho-1's reference model is one trained on the target distribution: the SFT run of the same
      # seed is exactly that, at no extra training cost (so sft must come before rho1 in VARIANTS)
      rho1) [[ -d "$OUT/sft-seed$seed/final" ]] || { echo "compare: rho1 needs $OUT/sft-seed$seed/final:" \
              "list sft before rho1 in VARIANTS" >&2; exit 2; }
            LOSS=(--loss rho1 --reference "$OUT/sft-seed$seed/final" --keep-ratio "$KEEP_RATIO" --masks "$MASKS") ;;
      dft) LOSS=(--loss dft --masks "$MASKS") ;;
    esac
    launch train --model "$MODEL" --data "$TRAIN_DATA" --output "$run" --deepspeed "$DS_CONFIG" \
      --precision "$PRECISION" --max-seq-len "$MAX_SEQ_LEN" --micro-batch-size "$TRAIN_MICRO_BATCH" \
      --max-steps "$TRAIN_STEPS" --lr "$TRAIN_LR" --seed "$seed" --overwrite "${LOSS[@]}"
    phase "$v-seed$seed"
  done
done
# (4) the table: every run on the held-out split, mean ± std over seeds
SETTINGS=()
for x in MODEL MODEL_KIND RANKS DS_CONFIG PRECISION MAX_SEQ_LEN SEEDS MASKS TRAIN_SAMPLES TRAIN_STEPS TRAIN_LR \
         TRAIN_MICRO_BATCH TAU W_REASONING KEEP_RATIO EVAL_SAMPLES MAX_NEW_TOKENS; do SETTINGS+=(--setting "$x=${!x}"); done
# shellcheck disable=SC2086
rft-ds compare-report --compare-dir "$OUT" --data-dir "$DATA" --base "$MODEL" --variants $VARIANTS --seeds $SEEDS \
  --train-data "$TRAIN_DATA" --max-samples "$EVAL_SAMPLES" --max-new-tokens "$MAX_NEW_TOKENS" \
  --batch-size "$EVAL_BATCH" "${SETTINGS[@]}"
phase report
echo "compare finished in $(( $(date +%s) - start )) s: $OUT/compare.md, $OUT/compare.json"
