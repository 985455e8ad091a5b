#!/usr/bin/env bash
# Runs, follows or stops one training run on the host it is started on. launch.sh, logs.sh and
# stop.sh start it on every TPU VM worker at once (gcloud ... ssh --worker=all); it also works on
# any Linux host.
#
# Usage: worker_run.sh [options] -- COMMAND...     start COMMAND as run NAME, then follow it
#        worker_run.sh --attach [--run NAME]       follow a run (default: the latest one)
#        worker_run.sh --stop [--run NAME]         stop a run (its whole process group)
#
# A started run survives the ssh session that started it: it runs in its own session (setsid),
# writes stdout+stderr to RUNS/NAME/log, its process id to RUNS/NAME/pid and its exit status to
# RUNS/NAME/rc. Following prints the log with every line prefixed "[worker I] " and exits with
# the run's exit status (137 if it left none, e.g. killed). Starting again the name of a run that
# is still going follows it instead (gcloud re-runs a command after a dropped connection).
#
# Flags:
#   --repo-dir DIR        Where COMMAND runs (default: the checkout holding this script)
#   --venv DIR            Virtual environment put first on PATH (default: ~/cascadejax-venv)
#   --runs-dir DIR        Folder of the run folders (default: ~/cascadejax-runs)
#   --run NAME            Run name (default: the current date and time)
#   --env KEY=VALUE       Exported for COMMAND (repeatable); CASCADEJAX_DISTRIBUTED=1 and
#                         PYTHONUNBUFFERED=1 are set unless overridden here
#   --detach              Start and return at once (follow later with --attach)
#   --kill-previous       Stop a different run still going on this host before starting
#   --lines N             With --attach: start from the last N lines (default: the whole log)
#   --dry-run             Print what would run instead of running it
#   -h, --help            This text
# Relative directories are taken from $HOME. The worker number in the prefix is
# $CASCADEJAX_WORKER_ID if set, else the TPU VM's metadata (agent-worker-number), else the hostname.
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

REPO_DIR=$CJ_REPO_ROOT
VENV=${CASCADEJAX_VENV:-cascadejax-venv}
RUNS_DIR=${CASCADEJAX_RUNS_DIR:-cascadejax-runs}
RUN_NAME=""
MODE=start
DETACH=0
KILL_PREVIOUS=0
LINES=""
ENVS=()
COMMAND=()

split_equals "$@"
set -- "${CJ_ARGS[@]}"
while (($#)); do
  case "$1" in
    --repo-dir) need_value "$@"; REPO_DIR=$2; shift 2 ;;
    --venv) need_value "$@"; VENV=$2; shift 2 ;;
    --runs-dir) need_value "$@"; RUNS_DIR=$2; shift 2 ;;
    --run) need_value "$@"; RUN_NAME=$2; shift 2 ;;
    --env) need_value "$@"; check_env_pair "$2"; ENVS+=("$2"); shift 2 ;;
    --detach) DETACH=1; shift ;;
    --kill-previous) KILL_PREVIOUS=1; shift ;;
    --attach) MODE=attach; shift ;;
    --stop) MODE=stop; shift ;;
    --lines) need_value "$@"; check_int "$2" --lines; LINES=$2; shift 2 ;;
    --dry-run) CJ_DRY_RUN=1; shift ;;
    -h | --help) print_usage; exit 0 ;;
    --) shift; COMMAND=("$@"); break ;;
    *) usage_error "unknown argument: $1" ;;
  esac
done

absolute() {
  if [[ $1 == /* ]]; then printf '%s' "$1"; else printf '%s' "$HOME/$1"; fi
}
REPO_DIR=$(absolute "$REPO_DIR")
VENV=$(absolute "$VENV")
RUNS_DIR=$(absolute "$RUNS_DIR")

worker_id() {
  if [[ -n ${CASCADEJAX_WORKER_ID:-} ]]; then
    printf '%s' "$CASCADEJAX_WORKER_ID"
    return
  fi
  local id
  id=$(curl -sf --max-time 3 -H 'Metadata-Flavor: Google' \
    http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number \
    2>/dev/null || true)
  printf '%s' "${id:-$(hostname)}"
}
WORKER=$(worker_id)
PREFIX="[worker $WORKER] "

alive() {
  [[ -n $1 ]] && kill -0 "$1" 2>/dev/null
}

run_pid() {
  cat "$RUNS_DIR/$1/pid" 2>/dev/null || true
}

current_run() {
  cat "$RUNS_DIR/current" 2>/dev/null || true
}

# follow NAME : prints the run's log, prefixed, until the run ends; returns its exit status.
follow() {
  local name=$1 dir="$RUNS_DIR/$1" pid line rc
  pid=$(run_pid "$name")
  [[ -n $pid ]] || die "no run '$name' in $RUNS_DIR on worker $WORKER"
  local from=+1
  if [[ -n $LINES ]]; then from=$LINES; fi
  if alive "$pid"; then
    # tail exits once the run's process is gone, after printing what is left of the log.
    tail -n "$from" --pid="$pid" -F "$dir/log" 2>/dev/null
  else
    tail -n "$from" "$dir/log"
  fi | while IFS= read -r line || [[ -n $line ]]; do
    printf '%s%s\n' "$PREFIX" "$line"
  done
  rc=$(cat "$dir/rc" 2>/dev/null || echo 137)
  printf '%srun %s finished with exit status %s\n' "$PREFIX" "$name" "$rc"
  return "$rc"
}

# stop NAME : TERM, then after 30 s KILL, to the run's process group.
stop() {
  local name=$1 pid i
  pid=$(run_pid "$name")
  if ! alive "$pid"; then
    printf '%srun %s is not running\n' "$PREFIX" "$name"
    return 0
  fi
  run kill -TERM -- "-$pid"
  if ((CJ_DRY_RUN)); then return 0; fi
  for ((i = 0; i < 30; i++)); do
    alive "$pid" || break
    sleep 1
  done
  if alive "$pid"; then
    run kill -KILL -- "-$pid"
  fi
  printf '%sstopped run %s (process group %s)\n' "$PREFIX" "$name" "$pid"
}

if [[ $MODE != start ]]; then
  [[ -n $RUN_NAME ]] || RUN_NAME=$(current_run)
  [[ -n $RUN_NAME ]] || die "no run recorded in $RUNS_DIR on worker $WORKER"
  if [[ $MODE == stop ]]; then
    stop "$RUN_NAME"
    exit 0
  fi
  follow "$RUN_NAME"
  exit $?
fi

# ---- start ----
((${#COMMAND[@]})) || usage_error "missing the command to run after --"
[[ -n $RUN_NAME ]] || RUN_NAME=$(date +%Y%m%d-%H%M%S)
[[ $RUN_NAME =~ ^[A-Za-z0-9._-]+$ ]] || usage_error "--run must be letters, digits, '.', '_' or '-'"
[[ -d $REPO_DIR ]] || die "no checkout at $REPO_DIR on worker $WORKER: run install.sh first"
if [[ ! -x $VENV/bin/python && $CJ_DRY_RUN == 0 ]]; then
  die "no virtual environment at $VENV on worker $WORKER: run install.sh first"
fi

previous=$(current_run)
if [[ -n $previous ]] && alive "$(run_pid "$previous")"; then
  if [[ $previous == "$RUN_NAME" ]]; then
    printf '%srun %s is already going; following it\n' "$PREFIX" "$RUN_NAME"
    follow "$RUN_NAME"
    exit $?
  elif ((KILL_PREVIOUS)); then
    stop "$previous"
  else
    die "run $previous is still going on worker $WORKER (it holds the accelerators): stop it" \
      "with stop.sh or pass --kill-previous"
  fi
fi

dir="$RUNS_DIR/$RUN_NAME"
export PATH="$VENV/bin:$PATH" VIRTUAL_ENV="$VENV" CASCADEJAX_DISTRIBUTED=1 PYTHONUNBUFFERED=1
for pair in "${ENVS[@]}"; do
  export "${pair?}"
done
if ((CJ_DRY_RUN)); then
  printf '%s\n' "$(quote_cmd cd "$REPO_DIR")"
  printf '%s\n' "$(quote_cmd export "PATH=$PATH" "VIRTUAL_ENV=$VENV" CASCADEJAX_DISTRIBUTED=1 \
    PYTHONUNBUFFERED=1 "${ENVS[@]}")"
  printf '%s > %s 2>&1 &\n' "$(quote_cmd setsid "${COMMAND[@]}")" "$(quote_word "$dir/log")"
  exit 0
fi

mkdir -p "$dir"
rm -f "$dir/rc" "$dir/pid"
{
  printf '[cascadejax] run %s on worker %s (%s), started %s\n' "$RUN_NAME" "$WORKER" "$(hostname)" "$(date -Is)"
  printf '[cascadejax] in %s: %s\n' "$REPO_DIR" "$(quote_cmd "${COMMAND[@]}")"
} >"$dir/log"
printf '%s\n' "$RUN_NAME" >"$RUNS_DIR/current"
cd "$REPO_DIR"
# The inner shell leads a new session and process group (stop kills the group), records its
# pid, runs the command and records the command's exit status.
# shellcheck disable=SC2016  # $$, $1, $? belong to the inner shell
setsid bash -c 'echo $$ > "$1"; rc_file=$2; shift 2; "$@"; echo $? > "$rc_file"' \
  worker-run "$dir/pid" "$dir/rc" "${COMMAND[@]}" </dev/null >>"$dir/log" 2>&1 &
for ((i = 0; i < 100; i++)); do
  [[ -s $dir/pid ]] && break
  sleep 0.1
done
[[ -s $dir/pid ]] || die "run $RUN_NAME did not start on worker $WORKER; see $dir/log"
printf '%sstarted run %s (pid %s), log %s\n' "$PREFIX" "$RUN_NAME" "$(cat "$dir/pid")" "$dir/log"
if ((DETACH)); then
  exit 0
fi
follow "$RUN_NAME"
