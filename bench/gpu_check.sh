#!/usr/bin/env bash
# One prepared GPU check (<= 5 min on one modern GPU; no network): real NCCL, bf16, ZeRO-3 with every
# parameter partitioned, small --logits-chunk (lockstep head calls), on world size 1 and, with 2+ GPUs,
# 2. Prints PASS/FAIL per check and tokens/s; exits non-zero if any check failed.
#
#   bash bench/gpu_check.sh            # MODEL: SmolLM2 at .venv/models/smollm2-135m if present, else a tiny Llama
#   MODEL=/path/to/hf-model bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$ROOT/.venv/bin/python}
export PATH="$(dirname "$PY"):$PATH" TOKENIZERS_PARALLELISM=false
OUT=${OUT:-outputs/gpu_check}
rm -rf "$OUT"; mkdir -p "$OUT"
NGPU=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
[[ "$NGPU" -ge 1 ]] || { echo "FAIL no CUDA GPU visible (torch.cuda.device_count() = 0)"; exit 1; }
DATA="$OUT/train.jsonl"; head -n 64 data/demo/train.jsonl > "$DATA"
if [[ -z "${MODEL:-}" ]]; then
  if [[ -f .venv/models/smollm2-135m/config.json ]]; then MODEL=.venv/models/smollm2-135m
  else rft-ds tiny-model --data "$DATA" --output "$OUT/tiny" --vocab-size 1000 --hidden-size 256 --layers 4 --heads 4 >/dev/null
       MODEL="$OUT/tiny"; fi
fi
ATTN=sdpa; "$PY" -c 'import flash_attn' 2>/dev/null && ATTN=flash_attention_2
"$PY" - "$OUT/z3.json" <<'EOF'
import json, sys
cfg = json.load(open("ds_configs/zero3.json"))
cfg["zero_optimization"].update(stage3_param_persistence_threshold=0)
json.dump(cfg, open(sys.argv[1], "w"))
EOF
echo "gpu_check: $NGPU GPU(s) ($("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))')), model $MODEL, attention $ATTN"
fails=0
check() {  # check NAME LOGFILE CMD...: PASS/FAIL with the throughput line of the log
  local name=$1 log=$2; shift 2
  local t0=$(date +%s)
  if timeout 240 "$@" >"$log" 2>&1; then
    local rate; rate=$(grep -Eo '[0-9.]+ tokens/s' "$log" | tail -1)
    echo "PASS $name ($(( $(date +%s) - t0 )) s${rate:+, $rate})"
  else
    echo "FAIL $name (see $log):"; grep -E "Error|error|FAIL" "$log" | tail -5; fails=$((fails + 1))
  fi
}
port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
COMMON=(--deepspeed "$OUT/z3.json" --precision bf16 --attn-implementation "$ATTN" --logits-chunk 64 --max-seq-len 512)
for W in 1 2; do
  [[ $W -le $NGPU ]] || { echo "SKIP world size $W (only $NGPU GPU)"; continue; }
  L=(deepspeed --num_gpus "$W" --master_port)
  check "train sft bf16 W=$W" "$OUT/sft-$W.log" "${L[@]}" "$(port)" --module rft_ds train --model "$MODEL" \
    --data "$DATA" --output "$OUT/sft-$W" "${COMMON[@]}" --micro-batch-size 2 --max-steps 4 --lr 1e-5 --overwrite
  check "label bf16 W=$W" "$OUT/label-$W.log" "${L[@]}" "$(port)" --module rft_ds label --base "$MODEL" \
    --shad "$OUT/sft-$W/final" --data "$DATA" --output "$OUT/masks-$W.jsonl" --deepspeed "$OUT/z3.json" \
    --precision bf16 --attn-implementation "$ATTN" --logits-chunk 64 --max-seq-len 512 --batch-size 3 --overwrite
  for G in sample batch; do
    check "train rft-$G bf16 W=$W" "$OUT/rft-$G-$W.log" "${L[@]}" "$(port)" --module rft_ds train --model "$MODEL" \
      --data "$DATA" --output "$OUT/rft-$G-$W" "${COMMON[@]}" --micro-batch-size 2 --max-steps 4 --lr 1e-5 \
      --loss rft --masks "$OUT/masks-$W.jsonl" --rft-granularity "$G" --overwrite
  done
  for f in "$OUT"/sft-$W/metrics.jsonl; do
    [[ -f $f ]] && "$PY" -c "import json,sys; r=[json.loads(l) for l in open('$f')]; print(f'      sft W=$W: loss {r[0][\"loss\"]:.4f} -> {r[-1][\"loss\"]:.4f}, {sum(x[\"tokens\"] for x in r)/r[-1][\"elapsed_s\"]:.0f} tokens/s over the run')"
  done
done
[[ $fails -eq 0 ]] && echo "gpu_check: all checks passed" || echo "gpu_check: $fails check(s) failed"
exit $(( fails > 0 ))
