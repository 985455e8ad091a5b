#!/usr/bin/env bash
# Creates a Cloud TPU VM slice (one VM per host) for cascadejax.
#
# Usage: tpu_scripts/create.sh --name NAME --zone ZONE --project PROJECT
#            --accelerator-type TYPE [options] [-- EXTRA_GCLOUD_FLAGS...]
#
# Flags (environment variable in brackets):
#   --name NAME               TPU VM name [TPU_NAME]                                  (required)
#   --zone ZONE               e.g. us-central2-b, europe-west4-b [ZONE]               (required)
#   --project PROJECT         Google Cloud project [PROJECT_ID]                       (required)
#   --accelerator-type TYPE   e.g. v4-32, v5litepod-16, v5p-32, v6e-16 [ACCELERATOR_TYPE] (required)
#   --runtime-version V       TPU software version [RUNTIME_VERSION]; default by generation:
#                             v6e v2-alpha-tpuv6e, v5p v2-alpha-tpuv5, v5e v2-alpha-tpuv5-lite,
#                             v2/v3/v4 tpu-ubuntu2204-base
#   --spot                    Spot capacity (cheaper, may be preempted at any time)
#   --preemptible             Preemptible TPU (tpu-vm create only; older form of --spot)
#   --queued                  Request through a queued resource (id = NAME) and wait until it is
#                             ACTIVE; delete it with teardown.sh --queued
#   --wait-timeout SECONDS    Give up waiting for a queued resource after this long (default 3600)
#   --dry-run                 Print the gcloud commands instead of running them
#   -h, --help                This text
# Anything after `--` is passed to `gcloud ... create` as is (e.g. --network=..., --labels=...).
#
# Cost warning: a TPU slice is billed from creation until it is deleted, whether it trains or
# not. Delete it with tpu_scripts/teardown.sh (or use run_all.sh, which tears down on exit).
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TPU_NAME=${TPU_NAME:-}
ZONE=${ZONE:-}
PROJECT_ID=${PROJECT_ID:-}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-}
RUNTIME_VERSION=${RUNTIME_VERSION:-}
SPOT=0
PREEMPTIBLE=0
QUEUED=0
WAIT_TIMEOUT=3600
EXTRA=()

split_equals "$@"
set -- "${CJ_ARGS[@]}"
while (($#)); do
  if location_flag "$@"; then shift 2; continue; fi
  case "$1" in
    --accelerator-type) need_value "$@"; ACCELERATOR_TYPE=$2; shift 2 ;;
    --runtime-version) need_value "$@"; RUNTIME_VERSION=$2; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --preemptible) PREEMPTIBLE=1; shift ;;
    --queued) QUEUED=1; shift ;;
    --wait-timeout) need_value "$@"; check_int "$2" --wait-timeout; WAIT_TIMEOUT=$2; shift 2 ;;
    --dry-run) CJ_DRY_RUN=1; shift ;;
    -h | --help) print_usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) usage_error "unknown argument: $1" ;;
  esac
done

require_location
require "$ACCELERATOR_TYPE" --accelerator-type ACCELERATOR_TYPE
if [[ -z $RUNTIME_VERSION ]]; then
  RUNTIME_VERSION=$(default_runtime "$ACCELERATOR_TYPE")
  [[ -n $RUNTIME_VERSION ]] ||
    usage_error "no default runtime for accelerator type '$ACCELERATOR_TYPE': pass --runtime-version"
fi
if ((QUEUED && PREEMPTIBLE)); then
  usage_error "--preemptible applies to tpu-vm create only; use --spot with --queued"
fi
tpu_location_flags

if ((!QUEUED)); then
  flags=("--accelerator-type=$ACCELERATOR_TYPE" "--version=$RUNTIME_VERSION")
    if ((SPOT)); then flags+=(--spot); fi
  if ((PREEMPTIBLE)); then flags+=(--preemptible); fi
  log "creating TPU VM $TPU_NAME ($ACCELERATOR_TYPE, $RUNTIME_VERSION) in $ZONE; it is billed until deleted"
  run gcloud compute tpus tpu-vm create "$TPU_NAME" "${CJ_LOC[@]}" "${flags[@]}" "${EXTRA[@]}"
  exit 0
fi

# Queued resource: the request waits in a queue until capacity frees up; the TPU VM node
# (id = NAME, so every other script finds it) exists once the request is ACTIVE.
flags=("--node-id=$TPU_NAME" "--accelerator-type=$ACCELERATOR_TYPE" "--runtime-version=$RUNTIME_VERSION")
if ((SPOT)); then flags+=(--spot); fi
log "requesting queued resource $TPU_NAME ($ACCELERATOR_TYPE, $RUNTIME_VERSION) in $ZONE"
run gcloud compute tpus queued-resources create "$TPU_NAME" "${CJ_LOC[@]}" "${flags[@]}" "${EXTRA[@]}"

describe=(gcloud compute tpus queued-resources describe "$TPU_NAME" "${CJ_LOC[@]}")
if ((CJ_DRY_RUN)); then
  run "${describe[@]}" "--format=value(state.state)"  # polled every 30 s until ACTIVE
  exit 0
fi
deadline=$((SECONDS + WAIT_TIMEOUT))
while :; do
  state=$("${describe[@]}" "--format=value(state.state)")
  case "$state" in
    ACTIVE) log "queued resource $TPU_NAME is ACTIVE"; exit 0 ;;
    FAILED | SUSPENDED | SUSPENDING | DELETING)
      die "queued resource $TPU_NAME is $state; inspect it with: $(quote_cmd "${describe[@]}")" ;;
  esac
  if ((SECONDS >= deadline)); then
    die "queued resource $TPU_NAME still $state after ${WAIT_TIMEOUT}s; it stays queued (and is billed once" \
      "ACTIVE) until you run teardown.sh --queued"
  fi
  log "queued resource $TPU_NAME: $state; waiting"
  sleep 30
done
