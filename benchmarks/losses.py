"""LambdaRank and LambdaLoss: cascadejax's tiled kernel against rax, forward+backward, side by side.

  python benchmarks/losses.py [--batch 1024] [--sizes 50,200,1000] [--losses lambdarank,lambdaloss]
                              [--timeout 300] [--rax-timeout 300] [--rax-mem-gb GB] [--min-time 5]

Every case (implementation, loss, list size n) runs in a fresh subprocess, so its peak resident
memory (`ru_maxrss`, which includes the ~0.3 GB of Python + JAX) is its own. A case builds the same
seeded batch (graded labels 0..4, list lengths uniform in [n/2, n], the rest padding), jits
`value_and_grad` of the mean loss, compiles it, makes one warm-up call, then times calls until
`--min-time` seconds and at least 3 calls have passed and reports the median.

The rax equivalents are `rax.pairwise_logistic_loss` with the lambda weights `dcg_lambdaweight
(normalize=True)` (= `lambdarank_loss`) and `dcg_lambdaweight + 10 * dcg2_lambdaweight` (both
normalised; = `lambdaloss`, scheme "ndcg2++", mu = 10). rax forms `[B, n * n]` tensors, so to
protect whatever else runs on the machine a rax case reads XLA's compiled temporary size first and
is not run when that exceeds the memory it may use (`--rax-mem-gb`, which then is also its hard
address-space limit; default: MemAvailable minus 2 GB, no hard limit), and it marks itself as the
first process the kernel's OOM killer takes. A case past its timeout is killed and reported as "did
not finish in X s", with how far it got (its compile, warm-up and timed calls report as they end).
The loss values of the two implementations are compared when both finish.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GB = 1 << 30


def mem_available() -> int:
  """Bytes the kernel reports as available (MemAvailable)."""
  with open("/proc/meminfo") as f:
    for line in f:
      if line.startswith("MemAvailable:"):
        return int(line.split()[1]) * 1024
  return 0


def make_batch(batch: int, n: int, seed: int = 0):
  """Scores ~ N(0, 1), labels uniform in {0..4}, list lengths uniform in [n/2, n] (then padding)."""
  rng = np.random.default_rng(seed)
  scores = rng.normal(size=(batch, n)).astype(np.float32)
  labels = rng.integers(0, 5, size=(batch, n)).astype(np.float32)
  lengths = rng.integers(n // 2, n + 1, size=(batch, 1))
  return scores, labels, np.arange(n)[None, :] < lengths


def loss_fn(impl: str, loss: str):
  """The mean loss `f(scores, labels, where)` of one implementation."""
  if impl == "ours":
    from cascadejax import losses
    return {"lambdarank": losses.lambdarank_loss, "lambdaloss": losses.lambdaloss}[loss]
  import rax
  if loss == "lambdarank":
    weight = functools.partial(rax.dcg_lambdaweight, normalize=True)
  else:
    def weight(scores, labels, **kw):
      return (rax.dcg_lambdaweight(scores, labels, normalize=True, **kw)
              + 10.0 * rax.dcg2_lambdaweight(scores, labels, normalize=True, **kw))
  return functools.partial(rax.pairwise_logistic_loss, lambdaweight_fn=weight)


def run_case(impl: str, loss: str, n: int, batch: int, min_time: float, mem_cap: float | None) -> dict:
  """Compiles, warms up and times one case in this process; returns its figures."""
  if impl == "rax":
    with open("/proc/self/oom_score_adj", "w") as f:   # if memory runs out, take this process first
      f.write("1000")
    if mem_cap:
      resource.setrlimit(resource.RLIMIT_AS, (int(mem_cap * GB), int(mem_cap * GB)))
  import jax
  import jax.numpy as jnp
  out = {"impl": impl, "loss": loss, "n": n, "batch": batch}
  scores, labels, where = map(jnp.asarray, make_batch(batch, n))
  fn = loss_fn(impl, loss)
  step = jax.jit(jax.value_and_grad(lambda s, y, w: fn(s, y, where=w)))
  start = time.perf_counter()
  compiled = step.lower(scores, labels, where).compile()
  out["compile_s"] = time.perf_counter() - start
  out["temp_gb"] = compiled.memory_analysis().temp_size_in_bytes / GB
  out["base_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB
  out["status"] = "compiled"
  report(out)
  if impl == "rax":
    may_use = mem_cap * GB if mem_cap else mem_available() - 2 * GB
    if out["temp_gb"] * GB > may_use - 1.5 * GB:
      out["status"] = f"not run: needs {out['temp_gb']:.1f} GB of temporaries, may use {may_use / GB:.1f} GB"
      return out
  start = time.perf_counter()
  value, _ = jax.block_until_ready(compiled(scores, labels, where))   # warm-up
  out.update(status="warmed up", warmup_s=time.perf_counter() - start, loss_value=float(value))
  report(out)
  times = []
  while sum(times) < min_time or len(times) < 3:
    start = time.perf_counter()
    jax.block_until_ready(compiled(scores, labels, where))
    times.append(time.perf_counter() - start)
    out.update(status=f"{len(times)} timed calls", times_s=times)
    report(out)
  out.update(status="ok", step_s=statistics.median(times), iters=len(times),
             peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB)
  return out


def report(out: dict) -> None:
  """One JSON line per finished stage of a case; the parent reads the last one."""
  print(json.dumps(out), flush=True)


def spawn(impl, loss, n, args) -> dict:
  """Runs one case in a fresh interpreter under its timeout."""
  timeout = args.rax_timeout if impl == "rax" else args.timeout
  cmd = [sys.executable, os.path.abspath(__file__), "--case", f"{impl}:{loss}:{n}", "--batch", str(args.batch),
         "--min-time", str(args.min_time)] + (["--rax-mem-gb", str(args.rax_mem_gb)] if args.rax_mem_gb else [])
  start = time.perf_counter()
  last = lambda text: next((json.loads(l) for l in reversed((text or "").splitlines()) if l.startswith("{")),
                           {"impl": impl, "loss": loss, "n": n, "status": "started"})
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired as e:
    out = last(e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout)
    warm = f", warm-up call {out['warmup_s']:.0f} s" if "warmup_s" in out else ""
    out["status"] = f"did not finish in {timeout:.0f} s (had {out['status']}{warm})"
    return out
  out = last(proc.stdout)
  if proc.returncode != 0:
    err = proc.stderr.strip().splitlines() or ["?"]
    out["stderr_tail"] = err[-5:]
    out["status"] = (f"failed after {time.perf_counter() - start:.0f} s (exit {proc.returncode}, had "
                     f"{out['status']}): {err[-1][:100]}")
  return out


def fmt_time(r):
  return f"{r['step_s'] * 1e3:,.0f} ms" if r.get("status") == "ok" else r["status"]


def fmt_mem(r):
  return f"{r['peak_rss_gb']:.2f} GB" if r.get("status") == "ok" else "-"


def fmt_temp(r, digits):
  return f"{r['temp_gb']:.{digits}f} GB" if "temp_gb" in r else "-"


def main() -> None:
  """Runs every case in its own subprocess and prints the side-by-side table."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=1024)
  parser.add_argument("--sizes", default="50,200,1000")
  parser.add_argument("--losses", default="lambdarank,lambdaloss")
  parser.add_argument("--timeout", type=float, default=300.0, help="seconds per cascadejax case")
  parser.add_argument("--rax-timeout", type=float, default=300.0, help="seconds per rax case")
  parser.add_argument("--rax-mem-gb", type=float, default=None,
                      help="memory a rax case may use, also enforced as its address-space limit "
                           "(default: MemAvailable - 2 GB, checked before running, not enforced)")
  parser.add_argument("--min-time", type=float, default=5.0, help="seconds of timed calls per case")
  parser.add_argument("--json", default=None, help="also write every case's figures to this file")
  parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.case:
    impl, loss, n = args.case.split(":")
    print(json.dumps(run_case(impl, loss, int(n), args.batch, args.min_time, args.rax_mem_gb)), flush=True)
    return

  import jax
  print(f"batch {args.batch}; {os.cpu_count()} CPU cores, jax {jax.__version__}; "
        f"MemAvailable {mem_available() / GB:.1f} GB; median forward+backward after warm-up", flush=True)
  rows, results = [], []
  for n in map(int, args.sizes.split(",")):
    for loss in args.losses.split(","):
      ours, theirs = spawn("ours", loss, n, args), spawn("rax", loss, n, args)
      results += [ours, theirs]
      both = ours.get("status") == "ok" and theirs.get("status") == "ok"
      speedup = f"{theirs['step_s'] / ours['step_s']:.1f}x" if both else "-"
      agree = (f"{abs(ours['loss_value'] - theirs['loss_value']) / abs(theirs['loss_value']):.1e}"
               if both else "-")
      rows.append((loss, n, fmt_time(ours), fmt_time(theirs), speedup, fmt_mem(ours), fmt_mem(theirs),
                   fmt_temp(ours, 3), fmt_temp(theirs, 2),
                   agree))
      print(f"  {loss} n={n}: ours {fmt_time(ours)}, rax {fmt_time(theirs)}", flush=True)
  header = ("loss", "n", "cascadejax", "rax", "speedup", "cascadejax peak RSS", "rax peak RSS",
            "cascadejax XLA temp", "rax XLA temp", "loss rel. diff")
  print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
  for row in rows:
    print("| " + " | ".join(map(str, row)) + " |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
