"""Forward+backward time and memory of the LCRON loss for every soft top-k operator, side by side.

  python benchmarks/soft_topk.py [--batch 1024] [--sizes 40,200,1000,10000,100000] [--memory-limit-gb 12]
      [--operators dftopk,lapsum,...] [--targets tie_free|lcron] [--baseline dftopk] [--fit-batch]

  # issue 23.3: the threshold operator's solver, old (60 bisection steps) and new, against NeuralSort
  python benchmarks/soft_topk.py --sizes 40,200,1000 --operators neural_sort,threshold,threshold_bisect60 \
      --baseline neural_sort --fit-batch

For each operator and list length n: a two-stage LCRON loss (stage ks = n/2 and n/4, ground truth =
top n/4, every term at its paper default, temperature 1) on random `[2, batch, n]` scores,
`jax.value_and_grad` jitted, timed after compilation and one warm-up call. Every case runs in a fresh
subprocess so its peak resident memory is its own; the subprocess's heap is capped at
--memory-limit-gb, and a case that cannot allocate is reported as such. Cases whose single
`[batch, n, n]` float32 matrix alone exceeds the cap are not started for the permutation operators
(they need several of them).

Operator `threshold_bisect60` is `threshold` with the solver it had before issue 23.3 (60 bisection
steps, copied here; the library no longer has it).

Targets: LCRON's label targets (`methods.common.label_split`) read each label's tied block from a
sort of the list (O(n log n); they compared every pair of labels, `[batch, n, n]` work, before issue
23.3). The labels here are random floats without ties, for which those targets are just the
top-n/4 indicator and its complement, so by default (`--targets tie_free`) the step computes them by
an O(n) selection instead (checked equal to `label_split` for n <= 200) and the table measures the
operators. `--targets lcron` keeps LCRON's own targets.

Columns: ms per forward+backward; XLA's compiled temporary-buffer size (what the step itself
allocates); the process's peak RSS (includes ~0.3 GB of runtime); time relative to --baseline in
the same row group. With --fit-batch, a list length whose permutation-operator temporaries exceed
the cap runs all its operators at a smaller batch (the batch column), so the ratio stays measured.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cascadejax.ops.soft_topk import PERMUTATION_OPERATORS, TOPK_OPERATORS


THRESHOLD_BISECTION = "threshold_bisect60"  # the threshold operator with its former solver (below)
_BISECTION_STEPS = 60


def bisection_solve_threshold(s, valid, k, temperature):
  """The threshold operator's solver before issue 23.3: 60 bisection steps on the sum (for comparison)."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  m = valid.sum(-1, keepdims=True).astype(s.dtype)
  lo = jnp.min(jnp.where(valid, s, jnp.inf), -1, keepdims=True)
  hi = jnp.max(jnp.where(valid, s, -jnp.inf), -1, keepdims=True)
  margin = temperature * (jnp.log(jnp.maximum(m, 1.0)) + 1.0)
  lo = jnp.where(jnp.isfinite(lo), lo, 0.0) - margin
  hi = jnp.where(jnp.isfinite(hi), hi, 0.0) + margin

  def step(_, bracket):
    lo, hi = bracket
    mid = 0.5 * (lo + hi)
    total = jnp.where(valid, jax.nn.sigmoid((s - mid) / temperature), 0.0).sum(-1, keepdims=True)
    above = total > k
    return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

  lo, hi = jax.lax.fori_loop(0, _BISECTION_STEPS, step, (lo, hi))
  return 0.5 * (lo + hi)


def tie_free_label_split(labels, k, *, where, count_ties):
  """`methods.common.label_split` for lists without tied labels, in O(n): (top-k indicator, rest)."""
  del count_ties
  import jax.numpy as jnp  # noqa: PLC0415

  from cascadejax.ops.dftopk import boundary_indices  # noqa: PLC0415
  m = where.sum(-1, keepdims=True)
  i_k, _ = boundary_indices(labels, jnp.clip(jnp.broadcast_to(k, m.shape), 1, jnp.maximum(m - 1, 1)), where)
  top = where & ((labels >= jnp.take_along_axis(labels, i_k, -1)) | (k >= m))
  return top.astype(jnp.float32), (where & ~top).astype(jnp.float32)


def run_case(method: str, n: int, batch: int, iters: int, targets: str = "tie_free") -> dict:
  """Times one case in this process and returns its figures."""
  import jax  # noqa: PLC0415 (imported after the memory cap is set)
  import jax.numpy as jnp  # noqa: PLC0415

  from cascadejax.data.schema import CascadeBatch  # noqa: PLC0415
  from cascadejax.methods import lcron as lcron_module  # noqa: PLC0415
  from cascadejax.methods.common import label_split  # noqa: PLC0415
  from cascadejax.methods.lcron import LCRON  # noqa: PLC0415

  if method == THRESHOLD_BISECTION:
    import importlib  # noqa: PLC0415
    importlib.import_module("cascadejax.ops.soft_topk")._solve_threshold = bisection_solve_threshold
    method = "threshold"
  lcron = LCRON({"topk_method": method, "temperature": 1.0}, stage_names=("retrieval", "prerank"),
                ks=(n // 2, n // 4), gt_num=n // 4)
  keys = jax.random.split(jax.random.key(0), 3)
  scores = jax.random.normal(keys[0], (2, batch, n))
  data = CascadeBatch(user={}, items={}, stage=jnp.zeros((batch, n), jnp.int32),
                      label=jax.random.normal(keys[1], (batch, n)),
                      mask=jax.random.uniform(keys[2], (batch, n)) < 0.9)
  params = lcron.init(keys[0])
  if targets == "tie_free":
    if n <= 200:  # the shortcut is exact on these labels
      for a, b in zip(label_split(data.label, n // 4, where=data.mask, count_ties=False),
                      tie_free_label_split(data.label, n // 4, where=data.mask, count_ties=False)):
        assert bool(jnp.all(a == b)), "tie-free targets differ from label_split"
    lcron_module.label_split = tie_free_label_split
  # The batch is an argument, not a closed-over constant: XLA would fold the ground-truth top-k into
  # the program at compile time and leave it out of the timed step.
  step = jax.jit(jax.value_and_grad(lambda p, s, b: lcron.loss(p, s, b, rng=keys[0])[0], argnums=(0, 1)))
  compiled = step.lower(params, scores, data).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  print(json.dumps({"temp_bytes": temp}), flush=True)  # reported even if running it fails
  jax.block_until_ready(step(params, scores, data))  # warm-up
  start = time.perf_counter()
  for _ in range(iters):
    value, _ = jax.block_until_ready(step(params, scores, data))
  ms = (time.perf_counter() - start) / iters * 1e3
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  return {"ms": ms, "temp_bytes": temp, "peak_rss": peak, "finite": bool(jnp.isfinite(value))}


def main() -> None:
  """Runs every case in a subprocess and prints the table."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=1024)
  parser.add_argument("--sizes", default="40,200,1000,10000,100000")
  parser.add_argument("--operators", default=",".join(TOPK_OPERATORS))
  parser.add_argument("--targets", choices=("tie_free", "lcron"), default="tie_free")
  parser.add_argument("--iters", type=int, default=5)
  parser.add_argument("--baseline", default="dftopk", help="the operator the last column divides by")
  parser.add_argument("--fit-batch", action="store_true",
                      help="at a list length where a permutation operator's [B, n, n] temporaries (about 9 "
                           "matrices; 16 allowed for) exceed the cap, run every operator of that row at the largest "
                           "power-of-two fraction of --batch that fits")
  parser.add_argument("--memory-limit-gb", type=float, default=12.0)
  parser.add_argument("--timeout", type=int, default=600, help="seconds per case")
  parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: "method,n"
  args = parser.parse_args()
  limit = int(args.memory_limit_gb * 2**30)

  if args.case:
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    method, n = args.case.split(",")
    print(json.dumps(run_case(method, int(n), args.batch, args.iters, args.targets)))
    return

  import jax  # noqa: PLC0415
  names = TOPK_OPERATORS + (THRESHOLD_BISECTION,)
  operators = [m for m in names if m in args.operators.split(",")]
  base_name = args.baseline
  print(f"LCRON loss forward+backward, batch {args.batch}, {jax.devices()[0].device_kind}, "
        f"heap cap {args.memory_limit_gb:g} GB, targets {args.targets}\n")
  print(f"| n | batch | operator | ms / fwd+bwd | XLA temp buffers | peak RSS | time vs {base_name} |")
  print("|---|---|---|---|---|---|---|")
  for n in (int(x) for x in args.sizes.split(",")):
    rows, batch = {}, args.batch
    if args.fit_batch and any(m in PERMUTATION_OPERATORS for m in operators):
      while batch > 1 and 16 * batch * n * n * 4 > limit:
        batch //= 2
    for method in operators:
      matrix = batch * n * n * 4
      if method in PERMUTATION_OPERATORS and matrix > limit:
        rows[method] = f"not run: one [B, n, n] matrix is {matrix / 2**30:.0f} GB"
        continue
      cmd = [sys.executable, __file__, "--case", f"{method},{n}", "--batch", str(batch),
             "--iters", str(args.iters), "--memory-limit-gb", str(args.memory_limit_gb), "--targets", args.targets]
      try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
      except subprocess.TimeoutExpired:
        rows[method] = f"did not finish in {args.timeout} s"
        continue
      if out.returncode != 0:
        error = "out of memory" if "RESOURCE_EXHAUSTED" in out.stderr or "alloc" in out.stderr.lower() \
          else f"failed (exit {out.returncode})"
        lines = out.stdout.strip().splitlines()
        needs = f" (XLA needs {json.loads(lines[0])['temp_bytes'] / 2**30:.1f} GB of temporaries)" if lines else ""
        rows[method] = f"{error} under the {args.memory_limit_gb:g} GB cap{needs}"
        continue
      rows[method] = json.loads(out.stdout.strip().splitlines()[-1])
    base = rows.get(base_name)
    for method, r in rows.items():
      if isinstance(r, str):
        print(f"| {n} | {batch} | {method} | {r} | | | |")
        continue
      ratio = f"{r['ms'] / base['ms']:.3f}x" if isinstance(base, dict) else ""
      print(f"| {n} | {batch} | {method} | {r['ms']:.2f} | {r['temp_bytes'] / 2**20:,.1f} MB | "
            f"{r['peak_rss'] / 2**30:.2f} GB | {ratio} |", flush=True)


if __name__ == "__main__":
  main()
