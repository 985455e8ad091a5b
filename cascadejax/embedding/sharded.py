"""Row-sharded embedding tables: layout, lookup with sparse row gradients, row-wise updates.

The layout (`cascadejax.embedding.layout.TableSharding`) splits a table of V rows into K blocks of
R = ceil(V / K) rows, one per device of its mesh axes, stored as the physical array `[K R, D]`.

`lookup(table, ids)` returns `jnp.take(logical_table, ids)` for ids `[B, T]` split over the data axis,
routing each device's ids to their owners and the rows back (`cascadejax.embedding.routing`:
all-gather + psum, or all-to-all). Its `custom_vjp` backward never forms a dense `[V, D]` gradient
on the way: it routes per-id gradients to the owners. With `tap=`, the per-id gradients come out
as the tap's cotangent, `owner_row_grads` routes them to their owners and sums duplicates there
(`routing.dedup`: fixed-size, sort-free + `segment_sum`), and `update_rows` applies a row-wise rule
(`cascadejax.embedding.row_rules`) to exactly those rows. `pool` sums or averages multi-valued features
(e.g. history sequences).

The mesh comes from the context (`jax.set_mesh`); without one (initialisation, serving exports)
lookups read the physical table directly, with the same result.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from cascadejax.embedding import routing
from cascadejax.embedding.layout import TableSharding

# ---- ids of one table, gathered from a batch's features ----
def table_ids(features: Sequence[Any], user: Mapping[str, jax.Array], items: Mapping[str, jax.Array]) -> jax.Array:
  """`[B, T]`: the ids every feature in `features` (all of one table) looks up, per request."""
  parts = [jnp.asarray((user if f.side == "user" else items)[f.name]) for f in features]
  return jnp.concatenate([p.reshape(p.shape[0], -1) for p in parts], axis=1).astype(jnp.int32)


def split_rows(vectors: jax.Array, features: Sequence[Any], user: Mapping[str, jax.Array],
               items: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """Inverse of `table_ids` for looked-up vectors `[B, T, D]`: feature name -> `[*ids shape, D]`."""
  out, start = {}, 0
  for f in features:
    shape = jnp.shape((user if f.side == "user" else items)[f.name])
    width = math.prod(shape[1:])
    out[f.name] = vectors[:, start:start + width].reshape(*shape, vectors.shape[-1])
    start += width
  return out


def pool(vectors: jax.Array, mask: jax.Array, combiner: str) -> jax.Array:
  """Sum or mean of `vectors [..., T, D]` over the T values where `mask [..., T]` is True (0 if none)."""
  if combiner not in ("sum", "mean"):
    raise ValueError(f"combiner must be 'sum' or 'mean', got {combiner!r}")
  w = mask.astype(vectors.dtype)[..., None]
  total = (vectors * w).sum(-2)
  return total if combiner == "sum" else total / jnp.maximum(w.sum(-2), 1.0)


def lookup(table: jax.Array, ids: jax.Array, sharding: TableSharding, vocab: int, *,
           tap: jax.Array | None = None) -> jax.Array:
  """Rows of a row-sharded table.

  Args:
    table: `[K R, D]` physical table (`TableSharding.to_physical` of the logical `[V, D]`).
    ids: `[B, T]` int ids in `[0, vocab)`; others read zeros. `B` splits over the data axis.
    sharding: the table's layout and routing.
    vocab: V, the logical row count.
    tap: None: gradients reach `table` as its ordinary cotangent, routed to the owning shards and
      scatter-added there. Else a `[B, T, D]` zeros array whose cotangent receives the gradient of
      every looked-up id (turn them into deduplicated row gradients at the owners with
      `owner_row_grads`); the table then gets no cotangent at all.

  Returns:
    `[B, T, D]` rows, equal to `jnp.take(logical_table, ids, axis=0)`.
  """
  plan = routing.plan_for(sharding, vocab, ids.shape[0])
  if tap is None:
    return routing.lookup_dense(plan, table, ids) if not plan.local else routing.forward(plan, table, ids)
  return routing.lookup_tap(plan, table, ids, tap)


# ---- sparse updates at the owners ----
@flax.struct.dataclass
class RowGrads:
  """Deduplicated row gradients at their owners.

  Attributes:
    index: `[K S]` row of each shard's block (block k holds shard k's S slots; R or more = empty slot).
    grads: `[K S, D]` summed gradient of each row (zeros in empty slots).
    dropped: int32 scalar, the looked-up ids that overflowed an all-to-all bucket (summed over devices).
    local: True when computed without a mesh (then `index` addresses the whole physical table).
  """

  index: jax.Array
  grads: jax.Array
  dropped: jax.Array
  local: bool = flax.struct.field(pytree_node=False, default=False)


def owner_row_grads(ids: jax.Array, tap_grads: jax.Array, sharding: TableSharding, vocab: int) -> RowGrads:
  """Routes the tap cotangent of `lookup(table, ids, ..., tap=)` to the owning shards and sums duplicates.

  Args:
    ids: `[B, T]` the ids looked up.
    tap_grads: `[B, T, D]` the cotangent `lookup` gave the tap (one gradient per looked-up id).
    sharding: the table's layout and routing.
    vocab: V.

  Returns:
    Each shard's touched rows, once each, with their summed gradients.
  """
  plan = routing.plan_for(sharding, vocab, ids.shape[0])
  flat_ids, flat_grads = ids.reshape(-1), tap_grads.reshape(ids.size, -1)
  if plan.local:
    size = sharding.num_shards * plan.rows
    idx = jnp.where(routing.valid(plan, flat_ids), sharding.physical_index(flat_ids, vocab), size)
    return RowGrads(*routing.dedup(idx, flat_grads, size), dropped=jnp.int32(0), local=True)

  def body(ids, g):
    local, rows, dropped = routing.route_to_owners(plan, ids, g)
    return *routing.dedup(local, rows, plan.rows), jax.lax.psum(dropped, tuple(dict(plan.sizes)))

  rows_spec, data_spec = routing.specs(plan)
  return RowGrads(*routing.smap(body, (data_spec, data_spec), (rows_spec, rows_spec, P()))(flat_ids, flat_grads))


# Bytes of slots one block of `update_rows` handles on CPU (about 2 MiB of gathered rows per array).
UPDATE_BLOCK_BYTES = 1 << 21


def _apply_rule(rule: Callable, shard: jax.Array, st: Any, index: jax.Array, g: jax.Array,
                *scalars: jax.Array) -> tuple[jax.Array, Any]:
  """`rule` on the rows `index` of `shard` and `st`, written back in place (index >= rows: no row)."""
  take = lambda x: jnp.take(x, index, axis=0, mode="clip")
  rows, row_state = rule(take(shard), jax.tree.map(take, st), g, *scalars)
  put = lambda x, new: x.at[index].set(new, mode="drop")
  return put(shard, rows), jax.tree.map(put, st, row_state)


def _blocked_rule(rule: Callable, shard: jax.Array, st: Any, index: jax.Array, g: jax.Array,
                  *scalars: jax.Array) -> tuple[jax.Array, Any]:
  """`_apply_rule` over blocks of slots in turn (the rows are distinct, so the order is immaterial).

  On XLA's CPU backend this keeps each block's gathered rows, new rows and state in cache and the
  step's temporary buffers small (large ones are freshly mapped, and page-faulted, on every call):
  2-3x faster than all slots at once at 1M slots of 128 floats.
  """
  block = max(1, UPDATE_BLOCK_BYTES // (4 * g.shape[-1]))
  n = index.shape[0] // block
  if n <= 1:
    return _apply_rule(rule, shard, st, index, g, *scalars)

  def body(k, carry):
    part = lambda x: jax.lax.dynamic_slice_in_dim(x, k * block, block)
    return _apply_rule(rule, *carry, part(index), part(g), *scalars)

  shard, st = jax.lax.fori_loop(0, n, body, (shard, st))
  return _apply_rule(rule, shard, st, index[n * block:], g[n * block:], *scalars)


def update_rows(table: jax.Array, state: Any, grads: RowGrads, rule: Callable, sharding: TableSharding,
                *scalars: jax.Array) -> tuple[jax.Array, Any]:
  """Applies `rule(rows, row_state, row_grads, *scalars) -> (rows, row_state)` to the listed rows only.

  `state` is a pytree of `[K R, D]` arrays laid out like `table`; rows not in `grads` keep their
  parameters and state bit for bit. On CPU the slots are updated a block at a time (`_blocked_rule`).
  """
  def body(shard, st, index, g, *scalars):
    args = (shard, st, index, g, *scalars)
    return jax.lax.platform_dependent(*args, cpu=lambda *a: _blocked_rule(rule, *a),
                                      default=lambda *a: _apply_rule(rule, *a))

  if grads.local:
    return body(table, state, grads.index, grads.grads, *scalars)
  rows_spec = P(sharding.axes)
  specs = (rows_spec, jax.tree.map(lambda _: rows_spec, state), rows_spec, rows_spec) + (P(),) * len(scalars)
  return routing.smap(body, specs, (rows_spec, jax.tree.map(lambda _: rows_spec, state)))(
      table, state, grads.index, grads.grads, *scalars)
