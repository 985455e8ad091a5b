"""Embedding lookups and row updates: bytes/s against the copy ceiling, and sparse vs dense by device count.

  python benchmarks/embedding.py --bandwidth [--ids N] [--table-rows V] [--dim 128] [--bag-bw 20]
                                 [--rounds 5] [--only SUBSTRINGS]
  python benchmarks/embedding.py [--rows 2000000] [--dim 64] [--batch 4096] [--bag 32]
                                 [--devices 1,2,4,8] [--routings gather,all_to_all,all_to_all:2] [--iters 5]
                                 [--platform cpu|cuda|tpu] [--peak-gbps GB/s]

--bandwidth (issue 23): one process on the default device (CPU here, the GPU where there is one: the
same command), re-executed with huge pages as train.py is (`cascadejax.huge_pages`;
`CASCADEJAX_HUGE_PAGES=0` runs it without). Sizes come from the device: 1M ids (8M on an accelerator, halved until Adam's
working set fits 60% of its memory) x dim 128 float32, a table of twice as many rows, uniform ids.
Each path is jitted and timed round-robin with the ceiling (`--rounds`; the medians are printed and
the fraction is the median of each round's ratio to that round's ceiling). The ceiling is the
faster of two copies of a 256 MiB (1 GiB) float32 array, `x + 1` into a fresh output and `y + 1`
donated (in place); both are printed. Bytes are what the operation must move at least, each byte
once: a gather of B ids reads the ids (4 B) and B rows (B D 4) and writes B rows; a pooled lookup
of bags reads the ids and their rows and writes one row per bag; a row update reads the ids and
their gradients (B D 4) and reads and writes each distinct row (U of them, counted) of the table
and of every optimizer-state array (Adagrad 1, Adam 2). Paths: the plain-jnp floors (`table[ids]`,
`jnp.take`, `.sum(1)`, `segment_sum`, `.at[].add`) and the library's (`cascadejax.embedding`:
`sharded.lookup` with no mesh and with a one-device mesh as a training step runs it, `pool`,
`masked_mean`, `owner_row_grads` and `update_rows` as `RowSparseUpdate` runs them).

Workload: a `[rows, dim]` float32 table; each step looks up `batch` bags of `bag` ids (uniform over
the table, so few repeat: the worst case for deduplication), mean-pools each bag, and takes the
gradient of a fixed linear function of the pooled vectors.

  dense:   `jnp.take` on the whole table, `jax.value_and_grad` (a `[rows, dim]` gradient) and
           `optax.adam` over the whole table, on one device: what the framework does without
           `config.embedding.sharded`.
  sparse:  `cascadejax.embedding.sharded.lookup` with a gradient tap, `owner_row_grads` and lazy Adam
           (`update_rows` with `RowRule("adam")`) on the rows looked up; the table and its Adam state
           row-sharded (mod placement) over n forced CPU devices, mesh (data n, model 1), split over
           both axes, batch split over data. Routing `all_to_all:F` bounds the buckets with
           capacity_factor F (the ids are uniform, so F = 2 drops none here; the table says so).

Every case runs in a fresh subprocess (its own device count, its own peak RSS), jitted with the
state donated, timed (median of --iters) after warm-up steps. Columns: ms per lookup (forward only) and per full step
(lookup + gradient + update), ids/s of the full step, the process's peak RSS (table, optimizer
state and runtime) and XLA's temporary buffers of the step. Forced CPU devices share this machine's
cores, so the device columns show the cost of the routing, not a speed-up.

Without --bandwidth: `lookup GB/s` is the bytes of the rows a lookup gathers (batch x bag x dim x 4) over
its time. On an accelerator (`--platform cuda` or `tpu`: real devices, so `--devices` must not
exceed the machine's), `--peak-gbps` (the device's memory bandwidth from its data sheet, e.g. 3350
for an H100 SXM) adds that figure as a fraction of the peak.
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

if __name__ == "__main__":  # as train.py: glibc's malloc asks for huge pages (CASCADEJAX_HUGE_PAGES=0: without)
  from cascadejax import huge_pages
  huge_pages.reexec()


def _timed(fn, *args, iters: int) -> tuple[float, object]:
  import jax  # noqa: PLC0415 (imported after XLA_FLAGS is set)

  out = jax.block_until_ready(fn(*args))  # warm-up (and compilation)
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return sorted(times)[len(times) // 2] * 1e3, out  # median: other processes share these cores


def run_case(kind: str, devices: int, routing: str, a: argparse.Namespace) -> dict:
  """Times one case in this process (which must have `devices` devices) and returns its figures."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  import optax  # noqa: PLC0415
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: PLC0415

  from cascadejax.embedding import sharded as se  # noqa: PLC0415
  from cascadejax.embedding.row_rules import RowRule  # noqa: PLC0415

  assert jax.device_count() == devices, (jax.device_count(), devices)
  ids = jax.random.randint(jax.random.key(1), (a.batch, a.bag), 0, a.rows, jnp.int32)
  w = jax.random.normal(jax.random.key(2), (a.batch, a.dim))
  mask = jnp.ones((a.batch, a.bag), bool)
  # Tables are filled with a cheap row pattern, not a random draw: values do not change the timings,
  # and drawing 10M x 64 normals would peak at several times the table's memory before training.
  init = lambda rows: (jnp.arange(rows, dtype=jnp.float32)[:, None] % 97 - 48) * 1e-3 + jnp.zeros((1, a.dim))

  if kind == "dense":
    tx = optax.adam(1e-3)
    table = jax.jit(lambda: init(a.rows))()
    state = (table, tx.init(table))
    loss = lambda t, ids: jnp.sum(se.pool(jnp.take(t, ids, axis=0), mask, "mean") * w)

    def step(state, ids):
      t, opt = state
      g = jax.grad(loss)(t, ids)
      updates, opt = tx.update(g, opt, t)
      return optax.apply_updates(t, updates), opt

    lookup = jax.jit(lambda t, ids: se.pool(jnp.take(t, ids, axis=0), mask, "mean"))
    step = jax.jit(step, donate_argnums=0)
    call = lambda fn: (lambda *x: fn(*x))
  else:
    mesh = Mesh(np.asarray(jax.devices()).reshape(devices, 1), ("data", "model"))
    route, _, factor = routing.partition(":")
    s = se.TableSharding(axes=("data", "model"), num_shards=devices, placement="mod", routing=route,
                         capacity_factor=float(factor or 0))
    rule = RowRule("adam")
    rows = NamedSharding(mesh, P(s.axes))
    table = jax.jit(lambda: init(devices * s.rows_per_shard(a.rows)), out_shardings=rows)()
    state = (table, jax.jit(rule.init, out_shardings={"mu": rows, "nu": rows})(table), jnp.int32(0), jnp.int32(0))
    ids = jax.device_put(ids, NamedSharding(mesh, P("data")))

    def step(state, ids):
      t, opt, count, _ = state
      tap = jnp.zeros(ids.shape + (a.dim,))
      g = jax.grad(lambda tap: jnp.sum(se.pool(se.lookup(t, ids, s, a.rows, tap=tap), mask, "mean") * w))(tap)
      grads = se.owner_row_grads(ids, g, s, a.rows)
      t, opt = se.update_rows(t, opt, grads, rule, s, jnp.float32(-1e-3), count + 1)
      return t, opt, count + 1, grads.dropped

    lookup = jax.jit(lambda t, ids: se.pool(se.lookup(t, ids, s, a.rows), mask, "mean"))
    step = jax.jit(step, donate_argnums=0)

    def call(fn):
      def run(*x):
        with jax.set_mesh(mesh):
          return fn(*x)
      return run

  lookup_ms, _ = _timed(call(lookup), state[0], ids, iters=a.iters)
  temp = call(lambda *x: step.lower(*x).compile())(state, ids).memory_analysis().temp_size_in_bytes
  for _ in range(2):  # warm-up: the first output may come back with other shardings than the input
    state = jax.block_until_ready(call(step)(state, ids))
  times = []
  for _ in range(a.iters):
    start = time.perf_counter()
    state = jax.block_until_ready(call(step)(state, ids))
    times.append(time.perf_counter() - start)
  step_ms = sorted(times)[len(times) // 2] * 1e3  # median: other processes share these cores
  dropped = int(state[3]) if kind == "sparse" else 0
  return {"kind": kind, "devices": devices, "routing": routing if kind == "sparse" else "-", "dropped_ids": dropped,
          "device_kind": jax.devices()[0].device_kind, "lookup_ms": lookup_ms,
          "lookup_gbps": a.batch * a.bag * a.dim * 4 / lookup_ms / 1e6, "step_ms": step_ms, "ids_per_s": a.batch * a.bag / step_ms * 1e3,
          "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "temp_gb": temp / 2**30}


def main() -> None:
  """Runs every case in its own subprocess and prints the table (and one JSON line per case)."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--rows", type=int, default=2_000_000)
  p.add_argument("--dim", type=int, default=None, help="default 64, or 128 with --bandwidth")
  p.add_argument("--batch", type=int, default=4096)
  p.add_argument("--bag", type=int, default=32, help="ids per request (mean-pooled)")
  p.add_argument("--devices", default="1,2,4,8")
  p.add_argument("--routings", default="gather,all_to_all,all_to_all:2", help="all_to_all:F = capacity factor F")
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--platform", default="cpu", help="cpu (forced devices) or an accelerator: cuda, tpu")
  p.add_argument("--peak-gbps", type=float, default=0.0, help="device memory bandwidth, to report lookup GB/s against")
  p.add_argument("--bandwidth", action="store_true", help="the bandwidth table (module docstring) instead")
  p.add_argument("--ids", type=int, default=0, help="--bandwidth: ids per lookup (0: from the device)")
  p.add_argument("--table-rows", type=int, default=0, help="--bandwidth: table rows (0: twice the ids)")
  p.add_argument("--bag-bw", type=int, default=20, help="--bandwidth: ids per pooled bag")
  p.add_argument("--rounds", type=int, default=5, help="--bandwidth: timed rounds over every case")
  p.add_argument("--only", default="", help="--bandwidth: comma-separated substrings of the paths to run")
  p.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: kind,devices,routing
  a = p.parse_args()
  if a.bandwidth:
    from benchmarks.embedding_bandwidth import bandwidth  # noqa: PLC0415

    a.dim = a.dim or 128
    bandwidth(a)
    return
  a.dim = a.dim or 64
  if a.case:
    kind, devices, routing = a.case.split(",")
    print(json.dumps(run_case(kind, int(devices), routing, a)), flush=True)
    return

  table_gb = a.rows * a.dim * 4 / 2**30
  print(f"table {a.rows:,} x {a.dim} float32 ({table_gb:.2f} GiB); batch {a.batch} x bag {a.bag} = "
        f"{a.batch * a.bag:,} ids per step", flush=True)
  cases = [("dense", 1, "-")] + [("sparse", int(n), r) for n in a.devices.split(",") for r in a.routings.split(",")]
  results = []
  header = (f"{'path':8} {'dev':>4} {'routing':13} {'lookup ms':>10} {'lookup GB/s':>12} {'step ms':>9} {'ids/s':>12} "
            f"{'peak RSS GB':>12} {'temp GB':>8} {'dropped':>8}")
  print(header, flush=True)
  for kind, n, routing in cases:
    env = {**os.environ, "JAX_PLATFORMS": a.platform}
    if a.platform == "cpu":
      env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
    else:  # real devices: the first n of them
      env["CUDA_VISIBLE_DEVICES" if a.platform == "cuda" else "TPU_VISIBLE_CHIPS"] = ",".join(map(str, range(n)))
    args = [sys.executable, os.path.abspath(__file__), f"--case={kind},{n},{routing}"] + [
        f"--{k}={getattr(a, k)}" for k in ("rows", "dim", "batch", "bag", "iters")]
    out = subprocess.run(args, env=env, capture_output=True, text=True)
    if out.returncode:
      print(f"{kind:8} {n:>4} {routing:13} failed: {out.stderr.strip().splitlines()[-1:]}", flush=True)
      continue
    r = json.loads(out.stdout.strip().splitlines()[-1])
    results.append(r)
    print(f"{kind:8} {n:>4} {r['routing']:13} {r['lookup_ms']:>10.1f} {r['lookup_gbps']:>12.2f} {r['step_ms']:>9.1f} "
          f"{r['ids_per_s']:>12,.0f} "
          f"{r['peak_rss_gb']:>12.2f} {r['temp_gb']:>8.2f} {r['dropped_ids']:>8}", flush=True)
  if a.peak_gbps > 0:
    for r in results:
      print(f"{r['kind']} {r['devices']} dev {r['routing']}: lookup at {r['lookup_gbps'] / a.peak_gbps:.1%} of "
            f"{a.peak_gbps:,.0f} GB/s ({r['device_kind']})")
  dense = next((r for r in results if r["kind"] == "dense"), None)
  if dense:
    for r in results:
      if r["kind"] == "sparse":
        print(f"sparse {r['devices']} dev {r['routing']}: {dense['step_ms'] / r['step_ms']:.1f}x the dense step")
  for r in results:
    print(json.dumps(r))


if __name__ == "__main__":
  main()
