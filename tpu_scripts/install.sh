#!/usr/bin/env bash
# Installs cascadejax on every host of a TPU VM slice: puts the source in ~/cascadejax and
# creates ~/cascadejax-venv with cascadejax and jax[tpu] (tpu_scripts/worker_setup.sh).
#
# Usage: tpu_scripts/install.sh --name NAME --zone ZONE --project PROJECT
#            [--source local | --source git --repo-url URL [--ref REF]] [options]
#
# Flags (environment variable in brackets):
#   --name NAME           TPU VM name [TPU_NAME]                                      (required)
#   --zone ZONE           [ZONE]                                                      (required)
#   --project PROJECT     [PROJECT_ID]                                                (required)
#   --source local|git    local (default): upload this working tree (tracked and untracked files
#                         that git does not ignore; uncommitted edits included);
#                         git: every worker clones --repo-url and checks out --ref [CASCADEJAX_SOURCE]
#   --repo-url URL        Git URL the workers can reach (with --source git) [CASCADEJAX_REPO_URL]
#   --ref REF             Branch, tag or commit (default: main) [CASCADEJAX_REF]
#   --remote-dir DIR      Checkout on the workers, relative to home (default: cascadejax)
#   --venv DIR            Virtual environment on the workers (default: cascadejax-venv)
#   --jax-extra EXTRA     jax wheels: tpu (default) or none
#   --extras LIST         cascadejax extras, e.g. recflow,tfds
#   --check-devices       Also start jax on every worker and print the device counts
#   --internal-ip         Reach the workers by internal IP (from a VM in the same network)
#   --dry-run             Print the commands instead of running them
#   -h, --help            This text
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TPU_NAME=${TPU_NAME:-}
ZONE=${ZONE:-}
PROJECT_ID=${PROJECT_ID:-}
SOURCE=${CASCADEJAX_SOURCE:-local}
REPO_URL=${CASCADEJAX_REPO_URL:-}
REF=${CASCADEJAX_REF:-main}
REMOTE_DIR=cascadejax
VENV=cascadejax-venv
JAX_EXTRA=tpu
EXTRAS=""
CHECK_DEVICES=0
INTERNAL_IP=0

split_equals "$@"
set -- "${CJ_ARGS[@]}"
while (($#)); do
  if location_flag "$@"; then shift 2; continue; fi
  case "$1" in
    --source) need_value "$@"; SOURCE=$2; shift 2 ;;
    --repo-url) need_value "$@"; REPO_URL=$2; shift 2 ;;
    --ref) need_value "$@"; REF=$2; shift 2 ;;
    --remote-dir) need_value "$@"; REMOTE_DIR=$2; shift 2 ;;
    --venv) need_value "$@"; VENV=$2; shift 2 ;;
    --jax-extra) need_value "$@"; JAX_EXTRA=$2; shift 2 ;;
    --extras) need_value "$@"; EXTRAS=$2; shift 2 ;;
    --check-devices) CHECK_DEVICES=1; shift ;;
    --internal-ip) INTERNAL_IP=1; shift ;;
    --dry-run) CJ_DRY_RUN=1; shift ;;
    -h | --help) print_usage; exit 0 ;;
    *) usage_error "unknown argument: $1" ;;
  esac
done

require_location
case "$SOURCE" in
  local) ;;
  git) require "$REPO_URL" --repo-url CASCADEJAX_REPO_URL ;;
  *) usage_error "--source must be local or git, got '$SOURCE'" ;;
esac
[[ $REMOTE_DIR =~ ^[A-Za-z0-9._/-]+$ && $REMOTE_DIR != /* ]] ||
  usage_error "--remote-dir must be a plain path relative to the workers' home, got '$REMOTE_DIR'"
warn_ssh_agent
tpu_location_flags

# ---- source ----
if [[ $SOURCE == local ]]; then
  tarball="${TMPDIR:-/tmp}/cascadejax-src-$TPU_NAME.tgz"
  if ((!CJ_DRY_RUN)); then
    deleted=$(git -C "$CJ_REPO_ROOT" ls-files --deleted)
    [[ -z $deleted ]] || die "tracked files are deleted but the deletion is not committed: $deleted" \
      "(git rm them, or restore them) before uploading the working tree"
  fi
  run_shell "git -C $(quote_word "$CJ_REPO_ROOT") ls-files -z --cached --others --exclude-standard | tar -czf $(quote_word "$tarball") -C $(quote_word "$CJ_REPO_ROOT") --null -T -"
  flags=()
  if ((INTERNAL_IP)); then flags+=(--internal-ip); fi
  run gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:cascadejax-src.tgz" "${CJ_LOC[@]}" --worker=all \
    "${flags[@]}"
  run rm -f "$tarball"
  fetch="rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR && tar -xzf cascadejax-src.tgz -C $REMOTE_DIR && rm cascadejax-src.tgz"
else
  # fetch + checkout FETCH_HEAD works alike for a branch, a tag or a commit.
  fetch="(test -d $REMOTE_DIR/.git || git clone $(quote_word "$REPO_URL") $REMOTE_DIR) && git -C $REMOTE_DIR fetch --tags origin $(quote_word "$REF") && git -C $REMOTE_DIR checkout --force FETCH_HEAD"
fi

# ---- environment, on every worker at once ----
setup=(bash "$REMOTE_DIR/tpu_scripts/worker_setup.sh" --repo-dir "$REMOTE_DIR" --venv "$VENV" --jax-extra "$JAX_EXTRA")
if [[ -n $EXTRAS ]]; then setup+=(--extras "$EXTRAS"); fi
if ((CHECK_DEVICES)); then setup+=(--check-devices); fi
tpu_ssh all "$fetch && $(quote_cmd "${setup[@]}")"
