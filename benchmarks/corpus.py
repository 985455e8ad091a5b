"""Exact top-k over a corpus on CPU: cascadejax.corpus.exact_top_k beside FAISS IndexFlatIP, in one run.

  pip install 'cascadejax[bench]'        # faiss-cpu, a benchmark-only dependency
  nice python benchmarks/corpus.py [--queries 1024] [--items 1000000] [--dim 64] [--k 100] [--rounds 3]

1. Tuning: exact_top_k at several (chunk_size, group_size) settings, each timed after compilation
   (the best of two calls), checked equal to the first setting's result.
2. Side by side, `--rounds` times in turn: the memory bandwidth (a copy of a 1 GiB array: bytes read
   + bytes written per second, as STREAM counts a copy; numpy on a CPU, a device copy on a GPU,
   where the fraction is of HBM), FAISS IndexFlatIP.search
   with every core (OpenMP), and exact_top_k at the best setting of step 1. On a shared machine the
   absolute figures move with the load; the ratios within a round are the comparison.

Bandwidth fraction = (bytes of the item table, read once per query batch) / seconds / copy bandwidth.
An exact top-k over 64-dim items is compute-bound on a CPU (2 * B * d flops per item byte / 4), so
this fraction is small here; it is the figure to watch on a GPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from cascadejax.corpus import approx_top_k, exact_top_k  # noqa: E402

SETTINGS = ((16384, 1), (16384, 8), (32768, 8), (32768, 16), (65536, 16), (65536, 32), (131072, 32))


def timed(fn, calls: int = 1) -> tuple[float, object]:
  """(the best seconds of `calls` calls, the last result)."""
  best, out = float("inf"), None
  for _ in range(calls):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - start)
  return best, out


def copy_bandwidth(gib: float = 1.0) -> float:
  """GB/s of a copy of a `gib` GiB float32 array, (read + written bytes) / seconds, best of 3: a numpy
  copy on a CPU backend, a jitted device copy (`x + 1` into the donated buffer) on an accelerator,
  where the table lives in device memory (HBM)."""
  n = int(gib * 2**30) // 4
  if jax.default_backend() == "cpu":
    src = np.ones(n, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    seconds, _ = timed(lambda: np.copyto(dst, src), 3)
  else:
    bump = jax.jit(lambda x: x + 1, donate_argnums=0)
    held = [jax.block_until_ready(bump(jnp.ones(n, jnp.float32)))]

    def step():
      held[0] = bump(held[0])
      return held[0]

    seconds, _ = timed(step, 3)
  return 2 * n * 4 / seconds / 1e9


def overlap(a: np.ndarray, b: np.ndarray) -> float:
  """Mean fraction of each row of `a` found in the same row of `b`."""
  return float(np.mean([len(np.intersect1d(x, y)) / len(x) for x, y in zip(a, b)]))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--queries", type=int, default=1024)
  parser.add_argument("--items", type=int, default=1_000_000)
  parser.add_argument("--dim", type=int, default=64)
  parser.add_argument("--k", type=int, default=100)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  try:
    import faiss
  except ImportError:
    sys.exit("benchmarks/corpus.py needs FAISS: pip install 'cascadejax[bench]' (or pip install faiss-cpu)")

  rng = np.random.default_rng(0)
  queries = rng.standard_normal((args.queries, args.dim), np.float32)
  items = rng.standard_normal((args.items, args.dim), np.float32)
  table_bytes = items.nbytes
  q, v = jnp.asarray(queries), jnp.asarray(items)
  print(f"{args.queries} queries x {args.items:,} items x {args.dim} float32 (table {table_bytes / 1e6:.0f} MB), "
        f"top-{args.k}; jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} cores), "
        f"faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads)")

  print("\n1. exact_top_k settings (best of 2 calls after compiling)")
  print("| chunk_size | group_size | seconds | queries/s |\n|---|---|---|---|")
  reference, best = None, None
  for chunk, group in SETTINGS:
    fn = jax.jit(lambda q, v, c=chunk, g=group: exact_top_k(q, v, args.k, chunk_size=c, group_size=g))
    jax.block_until_ready(fn(q, v))
    seconds, (_, index) = timed(lambda: fn(q, v), 2)
    index = np.asarray(index)
    if reference is None:
      reference = index
    assert np.array_equal(index, reference), f"chunk {chunk}, group {group}: a different top-k"
    print(f"| {chunk} | {group} | {seconds:.2f} | {args.queries / seconds:.0f} |", flush=True)
    if best is None or seconds < best[0]:
      best = (seconds, chunk, group, fn)
  _, chunk, group, jax_fn = best
  approx = jax.jit(lambda q, v: approx_top_k(q, v, args.k, chunk_size=chunk, recall_target=0.95))
  jax.block_until_ready(approx(q, v))
  seconds, (_, approx_index) = timed(lambda: approx(q, v), 2)
  print(f"approx_top_k (chunk {chunk}; exact on CPU): {seconds:.2f} s, {args.queries / seconds:.0f} queries/s, "
        f"equal to exact: {np.array_equal(np.asarray(approx_index), reference)}")

  index = faiss.IndexFlatIP(args.dim)
  index.add(items)
  _, faiss_index = index.search(queries, args.k)
  print(f"\nexact_top_k vs FAISS: {overlap(reference, faiss_index):.5f} of the items agree, "
        f"identical rows {np.mean(np.all(reference == faiss_index, 1)):.3f} (float rounding differs)")

  print(f"\n2. side by side, {args.rounds} rounds (exact_top_k at chunk_size {chunk}, group_size {group})")
  print("| round | copy GB/s | FAISS s | FAISS q/s | JAX s | JAX q/s | JAX / FAISS | JAX table GB/s | "
        "fraction of copy bandwidth |\n|---|---|---|---|---|---|---|---|---|")
  rows = []
  for r in range(args.rounds):
    bandwidth = copy_bandwidth()
    faiss_s, _ = timed(lambda: index.search(queries, args.k))
    jax_s, _ = timed(lambda: jax_fn(q, v))
    rows.append((bandwidth, faiss_s, jax_s))
    print(f"| {r + 1} | {bandwidth:.1f} | {faiss_s:.2f} | {args.queries / faiss_s:.0f} | {jax_s:.2f} | "
          f"{args.queries / jax_s:.0f} | {faiss_s / jax_s:.2f}x | {table_bytes / jax_s / 1e9:.3f} | "
          f"{table_bytes / jax_s / 1e9 / bandwidth:.4f} |", flush=True)
  bandwidth, faiss_s, jax_s = (statistics.median(x) for x in zip(*rows))
  print(f"| median | {bandwidth:.1f} | {faiss_s:.2f} | {args.queries / faiss_s:.0f} | {jax_s:.2f} | "
        f"{args.queries / jax_s:.0f} | {faiss_s / jax_s:.2f}x | {table_bytes / jax_s / 1e9:.3f} | "
        f"{table_bytes / jax_s / 1e9 / bandwidth:.4f} |")


if __name__ == "__main__":
  main()
