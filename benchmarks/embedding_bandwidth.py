"""The `--bandwidth` table of `benchmarks/embedding.py` (its docstring says what is measured and how bytes count)."""

from __future__ import annotations

import argparse
import json
import os
import time


def _sizes(a: argparse.Namespace, device) -> tuple[int, int, int]:
  """(ids, table rows, copy elements): the CLI's, else picked from the device (halved until the
  Adam case's working set fits in 60% of the device's memory where it reports a limit)."""
  cpu = device.platform == "cpu"
  n = a.ids or (1 << 20 if cpu else 1 << 23)
  rows = a.table_rows or 2 * n
  limit = (device.memory_stats() or {}).get("bytes_limit", 0)
  while limit and not (a.ids or a.table_rows) and (3 * rows + 6 * n) * a.dim * 4 > 0.6 * limit:
    n, rows = n // 2, rows // 2
  return n, rows, (64 << 20) if cpu else (256 << 20)


def bandwidth(a: argparse.Namespace) -> None:
  """Times every lookup / update path against the copy ceiling, round-robin, and prints the table."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  from jax.sharding import Mesh  # noqa: PLC0415

  from cascadejax.embedding import sharded as se  # noqa: PLC0415
  from cascadejax.embedding.collection import masked_mean  # noqa: PLC0415
  from cascadejax.embedding.row_rules import RowRule  # noqa: PLC0415

  device = jax.devices()[0]
  n, rows, copy_n = _sizes(a, device)
  d, bag = a.dim, a.bag_bw
  bags = n // bag
  keys = jax.random.split(jax.random.key(0), 4)
  S = {"x": jnp.ones((copy_n,), jnp.float32), "y": jnp.ones((copy_n,), jnp.float32),
       "table": jax.random.normal(keys[0], (rows, d)) * 0.05,
       "ids": jax.random.randint(keys[1], (n,), 0, rows, jnp.int32),
       "bag_ids": jax.random.randint(keys[2], (bags, bag), 0, rows, jnp.int32),
       "g": jax.random.normal(keys[3], (n, d)) * 1e-3}
  u = int(np.unique(np.asarray(S["ids"])).size)  # distinct rows the update touches
  adagrad, adam = RowRule("adagrad"), RowRule("adam")
  S.update(acc=adagrad.init(S["table"])["sum_of_squares"], mu=jnp.zeros_like(S["table"]), nu=jnp.zeros_like(S["table"]))
  s = se.TableSharding(axes=("model",), num_shards=1)
  mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
  lr = jnp.float32(-1e-3)
  row, idb = d * 4, 4  # bytes of one row, of one id
  gather_b = n * idb + 2 * n * row  # ids read, rows read, rows written
  pool_b = bags * bag * idb + bags * bag * row + bags * row  # ids, rows read, pooled vectors written
  grads_b = n * idb + n * row  # per-id gradients and their ids, read once

  def lib_lookup(t, ids):
    return se.lookup(t, ids[:, None], s, rows)[:, 0]

  def lib_pool(combiner):
    return lambda t, ids: se.pool(se.lookup(t, ids, s, rows), ids > 0, combiner)

  def row_update(rule, names):
    def step(t, *rest):
      *state, ids, g = rest
      grads = se.owner_row_grads(ids[:, None], g[:, None], s, rows)
      t, new = se.update_rows(t, dict(zip(names, state)), grads, rule, s, lr, jnp.int32(1))
      return (t, *[new[k] for k in names])
    return step

  # (group, path, function, argument keys, keys it donates and returns, bytes, mesh?)
  cases = [
      ("ceiling", "x + 1 (fresh output)", lambda x: x + 1, ("x",), (), 2 * copy_n * 4, False),
      ("ceiling", "y + 1 (in place, donated)", lambda y: y + 1, ("y",), ("y",), 2 * copy_n * 4, False),
      ("gather", "jnp: table[ids]", lambda t, i: t[i], ("table", "ids"), (), gather_b, False),
      ("gather", "jnp: jnp.take", lambda t, i: jnp.take(t, i, axis=0), ("table", "ids"), (), gather_b, False),
      ("gather", "lib: sharded.lookup, no mesh", lib_lookup, ("table", "ids"), (), gather_b, False),
      ("gather", "lib: sharded.lookup, 1-device mesh", lib_lookup, ("table", "ids"), (), gather_b, True),
      ("pool sum", "jnp: take(...).sum(1)", lambda t, i: jnp.take(t, i, axis=0).sum(1), ("table", "bag_ids"), (),
       pool_b, False),
      ("pool sum", "jnp: segment_sum(take(flat))",
       lambda t, i: jax.ops.segment_sum(jnp.take(t, i.reshape(-1), axis=0), jnp.repeat(jnp.arange(bags), bag),
                                        num_segments=bags, indices_are_sorted=True), ("table", "bag_ids"), (), pool_b, False),
      ("pool sum", "lib: pool(lookup), 1-device mesh", lib_pool("sum"), ("table", "bag_ids"), (), pool_b, True),
      ("pool mean", "jnp: take(...).mean(1)", lambda t, i: jnp.take(t, i, axis=0).mean(1), ("table", "bag_ids"), (),
       pool_b, False),
      ("pool mean", "lib: pool(lookup), 1-device mesh", lib_pool("mean"), ("table", "bag_ids"), (), pool_b, True),
      ("pool mean", "lib: masked_mean(lookup), 1-device mesh",
       lambda t, i: masked_mean(se.lookup(t, i, s, rows), i > 0), ("table", "bag_ids"), (), pool_b, True),
      ("row update", "jnp: table.at[ids].add(lr g)", lambda t, i, g: t.at[i].add(lr * g), ("table", "ids", "g"),
       ("table",), grads_b + 2 * u * row, False),
      ("row update", "jnp: segment_sum -> dense [V, D] grad",
       lambda i, g: jax.ops.segment_sum(g, i, num_segments=rows), ("ids", "g"), (), grads_b + rows * row, False),
      ("row update", "lib: owner_row_grads (dedup)", lambda i, g: se.owner_row_grads(i[:, None], g[:, None], s, rows),
       ("ids", "g"), (), grads_b + u * (row + idb), True),
      ("row update", "lib: row grads + adagrad rows", row_update(adagrad, ("sum_of_squares",)),
       ("table", "acc", "ids", "g"), ("table", "acc"), grads_b + 4 * u * row, True),
      ("row update", "lib: row grads + adam rows", row_update(adam, ("mu", "nu")),
       ("table", "mu", "nu", "ids", "g"), ("table", "mu", "nu"), grads_b + 6 * u * row, True),
  ]
  if a.only:
    cases = [c for c in cases if c[0] == "ceiling" or any(w in c[1] for w in a.only.split(","))]

  def runner(fn, args, donated, on_mesh):
    f = jax.jit(fn, donate_argnums=tuple(range(len(donated))))

    def run():
      out = f(*[S[k] for k in args])
      if donated:
        S.update(zip(donated, out if isinstance(out, tuple) else (out,)))
      return out
    if not on_mesh:
      return run

    def in_mesh():
      with jax.set_mesh(mesh):
        return run()
    return in_mesh

  runs = [runner(fn, args, don, m) for _, _, fn, args, don, _, m in cases]
  for r in runs:  # compile and warm up
    jax.block_until_ready(r())
  times = np.zeros((a.rounds, len(cases)))
  for i in range(a.rounds):  # round-robin: load from other processes hits every case alike
    for j, r in enumerate(runs):
      start = time.perf_counter()
      jax.block_until_ready(r())
      times[i, j] = time.perf_counter() - start
  gbps = np.array([c[5] for c in cases]) / times / 1e9
  ceiling = gbps[:, :2].max(1)  # per round: the faster of the two copies
  frac = np.median(gbps / ceiling[:, None], 0)
  print(f"device {device.device_kind} ({device.platform}); ids {n:,} x dim {d} float32, table {rows:,} rows "
        f"({rows * row / 2**30:.2f} GiB), {u:,} distinct ids; bags {bags:,} x {bag}; copy {copy_n * 4 / 2**20:.0f} MiB; "
        f"medians of {a.rounds} rounds, ceiling {np.median(ceiling):.2f} GB/s; "
        f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}", flush=True)
  print(f"{'group':11} {'path':44} {'ms':>9} {'GB':>7} {'GB/s':>8} {'ceiling':>8} {'fraction':>9}")
  for j, (group, path, *_rest) in enumerate(cases):
    print(f"{group:11} {path:44} {np.median(times[:, j]) * 1e3:>9.1f} {cases[j][5] / 1e9:>7.3f} "
          f"{np.median(gbps[:, j]):>8.2f} {np.median(ceiling):>8.2f} {frac[j]:>9.1%}")
  goal = 0.3 if device.platform == "cpu" else 0.5
  for j, (group, path, *_rest) in enumerate(cases):
    if group in ("gather", "row update") and path.startswith("lib"):
      print(f"goal {goal:.0%} of the ceiling: {group}, {path}: {frac[j]:.1%} {'met' if frac[j] >= goal else 'NOT met'}")
  for j, c in enumerate(cases):
    print(json.dumps({"group": c[0], "path": c[1], "ms": float(np.median(times[:, j]) * 1e3), "bytes": c[5],
                      "gbps": float(np.median(gbps[:, j])), "ceiling_gbps": float(np.median(ceiling)),
                      "fraction": float(frac[j]), "device_kind": device.device_kind}))
