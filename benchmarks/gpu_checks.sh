#!/usr/bin/env bash
# The GPU figures benchmarks/RESULTS.md still lacks (issues 21 and 23), as one prepared device check:
# each benchmark under its own time limit, its output in $OUT/<name>.txt, a line per benchmark in
# $OUT/summary.txt. Written for the lent NVIDIA machine (an image with jax, flax, optax and orbax, no
# network), whose Python is 3.12: the packages it lacks travel as wheels.
#
# Here, once per session, in the repository's root (the wheels are ignored, never committed):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl grain==0.2.18 array-record==0.8.3 portpicker ml-collections==1.1.0 tensorboardX==2.6.5 \
#     faiss-cpu==1.15.1
# Then one device call, carrying .whl, with timeout_s about 420, which leaves time to rerun within
# the 15 device minutes (the limits below add up to 6.5 minutes; each is a ceiling, not an estimate,
# and a benchmark cut at its limit keeps what it printed):
#   bash benchmarks/gpu_checks.sh
# and put the figures in benchmarks/RESULTS.md with the machine named. Not yet run on a GPU: the
# first session with one should expect to fix a limit or a flag.
set -uo pipefail

out=${OUT:-/tmp/gpu_checks}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi

python3 -c "import jax; print(jax.__version__, jax.devices())" 2>&1 | tee "$out/devices.txt"
nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv > "$out/gpu.txt" 2>&1

# check NAME SECONDS COMMAND...: runs COMMAND under a limit, its output in $out/NAME.txt
check() {
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$out/$name.txt" 2>&1
  echo "$name: rc=$? in $((SECONDS - start)) s (limit $limit s)" | tee -a "$out/summary.txt"
}

# 23.2: the training loop against its bare step, K = 1, 4, 16, with and without the split on device
check train_step 75 python3 benchmarks/train_step.py --rounds 3
check train_step_three 75 python3 benchmarks/train_step.py --config configs/three_stage.py --rounds 3
# 23.3: the threshold operator against NeuralSort at n = 40 and 1,000 (LCRON loss, batch 1024)
check soft_topk 60 python3 benchmarks/soft_topk.py --sizes 40,1000 --operators neural_sort,threshold,dftopk --iters 20
# 23.4: gathers and row updates against the device's copy bandwidth (sizes picked from its memory)
check embedding 60 python3 benchmarks/embedding.py --bandwidth --rounds 3
# 21: exact top-100 of 1,024 queries over 1M x 64 items, beside FAISS on the CPU, and HBM bandwidth
check corpus 60 python3 benchmarks/corpus.py --rounds 3
# 23.1: the LCRON RecFlow step (DSSM + DIN) and where its time goes
check recflow_step 60 python3 benchmarks/recflow_step.py --variants lcron,lcron-threshold --breakdown
