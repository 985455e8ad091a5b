#!/usr/bin/env bash
# Launches train.py on every host of a TPU VM slice at once and streams the logs, each line
# prefixed "[worker I] ". Exits non-zero if the run fails on any worker.
#
# Usage: tpu_scripts/launch.sh --name NAME --zone ZONE --project PROJECT
#            --config configs/X.py --workdir gs://BUCKET/DIR [options] [-- --config.a.b=v ...]
#
# Flags (environment variable in brackets):
#   --name NAME          TPU VM name [TPU_NAME]                                       (required)
#   --zone ZONE          [ZONE]                                                       (required)
#   --project PROJECT    [PROJECT_ID]                                                 (required)
#   --config FILE        Config file, relative to the checkout [CASCADEJAX_CONFIG]    (required)
#   --workdir DIR        train.py --workdir [CASCADEJAX_WORKDIR]                      (required)
#                        Use a gs:// path: every host must see the same checkpoints, and the
#                        VMs' disks go away with teardown.sh
#   --run-name NAME      Name of this run on the workers (default: date-time); logs are kept in
#                        ~/cascadejax-runs/NAME/log on each worker
#   --env KEY=VALUE      Extra environment variable for train.py (repeatable)
#   --detach             Start the run and return; follow it with logs.sh, stop it with stop.sh
#   --kill-previous      Stop a run still going on the workers first (it holds the TPU chips)
#   --remote-dir DIR     Checkout on the workers (default: cascadejax)
#   --venv DIR           Virtual environment on the workers (default: cascadejax-venv)
#   --internal-ip        Reach the workers by internal IP
#   --dry-run            Print the gcloud command instead of running it
#   -h, --help           This text
# Arguments after `--` go to train.py (config overrides such as --config.train.steps=1000).
#
# Every worker runs, from the checkout:
#   CASCADEJAX_DISTRIBUTED=1 PYTHONUNBUFFERED=1 python train.py --config FILE --workdir DIR ...
# CASCADEJAX_DISTRIBUTED=1 tells train.py to call jax.distributed.initialize(), which finds the
# other hosts from the TPU VM metadata. The run goes on if this script is interrupted (Ctrl-C
# stops following, not training): stop it with stop.sh.
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TPU_NAME=${TPU_NAME:-}
ZONE=${ZONE:-}
PROJECT_ID=${PROJECT_ID:-}
CONFIG=${CASCADEJAX_CONFIG:-}
WORKDIR=${CASCADEJAX_WORKDIR:-}
RUN_NAME=""
ENVS=()
DETACH=0
KILL_PREVIOUS=0
REMOTE_DIR=cascadejax
VENV=cascadejax-venv
INTERNAL_IP=0
TRAIN_ARGS=()

split_equals "$@"
set -- "${CJ_ARGS[@]}"
while (($#)); do
  if location_flag "$@"; then shift 2; continue; fi
  case "$1" in
    --config) need_value "$@"; CONFIG=$2; shift 2 ;;
    --workdir) need_value "$@"; WORKDIR=$2; shift 2 ;;
    --run-name) need_value "$@"; RUN_NAME=$2; shift 2 ;;
    --env) need_value "$@"; check_env_pair "$2"; ENVS+=("$2"); shift 2 ;;
    --detach) DETACH=1; shift ;;
    --kill-previous) KILL_PREVIOUS=1; shift ;;
    --remote-dir) need_value "$@"; REMOTE_DIR=$2; shift 2 ;;
    --venv) need_value "$@"; VENV=$2; shift 2 ;;
    --internal-ip) INTERNAL_IP=1; shift ;;
    --dry-run) CJ_DRY_RUN=1; shift ;;
    -h | --help) print_usage; exit 0 ;;
    --) shift; TRAIN_ARGS=("$@"); break ;;
    *) usage_error "unknown argument: $1 (arguments for train.py go after --)" ;;
  esac
done

require_location
require "$CONFIG" --config CASCADEJAX_CONFIG
require "$WORKDIR" --workdir CASCADEJAX_WORKDIR
# One name for every worker, chosen here (the workers' clocks could straddle a second).
[[ -n $RUN_NAME ]] || RUN_NAME=$(date +%Y%m%d-%H%M%S)
[[ $RUN_NAME =~ ^[A-Za-z0-9._-]+$ ]] || usage_error "--run-name must be letters, digits, '.', '_' or '-'"
if [[ ! -f $CJ_REPO_ROOT/$CONFIG ]]; then
  log "warning: no $CONFIG in this checkout; it must exist in the workers' checkout"
fi
if [[ $WORKDIR != gs://* ]]; then
  log "note: --workdir $WORKDIR is on each worker's own disk; a multi-host run needs a shared path (gs://...)"
fi
warn_ssh_agent

worker=(bash "$REMOTE_DIR/tpu_scripts/worker_run.sh" --repo-dir "$REMOTE_DIR" --venv "$VENV" --run "$RUN_NAME")
for pair in "${ENVS[@]}"; do worker+=(--env "$pair"); done
if ((DETACH)); then worker+=(--detach); fi
if ((KILL_PREVIOUS)); then worker+=(--kill-previous); fi
worker+=(-- python train.py --config "$CONFIG" --workdir "$WORKDIR" "${TRAIN_ARGS[@]}")

log "run $RUN_NAME on every worker of $TPU_NAME"
status=0
tpu_ssh all "$(quote_cmd "${worker[@]}")" || status=$?
if ((status)); then
  log "run $RUN_NAME failed on at least one worker (gcloud exit status $status); see the lines above," \
    "or tpu_scripts/logs.sh --run-name $RUN_NAME"
  exit "$status"
fi
if ((DETACH && !CJ_DRY_RUN)); then
  log "run $RUN_NAME started; follow it with: tpu_scripts/logs.sh --name $TPU_NAME --zone $ZONE --project $PROJECT_ID"
fi
