"""Forward+backward time and memory of the LCRON loss for every soft top-k operator, side by side.

  python benchmarks/soft_topk.py [--batch 1024] [--sizes 40,200,1000,10000] [--memory-limit-gb 12]

For each operator and list length n: a two-stage LCRON loss (stage ks = n/2 and n/4, ground truth =
top n/4, every term at its paper default) on random `[2, batch, n]` scores, `jax.value_and_grad`
jitted, timed after compilation and one warm-up call. Every case runs in a fresh subprocess so its
peak resident memory is its own; the subprocess's heap is capped at --memory-limit-gb, and a case
that cannot allocate is reported as such. Cases whose single `[batch, n, n]` float32 matrix alone
exceeds the cap are not started (the permutation methods need several of them).

Columns: ms per forward+backward; XLA's compiled temporary-buffer size (what the step itself
allocates); the process's peak RSS (includes ~0.3 GB of runtime); speed relative to `threshold`.
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

from cascadejax.ops.soft_topk import TOPK_OPERATORS


def run_case(method: str, n: int, batch: int, iters: int) -> dict:
  """Times one case in this process and returns its figures."""
  import jax  # noqa: PLC0415 (imported after the memory cap is set)
  import jax.numpy as jnp  # noqa: PLC0415

  from cascadejax.data.schema import CascadeBatch  # noqa: PLC0415
  from cascadejax.methods.lcron import LCRON  # noqa: PLC0415

  lcron = LCRON({"topk_method": method, "temperature": 1.0}, stage_names=("retrieval", "prerank"),
                ks=(n // 2, n // 4), gt_num=n // 4)
  keys = jax.random.split(jax.random.key(0), 3)
  scores = jax.random.normal(keys[0], (2, batch, n))
  data = CascadeBatch(user={}, items={}, stage=jnp.zeros((batch, n), jnp.int32),
                      label=jax.random.normal(keys[1], (batch, n)),
                      mask=jax.random.uniform(keys[2], (batch, n)) < 0.9)
  params = lcron.init(keys[0])
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
  parser.add_argument("--sizes", default="40,200,1000,10000")
  parser.add_argument("--iters", type=int, default=5)
  parser.add_argument("--memory-limit-gb", type=float, default=12.0)
  parser.add_argument("--timeout", type=int, default=600, help="seconds per case")
  parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: "method,n"
  args = parser.parse_args()
  limit = int(args.memory_limit_gb * 2**30)

  if args.case:
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    method, n = args.case.split(",")
    print(json.dumps(run_case(method, int(n), args.batch, args.iters)))
    return

  import jax  # noqa: PLC0415
  print(f"LCRON loss forward+backward, batch {args.batch}, {jax.devices()[0].device_kind}, "
        f"heap cap {args.memory_limit_gb:g} GB\n")
  print("| n | operator | ms / fwd+bwd | XLA temp buffers | peak RSS | time vs threshold |")
  print("|---|---|---|---|---|---|")
  for n in (int(x) for x in args.sizes.split(",")):
    rows = {}
    for method in TOPK_OPERATORS:
      matrix = args.batch * n * n * 4
      if method != "threshold" and matrix > limit:
        rows[method] = f"not run: one [B, n, n] matrix is {matrix / 2**30:.0f} GB"
        continue
      cmd = [sys.executable, __file__, "--case", f"{method},{n}", "--batch", str(args.batch),
             "--iters", str(args.iters), "--memory-limit-gb", str(args.memory_limit_gb)]
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
    base = rows.get("threshold")
    for method, r in rows.items():
      if isinstance(r, str):
        print(f"| {n} | {method} | {r} | | | |")
        continue
      ratio = f"{r['ms'] / base['ms']:.2f}x" if isinstance(base, dict) else ""
      print(f"| {n} | {method} | {r['ms']:.2f} | {r['temp_bytes'] / 2**20:,.1f} MB | "
            f"{r['peak_rss'] / 2**30:.2f} GB | {ratio} |", flush=True)


if __name__ == "__main__":
  main()
