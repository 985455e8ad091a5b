#!/usr/bin/env bash
# Submits gpu_scripts/slurm_multinode.sbatch: N nodes x G GPUs, one JAX process per GPU (default)
# or per node, train.py on all of them. Run it from anywhere on the cluster's login node.
#
# Usage: gpu_scripts/submit.sh --config configs/X.py --workdir /shared/DIR [options]
#            [-- --config.a.b=v ...]
#
# Flags (environment variable in brackets):
#   --config FILE            Config file, relative to the repository root [CASCADEJAX_CONFIG] (required)
#   --workdir DIR            train.py --workdir, shared by all nodes [CASCADEJAX_WORKDIR]     (required)
#   --nodes N                Nodes (default 2) [CASCADEJAX_NODES]
#   --gpus-per-node G        GPUs per node (default 8) [CASCADEJAX_GPUS_PER_NODE]
#   --process-per gpu|node   One JAX process per GPU (default; what jax.distributed.initialize
#                            assumes under SLURM) or one per node driving all its GPUs
#   --cpus-per-gpu C         CPU cores per GPU for the input pipeline (default 8)
#   --time T                 Time limit, e.g. 04:00:00 (default 01:00:00)
#   --partition P            SLURM partition (default: the cluster's)
#   --account A              SLURM account (default: yours)
#   --job-name NAME          Job name (default cascadejax)
#   --output PATTERN         Job log, %j = job id (default: ~/cascadejax-logs/cascadejax-%j.out)
#   --venv DIR               Virtual environment (default: $CASCADEJAX_VENV or ~/cascadejax-venv)
#   --env KEY=VALUE          Extra environment variable for train.py (repeatable)
#   --sbatch-arg ARG         Extra sbatch argument, e.g. --sbatch-arg=--exclusive (repeatable)
#   --dry-run                Print the sbatch command instead of submitting
#   -h, --help               This text
# Arguments after `--` go to train.py.
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../tpu_scripts/common.sh"

CONFIG=${CASCADEJAX_CONFIG:-}
WORKDIR=${CASCADEJAX_WORKDIR:-}
NODES=${CASCADEJAX_NODES:-2}
GPUS=${CASCADEJAX_GPUS_PER_NODE:-8}
PROCESS_PER=gpu
CPUS_PER_GPU=8
TIME=01:00:00
PARTITION=""
ACCOUNT=""
JOB_NAME=cascadejax
OUTPUT="$HOME/cascadejax-logs/cascadejax-%j.out"
VENV=${CASCADEJAX_VENV:-$HOME/cascadejax-venv}
ENVS=()
SBATCH_ARGS=()
TRAIN_ARGS=()

split_equals "$@"
set -- "${CJ_ARGS[@]}"
while (($#)); do
  case "$1" in
    --config) need_value "$@"; CONFIG=$2; shift 2 ;;
    --workdir) need_value "$@"; WORKDIR=$2; shift 2 ;;
    --nodes) need_value "$@"; NODES=$2; shift 2 ;;
    --gpus-per-node) need_value "$@"; GPUS=$2; shift 2 ;;
    --process-per) need_value "$@"; PROCESS_PER=$2; shift 2 ;;
    --cpus-per-gpu) need_value "$@"; CPUS_PER_GPU=$2; shift 2 ;;
    --time) need_value "$@"; TIME=$2; shift 2 ;;
    --partition) need_value "$@"; PARTITION=$2; shift 2 ;;
    --account) need_value "$@"; ACCOUNT=$2; shift 2 ;;
    --job-name) need_value "$@"; JOB_NAME=$2; shift 2 ;;
    --output) need_value "$@"; OUTPUT=$2; shift 2 ;;
    --venv) need_value "$@"; VENV=$2; shift 2 ;;
    --env) need_value "$@"; check_env_pair "$2"; ENVS+=("$2"); shift 2 ;;
    --sbatch-arg) (($# >= 2)) || usage_error "flag $1 needs a value"; SBATCH_ARGS+=("$2"); shift 2 ;;
    --dry-run) CJ_DRY_RUN=1; shift ;;
    -h | --help) print_usage; exit 0 ;;
    --) shift; TRAIN_ARGS=("$@"); break ;;
    *) usage_error "unknown argument: $1 (arguments for train.py go after --)" ;;
  esac
done

require "$CONFIG" --config CASCADEJAX_CONFIG
require "$WORKDIR" --workdir CASCADEJAX_WORKDIR
check_int "$NODES" --nodes
check_int "$GPUS" --gpus-per-node
check_int "$CPUS_PER_GPU" --cpus-per-gpu
((NODES > 0 && GPUS > 0)) || usage_error "--nodes and --gpus-per-node must be positive"
case "$PROCESS_PER" in
  gpu) tasks_per_node=$GPUS; cpus_per_task=$CPUS_PER_GPU ;;
  node) tasks_per_node=1; cpus_per_task=$((CPUS_PER_GPU * GPUS)) ;;
  *) usage_error "--process-per must be gpu or node, got '$PROCESS_PER'" ;;
esac
[[ -f $CJ_REPO_ROOT/$CONFIG || -f $CONFIG ]] || usage_error "--config $CONFIG: no such file"

job=(sbatch --parsable "--chdir=$CJ_REPO_ROOT" "--job-name=$JOB_NAME" "--nodes=$NODES"
  "--ntasks-per-node=$tasks_per_node" "--gpus-per-node=$GPUS" "--cpus-per-task=$cpus_per_task"
  "--time=$TIME" "--output=$OUTPUT")
if [[ -n $PARTITION ]]; then job+=("--partition=$PARTITION"); fi
if [[ -n $ACCOUNT ]]; then job+=("--account=$ACCOUNT"); fi
job+=("${SBATCH_ARGS[@]}" "$CJ_REPO_ROOT/gpu_scripts/slurm_multinode.sbatch"
  --process-per "$PROCESS_PER" --config "$CONFIG" --workdir "$WORKDIR" --venv "$VENV")
for pair in "${ENVS[@]}"; do job+=(--env "$pair"); done
job+=(-- "${TRAIN_ARGS[@]}")

run mkdir -p "$(dirname "$OUTPUT")"
if ((CJ_DRY_RUN)); then
  run "${job[@]}"
  exit 0
fi
job_id=$(run "${job[@]}")
job_id=${job_id%%;*}  # --parsable prints "id" or "id;cluster"
log "submitted job $job_id: $NODES nodes x $GPUS GPUs, one process per $PROCESS_PER"
log "follow it with: tail -F $(quote_word "${OUTPUT//%j/$job_id}")   cancel it with: scancel $job_id"
printf '%s\n' "$job_id"
