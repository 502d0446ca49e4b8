#!/usr/bin/env bash
# All benchmarks (not tests): each figure is a ratio measured side by side in this one run.
# Prints one table of figures vs targets and writes bench/results.json. See BENCHMARKS.md.
#
#   bash bench/run_all.sh                      # cpu profile: demo-sized tiny Llama, fp32, 2 CPU ranks
#   BENCH_PROFILE=gpu bash bench/run_all.sh    # larger Llama, bf16, 2 GPUs; adds tokens/s and MFU
#   BENCH_FIXES=1 bash bench/run_all.sh        # also time `rft-ds label` with the proposed fixes
#   BENCH_REAL=0 bash bench/run_all.sh         # without figure 9 (SmolLM2-135M, about 25 min on 2 cores)
# Sizes: BENCH_<KEY> overrides any key of bench/common.py's profile (e.g. BENCH_ROUNDS=3,
# BENCH_NPROC=2, BENCH_TRAIN_STEPS=40); BENCH_PEAK_TFLOPS sets the peak used for MFU.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$ROOT/.venv/bin/python}
export PATH="$(dirname "$PY"):$PATH"
export TOKENIZERS_PARALLELISM=false
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$ROOT/.venv/torch_extensions}"
start=$(date +%s)
rm -f bench/results.json
WORK="${BENCH_WORK:-$ROOT/outputs/bench}"
mkdir -p "$WORK"
LOG="$WORK/run_all.stderr"
: >"$LOG"
run() { "$PY" "$@" 2>>"$LOG" || { echo "[bench] FAILED: $*  (stderr: $LOG)"; tail -n 40 "$LOG"; exit 1; }; }

echo "[bench] setup: tiny models (cached in $WORK), DeepSpeed ops; stderr of everything: $LOG"
run bench/setup.py >/dev/null
run bench/fig4_padding.py
run bench/fig1_rft_overhead.py --with-hf       # sft, rft, hf arms interleaved
run bench/fig2_engine_vs_hf.py --reuse         # figure 2 from the same launches
run bench/fig3_label_floor.py ${BENCH_FIXES:+--fixes}
run bench/fig6_label_scaling.py --reuse        # the 4x point from figure 3's runs
run bench/fig5_memory.py
run bench/fig7_loss_memory.py                   # token-loss peak memory vs the one-chunk floor (~4 min)
[[ "${BENCH_REAL:-1}" == 1 && "${BENCH_PROFILE:-cpu}" == cpu ]] && run bench/fig9_real_model.py  # SmolLM2 vs the GEMM ceiling and peers (~25 min)
run bench/report.py --elapsed $(( $(date +%s) - start ))
