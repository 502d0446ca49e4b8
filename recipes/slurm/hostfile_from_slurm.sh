#!/usr/bin/env bash
# Write a DeepSpeed hostfile for the nodes of this SLURM allocation, one "host slots=N" line each,
# in SLURM's node order (the first node is the master).
#   bash recipes/slurm/hostfile_from_slurm.sh OUT_FILE [SLOTS]
# SLOTS (GPUs per node): the argument, else $SLOTS, else SLURM_GPUS_ON_NODE, else 8.
set -euo pipefail
out="${1:?usage: hostfile_from_slurm.sh OUT_FILE [SLOTS]}"
slots="${2:-${SLOTS:-${SLURM_GPUS_ON_NODE:-8}}}"
: "${SLURM_JOB_NODELIST:?not inside a SLURM allocation (SLURM_JOB_NODELIST is unset)}"
[[ "$slots" =~ ^[0-9]+$ ]] || { echo "hostfile_from_slurm.sh: slots must be a number, got '$slots'" >&2; exit 2; }
mkdir -p "$(dirname "$out")"
tmp="$(mktemp "$out.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
scontrol show hostnames "$SLURM_JOB_NODELIST" | awk -v s="$slots" 'NF {print $1 " slots=" s}' > "$tmp"
[[ -s "$tmp" ]] || { echo "hostfile_from_slurm.sh: scontrol listed no hosts for '$SLURM_JOB_NODELIST'" >&2; exit 1; }
chmod 644 "$tmp"
mv "$tmp" "$out"
