# recipes/common.sh: what every pass script shares. `source "$(dirname "$0")/common.sh" "$@"` at the
# top of recipes/<pass>.sh. It
#   1. stops at the first error, loads the model's variables from recipes/models/<name>.env (the
#      first argument, or RECIPE_MODEL; a path to an .env file works too) and moves to the
#      repository root (relative paths are relative to it; the pdsh launcher runs `cd <this
#      directory>` on every node, so the repository must sit at the same path on every node);
#   2. builds LAUNCH_ARGS (launcher flags), STEPS (--epochs or --max-steps) and CKPT (--grad-ckpt
#      when GRAD_CKPT=1) from the variables;
#   3. sets NCCL defaults and writes the environment that must reach every node (.deepspeed_env).
# Every variable can be set in the environment, and wins over the model file and the pass script:
# `MASTER_PORT=29600 bash recipes/3_rft.sh llama3-8b`.
set -euo pipefail

RFT_DS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_rft_ds_caller_dir="$PWD"

# ---- the model's variables ------------------------------------------------------------------
RECIPE_MODEL="${1:-${RECIPE_MODEL:-}}"
[[ -n "$RECIPE_MODEL" ]] || { echo "usage: bash $0 MODEL  (MODEL: $(cd "$RFT_DS_ROOT/recipes/models" && \
  ls *.env | sed 's/\.env$//' | paste -sd' '), or a path to an .env file; or set RECIPE_MODEL)" >&2; exit 2; }
if [[ "$RECIPE_MODEL" == */* || "$RECIPE_MODEL" == *.env ]]; then _rft_ds_model_env="$RECIPE_MODEL"
else _rft_ds_model_env="$RFT_DS_ROOT/recipes/models/$RECIPE_MODEL.env"; fi
[[ -f "$_rft_ds_model_env" ]] || { echo "rft-ds recipe: model file $_rft_ds_model_env not found" \
  "(recipes/models/ has: $(cd "$RFT_DS_ROOT/recipes/models" && ls *.env | paste -sd' '))" >&2; exit 2; }
source "$_rft_ds_model_env"
cd "$RFT_DS_ROOT"

# ---- launcher -------------------------------------------------------------------------------
: "${HOSTFILE:?set HOSTFILE (one \"host slots=N\" line per node; see docs/multi-node.md)}"
: "${MASTER_ADDR:=}"         # address of the first node as the others see it; empty: the launcher
                             # asks the first host over ssh (`hostname -I`)
: "${MASTER_PORT:=29500}"    # a free TCP port on the master; two jobs on one node need two ports
: "${LAUNCH_EXTRA:=}"        # more launcher flags, e.g. --include "node-01@node-02", --exclude ...,
                             # --no_ssh --node_rank N (one launcher per node: SLURM, no ssh),
                             # --no_ssh_check (a one-host hostfile such as hostfiles/localhost)
: "${EXTRA_ARGS:=}"          # more rft-ds flags appended by the recipe: "--lora-rank 16", "--resume"
[[ -f "$HOSTFILE" ]] || { echo "rft-ds recipe: hostfile $HOSTFILE not found" >&2; exit 2; }

LAUNCH_ARGS=(--master_port "$MASTER_PORT")
[[ -n "$MASTER_ADDR" ]] && LAUNCH_ARGS+=(--master_addr "$MASTER_ADDR")
read -r -a _rft_ds_words <<< "$LAUNCH_EXTRA"
LAUNCH_ARGS+=(${_rft_ds_words[@]+"${_rft_ds_words[@]}"})
read -r -a EXTRA <<< "$EXTRA_ARGS"
EXTRA=(${EXTRA[@]+"${EXTRA[@]}"})

# Training length: MAX_STEPS wins when set, else EPOCHS.
if [[ -n "${MAX_STEPS:-}" ]]; then STEPS=(--max-steps "$MAX_STEPS"); else STEPS=(--epochs "${EPOCHS:-1}"); fi
CKPT=(); [[ "${GRAD_CKPT:-0}" == 1 ]] && CKPT=(--grad-ckpt)

# The `deepspeed` of this checkout's venv when none is on PATH (`make install` makes .venv). The
# launcher starts the ranks of every node with ITS OWN python (sys.executable, an absolute path):
# the same environment must exist at the same path on every node.
if ! command -v deepspeed >/dev/null && [[ -x "$RFT_DS_ROOT/.venv/bin/deepspeed" ]]; then
  export PATH="$RFT_DS_ROOT/.venv/bin:$PATH"
fi

# ---- NCCL and friends (GPU clusters; ignored on CPU). NCCL_* reach every node by themselves. ---
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"             # INFO to see the rings/transports NCCL picked
# export NCCL_SOCKET_IFNAME=eth0                    # the interface nodes reach each other on
# export NCCL_IB_HCA=mlx5                           # InfiniBand adapters; NCCL_IB_DISABLE=1: TCP only
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"

# ---- environment for every node: .deepspeed_env ----------------------------------------------
# The pdsh launcher starts the ranks over ssh in a fresh login environment and passes on only
# NCCL*, PYTHON*, UCX*, MV2*, MLFLOW* variables plus the KEY=VALUE lines of a `.deepspeed_env`
# file; HF_HOME, WANDB_*, TRANSFORMERS_* would otherwise be missing on the other nodes. DeepSpeed
# (deepspeed/launcher/runner.py) reads ~/.deepspeed_env and then ./.deepspeed_env, the name coming
# from DS_ENV_FILE. We write one file per launch and point DS_ENV_FILE at it by ABSOLUTE path
# (os.path.join then yields that path for both lookups), so the lines of the user's own
# ~/.deepspeed_env and ./.deepspeed_env are copied in first. Only the launching node reads it.
# DS_ENV_FORWARD: names to forward; a trailing "_" means every variable starting with it.
: "${DS_ENV_FORWARD:=HF_ HUGGINGFACE_ TRANSFORMERS_ DATASETS_ WANDB_ TOKENIZERS_ TORCH_ PYTORCH_ TRITON_ GLOO_ CUDA_HOME LD_LIBRARY_PATH PATH RFT_DS_}"
_rft_ds_env_file="$(mktemp "${TMPDIR:-/tmp}/rft-ds-env.XXXXXX")"   # 0600: may hold tokens
trap 'rm -f "$_rft_ds_env_file"' EXIT
for _f in "$HOME/.deepspeed_env" "$_rft_ds_caller_dir/.deepspeed_env"; do
  [[ -f "$_f" ]] && grep -E '^[A-Za-z_][A-Za-z0-9_]*=' "$_f" >> "$_rft_ds_env_file" || true
done
_rft_ds_sent=()
for _name in $(compgen -e | LC_ALL=C sort); do
  for _pat in $DS_ENV_FORWARD; do
    if [[ "$_name" == "$_pat" || ( "$_pat" == *_ && "$_name" == "$_pat"* ) ]]; then
      _val="${!_name}"
      # The launcher puts each value inside "..." in the remote shell command: skip what a shell
      # would expand there rather than send something else than what is set here.
      if [[ "$_val" == *[\"\$\`\\]* || "$_val" == *$'\n'* ]]; then
        echo "rft-ds recipe: not forwarding $_name to other nodes (its value holds \", \$, \` or \\)" >&2
      else
        printf '%s=%s\n' "$_name" "$_val" >> "$_rft_ds_env_file"
        _rft_ds_sent+=("$_name")
      fi
      break
    fi
  done
done
export DS_ENV_FILE="$_rft_ds_env_file"
echo "rft-ds recipe: hosts from $HOSTFILE: $(grep -Ev '^\s*(#|$)' "$HOSTFILE" | awk '{printf "%s%s", sep, $0; sep=", "}');" \
     "forwarding to every node: ${_rft_ds_sent[*]:-nothing}" >&2
unset _f _name _pat _val _rft_ds_words _rft_ds_model_env
