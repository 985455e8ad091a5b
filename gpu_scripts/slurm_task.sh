#!/usr/bin/env bash
# Runs one task of a SLURM job step (srun starts it once per task) after choosing which GPUs its
# JAX process drives, then replaces itself with the command.
#
# Usage: gpu_scripts/slurm_task.sh [--process-per gpu|node] [--dry-run] -- COMMAND...
#
# jax.distributed.initialize() reads the SLURM_* variables of the step (SLURM_NTASKS,
# SLURM_PROCID, SLURM_LOCALID, SLURM_STEP_NODELIST) and, on GPUs, restricts each process to
# the GPU numbered SLURM_LOCALID among those it can see, unless JAX_LOCAL_DEVICE_IDS says
# otherwise. This script sets JAX_LOCAL_DEVICE_IDS (if not already set) so that:
#   --process-per gpu (default): each task drives one GPU. If SLURM already hid the others
#       (CUDA_VISIBLE_DEVICES holds a single GPU, as with --gpus-per-task=1 or --gpu-bind),
#       that GPU is number 0, not SLURM_LOCALID: JAX_LOCAL_DEVICE_IDS=0. If the task sees all
#       of the node's GPUs, JAX's own choice (SLURM_LOCALID) is kept.
#   --process-per node: the one task on the node drives every GPU it sees:
#       JAX_LOCAL_DEVICE_IDS=0,1,...,n-1.
# Flags:
#   --process-per gpu|node   See above (default gpu)
#   --dry-run                Print the environment and command instead of running it
#   -h, --help               This text
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../tpu_scripts/common.sh"

PROCESS_PER=gpu
COMMAND=()

split_equals "$@"
set -- "${CJ_ARGS[@]}"
while (($#)); do
  case "$1" in
    --process-per) need_value "$@"; PROCESS_PER=$2; shift 2 ;;
    --dry-run) CJ_DRY_RUN=1; shift ;;
    -h | --help) print_usage; exit 0 ;;
    --) shift; COMMAND=("$@"); break ;;
    *) usage_error "unknown argument: $1" ;;
  esac
done
[[ $PROCESS_PER == gpu || $PROCESS_PER == node ]] || usage_error "--process-per must be gpu or node"
((${#COMMAND[@]})) || usage_error "missing the command to run after --"

devices=()
if [[ -n ${CUDA_VISIBLE_DEVICES:-} ]]; then
  IFS=, read -r -a devices <<<"$CUDA_VISIBLE_DEVICES"
fi
if [[ -z ${JAX_LOCAL_DEVICE_IDS:-} ]] && ((${#devices[@]})); then
  if [[ $PROCESS_PER == node ]]; then
    ids=$(seq -s, 0 $((${#devices[@]} - 1)))
    export JAX_LOCAL_DEVICE_IDS=$ids
  elif ((${#devices[@]} == 1)); then
    export JAX_LOCAL_DEVICE_IDS=0
  fi
fi

if ((CJ_DRY_RUN)); then
  if [[ -n ${JAX_LOCAL_DEVICE_IDS:-} ]]; then
    printf '%s\n' "$(quote_cmd export "JAX_LOCAL_DEVICE_IDS=$JAX_LOCAL_DEVICE_IDS")"
  fi
  printf '%s\n' "$(quote_cmd exec "${COMMAND[@]}")"
  exit 0
fi
exec "${COMMAND[@]}"
