#!/usr/bin/env bash
# Sets up a Python environment for cascadejax on the machine it runs on (a TPU VM worker, where
# install.sh runs it on every host, or a GPU cluster's login node).
#
# Usage: tpu_scripts/worker_setup.sh [--venv DIR] [--jax-extra tpu|cuda12|cuda13|none]
#            [--extras a,b] [--python PYTHON] [--python-version 3.11] [--check-devices] [--dry-run]
#
# Flags:
#   --repo-dir DIR          The cascadejax checkout to install (default: the one holding this script)
#   --venv DIR              Virtual environment to create or update (default: ~/cascadejax-venv)
#   --jax-extra EXTRA       Which jax wheel set: tpu (default: pip install "jax[tpu]"), cuda12,
#                           cuda13, or none (CPU jax from cascadejax's own requirements)
#   --extras LIST           cascadejax extras to install too, e.g. recflow,tfds
#   --python PYTHON         Interpreter for the venv (default: the first of python3.13, python3.12,
#                           python3.11, python3 that is >= 3.11; if none is, uv installs one)
#   --python-version X.Y    Version uv installs when no interpreter is new enough (default 3.11)
#   --check-devices         Also import jax and print the device counts (on a multi-host TPU slice,
#                           run it on every worker at once, as install.sh does, or it waits)
#   --dry-run               Print the commands instead of running them (the interpreter search
#                           happens at run time; the dry run shows the --python or python3 path)
#   -h, --help              This text
# Relative directories are taken from $HOME.
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

REPO_DIR=$CJ_REPO_ROOT
VENV=${CASCADEJAX_VENV:-$HOME/cascadejax-venv}
JAX_EXTRA=tpu
EXTRAS=""
PYTHON=""
PYTHON_VERSION=3.11
CHECK_DEVICES=0

split_equals "$@"
set -- "${CJ_ARGS[@]}"
while (($#)); do
  case "$1" in
    --repo-dir) need_value "$@"; REPO_DIR=$2; shift 2 ;;
    --venv) need_value "$@"; VENV=$2; shift 2 ;;
    --jax-extra) need_value "$@"; JAX_EXTRA=$2; shift 2 ;;
    --extras) need_value "$@"; EXTRAS=$2; shift 2 ;;
    --python) need_value "$@"; PYTHON=$2; shift 2 ;;
    --python-version) need_value "$@"; PYTHON_VERSION=$2; shift 2 ;;
    --check-devices) CHECK_DEVICES=1; shift ;;
    --dry-run) CJ_DRY_RUN=1; shift ;;
    -h | --help) print_usage; exit 0 ;;
    *) usage_error "unknown argument: $1" ;;
  esac
done

case "$JAX_EXTRA" in
  tpu | cuda12 | cuda13 | none) ;;
  *) usage_error "--jax-extra must be one of tpu, cuda12, cuda13, none; got '$JAX_EXTRA'" ;;
esac
[[ $REPO_DIR == /* ]] || REPO_DIR=$HOME/$REPO_DIR
[[ $VENV == /* ]] || VENV=$HOME/$VENV
[[ -f $REPO_DIR/pyproject.toml ]] || usage_error "--repo-dir $REPO_DIR holds no pyproject.toml"

# Prints the first interpreter that is Python >= 3.11, or nothing.
find_python() {
  local candidate
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      printf '%s' "$candidate"
      return 0
    fi
  done
  return 0
}

# Prints the path of uv, installing it into ~/.local with pip first if needed.
ensure_uv() {
  if command -v uv >/dev/null 2>&1; then
    command -v uv
    return 0
  fi
  if [[ ! -x $HOME/.local/bin/uv ]]; then
    run python3 -m pip install --user --upgrade uv >&2
  fi
  printf '%s' "$HOME/.local/bin/uv"
}

# ---- the virtual environment ----
if [[ -x $VENV/bin/python ]]; then
  log "reusing $VENV"
elif ((CJ_DRY_RUN)); then
  run "${PYTHON:-python3}" -m venv "$VENV"
else
  [[ -n $PYTHON ]] || PYTHON=$(find_python)
  if [[ -n $PYTHON ]] && run "$PYTHON" -m venv "$VENV"; then
    :
  else
    # No new-enough interpreter (Ubuntu 22.04 TPU images ship 3.10), or no ensurepip: let uv
    # fetch a standalone CPython and seed the venv with pip.
    rm -rf "$VENV"
    uv=$(ensure_uv)
    run "$uv" venv --seed --python "$PYTHON_VERSION" "$VENV"
  fi
fi

# ---- packages ----
target=$REPO_DIR
if [[ -n $EXTRAS ]]; then
  target="${REPO_DIR}[$EXTRAS]"
fi
packages=(-e "$target")
if [[ $JAX_EXTRA != none ]]; then
  # jax's version comes from cascadejax's pin (pyproject.toml); the extra adds the matching
  # libtpu or CUDA plugin wheels from PyPI.
  packages+=("jax[$JAX_EXTRA]")
fi
run "$VENV/bin/python" -m pip install --upgrade pip
run "$VENV/bin/python" -m pip install --upgrade "${packages[@]}"
run "$VENV/bin/python" -c 'import jax, cascadejax; print("cascadejax ready: jax", jax.__version__)'
if ((CHECK_DEVICES)); then
  run "$VENV/bin/python" -c \
    'import jax; print("devices:", jax.device_count(), "local:", jax.local_device_count(), jax.devices()[0].platform)'
fi
