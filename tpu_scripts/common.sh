# shellcheck shell=bash
# Helpers shared by the launch scripts in tpu_scripts/ and gpu_scripts/ (sourced, never run).
#
# Conventions:
#   * Commands that change anything go through `run` (or `run_shell` for a pipeline). With
#     --dry-run they are printed to stdout, one per line, shell-quoted so that the line can be
#     pasted into a shell, and nothing is executed. Without it they are echoed to stderr with a
#     leading "+ " and executed.
#   * Messages go to stderr, so that a dry run's stdout is exactly the list of commands.
#   * A bad or missing flag exits with status 2 and a message naming the flag.

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
  printf 'error: these scripts need bash >= 4.4 (this is %s); on macOS: brew install bash\n' "$BASH_VERSION" >&2
  exit 1
fi

CJ_DRY_RUN=${CJ_DRY_RUN:-0}
CJ_SCRIPT=${CJ_SCRIPT:-$(basename "$0")}

# The repository root (the folder holding tpu_scripts/), whichever script sourced this file.
# shellcheck disable=SC2034  # used by the scripts that source this file
CJ_REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() {
  printf '%s: %s\n' "$CJ_SCRIPT" "$*" >&2
}

die() {
  printf '%s: error: %s\n' "$CJ_SCRIPT" "$*" >&2
  exit 1
}

usage_error() {
  printf '%s: error: %s\n' "$CJ_SCRIPT" "$*" >&2
  printf "Run '%s --help' for usage.\n" "$CJ_SCRIPT" >&2
  exit 2
}

# Prints the usage text of the calling script: its leading comment block, without the '#'s.
print_usage() {
  awk 'NR == 1 && /^#!/ { next } /^#SBATCH/ { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
}

# quote_word WORD : WORD as the shell would read it back: as is when it holds only safe
# characters, else in single quotes (a quote inside becomes '\''). For --flag=VALUE only VALUE
# is quoted, which keeps printed commands readable.
quote_word() {
  local word=$1 flag=""
  if [[ $word =~ ^(--[A-Za-z0-9][A-Za-z0-9.-]*=)(.*)$ ]]; then
    flag=${BASH_REMATCH[1]}
    word=${BASH_REMATCH[2]}
  fi
  if [[ -n $word && $word =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s%s' "$flag" "$word"
  else
    printf "%s'%s'" "$flag" "${word//\'/\'\\\'\'}"
  fi
}

# quote_cmd ARG... : the arguments as one line of shell words.
quote_cmd() {
  local out="" arg
  for arg in "$@"; do
    out+="$(quote_word "$arg") "
  done
  printf '%s' "${out% }"
}

# run CMD ARG... : prints the command (dry run) or echoes and executes it.
run() {
  if ((CJ_DRY_RUN)); then
    printf '%s\n' "$(quote_cmd "$@")"
  else
    printf '+ %s\n' "$(quote_cmd "$@")" >&2
    "$@"
  fi
}

# run_shell LINE : like `run`, for a pipeline written as one line of shell.
run_shell() {
  if ((CJ_DRY_RUN)); then
    printf '%s\n' "$1"
  else
    printf '+ %s\n' "$1" >&2
    bash -c "set -euo pipefail; $1"
  fi
}

# need_value FLAG [VALUE...] : exits with a usage error unless FLAG is followed by a value.
# Call as `need_value "$@"` from the option loop, with $1 = the flag.
need_value() {
  if (($# < 2)) || [[ $2 == --* ]]; then
    usage_error "flag $1 needs a value"
  fi
}

# require VALUE FLAG [ENV_VAR] : exits with a usage error naming FLAG (and its env var) if VALUE is empty.
require() {
  if [[ -z $1 ]]; then
    if [[ -n ${3:-} ]]; then
      usage_error "missing required flag $2 (or set \$$3)"
    fi
    usage_error "missing required flag $2"
  fi
}

# split_equals ARG... : fills the array CJ_ARGS with the arguments, `--flag=value` split into
# `--flag value` up to a lone `--` (what follows it is passed on untouched).
split_equals() {
  CJ_ARGS=()
  while (($#)); do
    case "$1" in
      --) CJ_ARGS+=("$@"); return ;;
      --*=*) CJ_ARGS+=("${1%%=*}" "${1#*=}") ;;
      *) CJ_ARGS+=("$1") ;;
    esac
    shift
  done
}

# check_int VALUE FLAG : exits with a usage error unless VALUE is a non-negative integer.
check_int() {
  [[ $1 =~ ^[0-9]+$ ]] || usage_error "$2 must be a non-negative integer, got '$1'"
}

# check_env_pair KEY=VALUE : exits with a usage error unless the argument is a valid assignment.
check_env_pair() {
  [[ $1 =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || usage_error "--env expects KEY=VALUE, got '$1'"
}

# ---- Cloud TPU ------------------------------------------------------------------------------

# location_flag ARG... : for --name, --zone and --project (with $1 the flag, $2 its value) sets
# TPU_NAME, ZONE or PROJECT_ID and succeeds, so the option loop shifts 2; fails for any other flag.
# Call as `if location_flag "$@"; then shift 2; continue; fi` at the top of the option loop.
location_flag() {
  case "$1" in
    --name) need_value "$@"; TPU_NAME=$2 ;;
    --zone) need_value "$@"; ZONE=$2 ;;
    --project) need_value "$@"; PROJECT_ID=$2 ;;
    *) return 1 ;;
  esac
}

# require_location : exits with a usage error unless the TPU VM is named: --name, --zone and
# --project (or $TPU_NAME, $ZONE, $PROJECT_ID), as every tpu_scripts/ command needs them.
require_location() {
  require "${TPU_NAME:-}" --name TPU_NAME
  require "${ZONE:-}" --zone ZONE
  require "${PROJECT_ID:-}" --project PROJECT_ID
}

# default_runtime ACCELERATOR_TYPE : the TPU software version Google recommends for JAX on that
# TPU generation (cloud.google.com/tpu/docs/runtimes), or nothing if the generation is unknown.
default_runtime() {
  case "$1" in
    v6e-*) printf 'v2-alpha-tpuv6e' ;;
    v5p-*) printf 'v2-alpha-tpuv5' ;;
    v5litepod-* | v5e-*) printf 'v2-alpha-tpuv5-lite' ;;
    v2-* | v3-* | v4-*) printf 'tpu-ubuntu2204-base' ;;
    *) printf '' ;;
  esac
}

# tpu_location_flags : the --zone/--project flags every gcloud TPU command takes (array CJ_LOC).
tpu_location_flags() {
  CJ_LOC=("--zone=$ZONE")
  if [[ -n ${PROJECT_ID:-} ]]; then
    CJ_LOC+=("--project=$PROJECT_ID")
  fi
}

# tpu_ssh WORKER REMOTE_COMMAND : runs one shell line on the TPU VM workers (all: every host at
# once; gcloud exits non-zero when the command fails on any worker).
tpu_ssh() {
  local worker=$1 command=$2
  local -a flags=()
  tpu_location_flags
  if ((${INTERNAL_IP:-0})); then
    flags+=(--internal-ip)
  fi
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${CJ_LOC[@]}" "--worker=$worker" "${flags[@]}" \
    "--command=$command"
}

# warn_ssh_agent : gcloud asks for the key to be in ssh-agent when it talks to several workers.
warn_ssh_agent() {
  if ((CJ_DRY_RUN)); then
    return 0
  fi
  if ! ssh-add -l >/dev/null 2>&1; then
    log "warning: no key in ssh-agent; for --worker=all gcloud expects 'ssh-add ~/.ssh/google_compute_engine'"
  fi
}
