#!/usr/bin/env bash
# Stops a run on every TPU VM worker (TERM to its process group, KILL after 30 s). The slice
# itself keeps running (and billing): delete it with teardown.sh.
#
# Usage: tpu_scripts/stop.sh --name NAME --zone ZONE --project PROJECT [--run-name RUN]
#
# Flags (environment variable in brackets):
#   --name NAME          TPU VM name [TPU_NAME]                                  (required)
#   --zone ZONE          [ZONE]                                                  (required)
#   --project PROJECT    [PROJECT_ID]                                            (required)
#   --run-name RUN       Which run (default: the latest one started on each worker)
#   --remote-dir DIR     Checkout on the workers (default: cascadejax)
#   --internal-ip        Reach the workers by internal IP
#   --dry-run            Print the gcloud command instead of running it
#   -h, --help           This text
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TPU_NAME=${TPU_NAME:-}
ZONE=${ZONE:-}
PROJECT_ID=${PROJECT_ID:-}
RUN_NAME=""
REMOTE_DIR=cascadejax
INTERNAL_IP=0

split_equals "$@"
set -- "${CJ_ARGS[@]}"
while (($#)); do
  if location_flag "$@"; then shift 2; continue; fi
  case "$1" in
    --run-name) need_value "$@"; RUN_NAME=$2; shift 2 ;;
    --remote-dir) need_value "$@"; REMOTE_DIR=$2; shift 2 ;;
    --internal-ip) INTERNAL_IP=1; shift ;;
    --dry-run) CJ_DRY_RUN=1; shift ;;
    -h | --help) print_usage; exit 0 ;;
    *) usage_error "unknown argument: $1" ;;
  esac
done

require_location
warn_ssh_agent

stop=(bash "$REMOTE_DIR/tpu_scripts/worker_run.sh" --stop)
if [[ -n $RUN_NAME ]]; then stop+=(--run "$RUN_NAME"); fi
tpu_ssh all "$(quote_cmd "${stop[@]}")"
