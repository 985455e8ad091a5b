#!/usr/bin/env bash
# Deletes a Cloud TPU VM slice (and, with --queued, the queued resource that holds it).
#
# Usage: tpu_scripts/teardown.sh --name NAME --zone ZONE --project PROJECT [--queued] [--async]
#
# Flags (environment variable in brackets):
#   --name NAME         TPU VM name [TPU_NAME]                (required)
#   --zone ZONE         [ZONE]                                (required)
#   --project PROJECT   [PROJECT_ID]                          (required)
#   --queued            The slice came from create.sh --queued: delete the queued resource and
#                       its node (gcloud ... queued-resources delete --force)
#   --async             Return without waiting for the deletion to finish
#   --dry-run           Print the gcloud command instead of running it
#   -h, --help          This text
#
# Deleting is what stops the billing; everything on the VMs' disks is lost (keep checkpoints and
# metrics in a gs:// --workdir). Check nothing is left with:
#   gcloud compute tpus tpu-vm list --zone=ZONE --project=PROJECT
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TPU_NAME=${TPU_NAME:-}
ZONE=${ZONE:-}
PROJECT_ID=${PROJECT_ID:-}
QUEUED=0
ASYNC=0

split_equals "$@"
set -- "${CJ_ARGS[@]}"
while (($#)); do
  if location_flag "$@"; then shift 2; continue; fi
  case "$1" in
    --queued) QUEUED=1; shift ;;
    --async) ASYNC=1; shift ;;
    --dry-run) CJ_DRY_RUN=1; shift ;;
    -h | --help) print_usage; exit 0 ;;
    *) usage_error "unknown argument: $1" ;;
  esac
done

require_location
tpu_location_flags
flags=(--quiet)  # no confirmation prompt
if ((ASYNC)); then flags+=(--async); fi

if ((QUEUED)); then
  log "deleting queued resource $TPU_NAME and its TPU VM node"
  run gcloud compute tpus queued-resources delete "$TPU_NAME" "${CJ_LOC[@]}" --force "${flags[@]}"
else
  log "deleting TPU VM $TPU_NAME"
  run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${CJ_LOC[@]}" "${flags[@]}"
fi
