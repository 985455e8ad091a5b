#!/usr/bin/env bash
# Follows a run's logs on the TPU VM workers (each line prefixed "[worker I] ") until the run ends,
# then exits with a non-zero status if it failed on any worker. Useful after launch.sh --detach,
# or to look at a run again after launch.sh was interrupted.
#
# Usage: tpu_scripts/logs.sh --name NAME --zone ZONE --project PROJECT [--run-name RUN]
#            [--worker all|I] [--lines N]
#
# Flags (environment variable in brackets):
#   --name NAME          TPU VM name [TPU_NAME]                                  (required)
#   --zone ZONE          [ZONE]                                                  (required)
#   --project PROJECT    [PROJECT_ID]                                            (required)
#   --run-name RUN       Which run (default: the latest one started on each worker)
#   --worker W           all (default), one worker number, or a list such as 0,3
#   --lines N            Start from the last N lines of each log (default: the whole log)
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
WORKER=all
LINES=""
REMOTE_DIR=cascadejax
INTERNAL_IP=0

split_equals "$@"
set -- "${CJ_ARGS[@]}"
while (($#)); do
  if location_flag "$@"; then shift 2; continue; fi
  case "$1" in
    --run-name) need_value "$@"; RUN_NAME=$2; shift 2 ;;
    --worker) need_value "$@"; WORKER=$2; shift 2 ;;
    --lines) need_value "$@"; check_int "$2" --lines; LINES=$2; shift 2 ;;
    --remote-dir) need_value "$@"; REMOTE_DIR=$2; shift 2 ;;
    --internal-ip) INTERNAL_IP=1; shift ;;
    --dry-run) CJ_DRY_RUN=1; shift ;;
    -h | --help) print_usage; exit 0 ;;
    *) usage_error "unknown argument: $1" ;;
  esac
done

require_location
[[ $WORKER =~ ^(all|[0-9]+([,-][0-9]+)*)$ ]] || usage_error "--worker must be all, a number or a list like 0,3"
warn_ssh_agent

attach=(bash "$REMOTE_DIR/tpu_scripts/worker_run.sh" --attach)
if [[ -n $RUN_NAME ]]; then attach+=(--run "$RUN_NAME"); fi
if [[ -n $LINES ]]; then attach+=(--lines "$LINES"); fi
tpu_ssh "$WORKER" "$(quote_cmd "${attach[@]}")"
