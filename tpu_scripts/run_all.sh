#!/usr/bin/env bash
# One training run on a fresh TPU VM slice: create.sh -> install.sh -> launch.sh -> teardown.sh.
# The slice is deleted when this script exits, whether the run succeeded, failed or was
# interrupted (Ctrl-C), unless --keep is given. It refuses to start if a TPU of that name exists
# (so it never deletes a slice it did not create).
#
# Usage: tpu_scripts/run_all.sh --name NAME --zone ZONE --project PROJECT --accelerator-type TYPE
#            --config configs/X.py --workdir gs://BUCKET/DIR [options] [-- --config.a.b=v ...]
#
# Flags: those of create.sh (--accelerator-type, --runtime-version, --spot, --preemptible,
# --queued, --wait-timeout), install.sh (--source, --repo-url, --ref, --jax-extra, --extras,
# --check-devices), launch.sh (--config, --workdir, --run-name, --env), and
#   --name, --zone, --project, --remote-dir, --venv, --internal-ip   shared by all steps
#   --keep        Do not delete the slice at the end (it keeps billing: teardown.sh deletes it)
#   --dry-run     Print every step's commands, teardown included, instead of running them
#   -h, --help    This text
# Environment variables as in the step scripts (TPU_NAME, ZONE, PROJECT_ID, ACCELERATOR_TYPE,
# RUNTIME_VERSION, CASCADEJAX_CONFIG, CASCADEJAX_WORKDIR, CASCADEJAX_SOURCE, ...).
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
HERE=$(dirname "${BASH_SOURCE[0]}")

TPU_NAME=${TPU_NAME:-}
ZONE=${ZONE:-}
PROJECT_ID=${PROJECT_ID:-}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-}
CONFIG=${CASCADEJAX_CONFIG:-}
WORKDIR=${CASCADEJAX_WORKDIR:-}
QUEUED=0
KEEP=0
CREATE=()   # flags for create.sh only
INSTALL=()  # flags for install.sh only
LAUNCH=()   # flags for launch.sh only
SHARED=()   # flags for install.sh and launch.sh
TRAIN_ARGS=()

split_equals "$@"
set -- "${CJ_ARGS[@]}"
while (($#)); do
  if location_flag "$@"; then shift 2; continue; fi
  case "$1" in
    --accelerator-type) need_value "$@"; ACCELERATOR_TYPE=$2; shift 2 ;;
    --config) need_value "$@"; CONFIG=$2; shift 2 ;;
    --workdir) need_value "$@"; WORKDIR=$2; shift 2 ;;
    --queued) QUEUED=1; CREATE+=("$1"); shift ;;
    --spot | --preemptible) CREATE+=("$1"); shift ;;
    --runtime-version | --wait-timeout) need_value "$@"; CREATE+=("$1" "$2"); shift 2 ;;
    --check-devices) INSTALL+=("$1"); shift ;;
    --source | --repo-url | --ref | --jax-extra | --extras) need_value "$@"; INSTALL+=("$1" "$2"); shift 2 ;;
    --run-name | --env) need_value "$@"; LAUNCH+=("$1" "$2"); shift 2 ;;
    --remote-dir | --venv) need_value "$@"; SHARED+=("$1" "$2"); shift 2 ;;
    --internal-ip) SHARED+=("$1"); shift ;;
    --keep) KEEP=1; shift ;;
    --dry-run) CJ_DRY_RUN=1; shift ;;
    -h | --help) print_usage; exit 0 ;;
    --) shift; TRAIN_ARGS=("$@"); break ;;
    *) usage_error "unknown argument: $1 (arguments for train.py go after --)" ;;
  esac
done

# Everything a later step needs is checked before anything is created (and billed).
require_location
require "$ACCELERATOR_TYPE" --accelerator-type ACCELERATOR_TYPE
require "$CONFIG" --config CASCADEJAX_CONFIG
require "$WORKDIR" --workdir CASCADEJAX_WORKDIR

where=(--name "$TPU_NAME" --zone "$ZONE" --project "$PROJECT_ID")
dry=()
if ((CJ_DRY_RUN)); then dry=(--dry-run); fi
teardown=(bash "$HERE/teardown.sh" "${where[@]}" "${dry[@]}")
if ((QUEUED)); then teardown+=(--queued); fi

# ---- refuse to reuse an existing slice ----
tpu_location_flags
if ((QUEUED)); then
  describe=(gcloud compute tpus queued-resources describe "$TPU_NAME" "${CJ_LOC[@]}" "--format=value(name)")
else
  describe=(gcloud compute tpus tpu-vm describe "$TPU_NAME" "${CJ_LOC[@]}" "--format=value(name)")
fi
if ((CJ_DRY_RUN)); then
  run "${describe[@]}"  # must fail: the name must be free
elif "${describe[@]}" >/dev/null 2>&1; then
  die "a TPU named $TPU_NAME already exists in $ZONE; pick another --name, or use install.sh/launch.sh on it"
fi

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if ((KEEP)); then
    log "keeping $TPU_NAME (--keep): it is billed until you run $(quote_cmd "${teardown[@]}")"
  elif ! "${teardown[@]}"; then
    log "TEARDOWN FAILED: delete $TPU_NAME by hand, it is billed until deleted: $(quote_cmd "${teardown[@]}")"
    ((status)) || status=1
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bash "$HERE/create.sh" "${where[@]}" --accelerator-type "$ACCELERATOR_TYPE" "${CREATE[@]}" "${dry[@]}"
bash "$HERE/install.sh" "${where[@]}" "${SHARED[@]}" "${INSTALL[@]}" "${dry[@]}"
bash "$HERE/launch.sh" "${where[@]}" "${SHARED[@]}" --config "$CONFIG" --workdir "$WORKDIR" "${LAUNCH[@]}" \
  "${dry[@]}" -- "${TRAIN_ARGS[@]}"
