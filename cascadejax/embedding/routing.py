"""Routing for row-sharded tables: ids to the shards that own their rows, rows and gradients back.

Every function here runs per device inside `jax.shard_map` (or, with no mesh in context, on the
whole physical table). All buffers have static, worst-case sizes (every id of a device could be
distinct and could belong to one shard), so everything jits; `TableSharding.routing` picks the route:

  gather:      every shard answers every request: a device's ids are all-gathered over the data axis
               when the table is split over it (over the other shard axes they are identical
               already), each shard reads the rows it owns (zeros elsewhere), and the partial rows
               are summed back: psum_scatter over the data axis, psum over the other shard axes. No
               id moves when the table is split over `model` only; the price is a `[b T, D]` all-reduce
               and reads masked on K shards.
  all_to_all:  the devices holding the same ids (the shard axes other than data) split them; each
               device buckets its share by owner, an all-to-all delivers the buckets, owners answer
               with their rows through a second all-to-all, and an all-gather over the splitting axes
               reassembles the rows. Each row is read once, by its owner. Buckets hold every id a
               device has (exact: nothing is dropped) unless `capacity_factor` f > 0 bounds them to
               f times an even share, which makes per-device work shrink with K; ids past a full
               bucket then read zeros and get no gradient, and are counted.

Ids are not deduplicated on the way out: with worst-case buffer sizes it would save no traffic.
Gradients take the reverse route to the owners (all-gather over data, or all-to-all), where
`lookup_dense` scatter-adds them into the shard (the table's ordinary cotangent) and
`cascadejax.embedding.sharded.owner_row_grads` sums repeated rows with one fixed-size
deduplication + `segment_sum` (`dedup`: rows flagged and numbered, no sort) for a row-wise
optimizer. `lookup_tap` hands the per-id cotangents to a zero "tap" argument instead of the table,
so no `[V, D]` gradient is ever formed.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from cascadejax.embedding.layout import TableSharding

SENTINEL = int(np.iinfo(np.int32).max)  # fills empty bucket slots; never a valid id


@dataclasses.dataclass(frozen=True)
class Plan:
  """One table's layout and the mesh in context: static, so it can key `custom_vjp`s and jit caches.

  Attributes:
    sharding: the table's layout and routing.
    vocab: V, its logical row count.
    sizes: (axis, size) of every mesh axis; empty when no mesh is in context (local lookups).
  """

  sharding: TableSharding
  vocab: int
  sizes: tuple[tuple[str, int], ...] = ()

  def size(self, axes) -> int:
    """Number of devices along `axes`."""
    return math.prod(dict(self.sizes)[a] for a in axes)

  @property
  def local(self) -> bool:
    """True without a mesh: the whole physical table is at hand."""
    return not self.sizes

  @property
  def rows(self) -> int:
    """R, rows per shard."""
    return self.sharding.rows_per_shard(self.vocab)

  @property
  def data_gather(self) -> bool:
    """Whether ids (and gradients) of other data shards reach this device's shard."""
    return self.size((self.sharding.data_axis,)) > 1

  @property
  def split_axes(self) -> tuple[str, ...]:
    """The shard axes over which a device's ids are identical (all but the data axis)."""
    return tuple(a for a in self.sharding.axes if a != self.sharding.data_axis)


def plan_for(sharding: TableSharding, vocab: int, batch: int) -> Plan:
  """The `Plan` of a table under the current context mesh, checking it fits a batch of `batch` rows."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return Plan(sharding, vocab)
  sizes = dict(mesh.shape)
  missing = [a for a in (*sharding.axes, sharding.data_axis) if a not in sizes]
  if missing:
    raise ValueError(f"sharded embedding: mesh axes {tuple(sizes)} lack {missing}")
  if math.prod(sizes[a] for a in sharding.axes) != sharding.num_shards:
    raise ValueError(f"table laid out for {sharding.num_shards} shards, but mesh axes {sharding.axes} "
                     f"hold {math.prod(sizes[a] for a in sharding.axes)} devices")
  if batch % sizes[sharding.data_axis]:
    raise ValueError(f"batch of {batch} does not split over the {sizes[sharding.data_axis]} data shards")
  return Plan(sharding, vocab, tuple(sizes.items()))


def valid(plan: Plan, ids: jax.Array) -> jax.Array:
  """True for ids in `[0, V)` (empty bucket slots hold SENTINEL)."""
  return (ids >= 0) & (ids < plan.vocab)


def smap(f: Callable, in_specs, out_specs) -> Callable:
  """`jax.shard_map` over the context mesh (collectives are placed by hand, so no vma checks)."""
  return jax.shard_map(f, in_specs=in_specs, out_specs=out_specs, check_vma=False)


def specs(plan: Plan) -> tuple[P, P]:
  """(spec of a table split over rows, spec of a batch split over data)."""
  return P(plan.sharding.axes), P(plan.sharding.data_axis)


def _my_shard(plan: Plan) -> jax.Array:
  return jax.lax.axis_index(plan.sharding.axes) if plan.sharding.num_shards > 1 else jnp.int32(0)


def _read_owned(plan: Plan, shard: jax.Array, ids: jax.Array) -> jax.Array:
  """Rows of `ids` this device owns, zeros for the others."""
  owner, local = plan.sharding.owner_local(ids, plan.vocab)
  mine = valid(plan, ids) & (owner == _my_shard(plan))
  return jnp.where(mine[:, None], jnp.take(shard, jnp.where(mine, local, 0), axis=0), 0)


def _my_share(plan: Plan, x: jax.Array) -> jax.Array:
  """This device's contiguous share of `x [M, ...]` among the devices of `split_axes` (padded)."""
  n = plan.size(plan.split_axes)
  c = -(-x.shape[0] // n)
  fill = SENTINEL if x.ndim == 1 else 0
  x = jnp.pad(x, ((0, c * n - x.shape[0]),) + ((0, 0),) * (x.ndim - 1), constant_values=fill)
  return jax.lax.dynamic_slice_in_dim(x, jax.lax.axis_index(plan.split_axes) * c, c) if n > 1 else x


def _buckets(plan: Plan, ids: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, int]:
  """(owner, slot) of each id in `[K, C]` send buckets (owner K = not sent), and how many overflowed.

  C is the number of ids (exact: nothing overflows) or, with `capacity_factor` f > 0,
  ceil(f * ids / K): ids past a full bucket are not sent (they read zeros and get no gradient).
  """
  k, n, f = plan.sharding.num_shards, ids.shape[0], plan.sharding.capacity_factor
  cap = n if f <= 0 else min(n, max(1, math.ceil(f * n / k)))
  dest = jnp.where(valid(plan, ids), plan.sharding.owner_local(ids, plan.vocab)[0], k)
  order = jnp.argsort(dest, stable=True)
  counts = jnp.bincount(dest, length=k + 1)
  slot = jnp.zeros_like(dest).at[order].set(jnp.arange(n) - (jnp.cumsum(counts) - counts)[dest[order]])
  over = (dest < k) & (slot >= cap)
  return jnp.where(over, k, dest), jnp.where(over, 0, slot), jnp.sum(over, dtype=jnp.int32), cap


def _scatter_buckets(plan: Plan, x: jax.Array, dest: jax.Array, slot: jax.Array, cap: int, fill) -> jax.Array:
  k = plan.sharding.num_shards
  return jnp.full((k + 1, cap) + x.shape[1:], fill, x.dtype).at[dest, slot].set(x)[:k]


def _a2a(plan: Plan, x: jax.Array) -> jax.Array:
  return jax.lax.all_to_all(x, plan.sharding.axes, 0, 0, tiled=True) if plan.sharding.num_shards > 1 else x


def _fetch(plan: Plan, shard: jax.Array, u: jax.Array) -> jax.Array:
  """`[M, D]` rows of this device's ids `u [M]`, routed to their owners and back."""
  s, data = plan.sharding, plan.sharding.data_axis
  if s.routing == "gather":
    over_data = data in s.axes and plan.data_gather
    req = jax.lax.all_gather(u, data, tiled=True) if over_data else u
    rows = _read_owned(plan, shard, req)
    if over_data:
      rows = jax.lax.psum_scatter(rows, data, scatter_dimension=0, tiled=True)
    rest = tuple(a for a in plan.split_axes if plan.size((a,)) > 1)
    return jax.lax.psum(rows, rest) if rest else rows
  mine = _my_share(plan, u)
  dest, slot, _, cap = _buckets(plan, mine)
  asked = _a2a(plan, _scatter_buckets(plan, mine, dest, slot, cap, SENTINEL))  # [K, C]: what each peer asks me
  answer = _read_owned(plan, shard, asked.reshape(-1)).reshape(*asked.shape, -1)
  got = _a2a(plan, answer)[jnp.minimum(dest, s.num_shards - 1), slot]
  got = jnp.where((dest < s.num_shards)[:, None], got, 0)
  if plan.size(plan.split_axes) > 1:
    got = jax.lax.all_gather(got, plan.split_axes, tiled=True)
  return got[:u.shape[0]]


def route_to_owners(plan: Plan, u: jax.Array, g: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Gradients `g [M, D]` of ids `u [M]` -> (local row, or R if not this shard's, gradient) at the
  owners, and the number of this device's ids that overflowed their bucket (all_to_all with a capacity)."""
  s, data = plan.sharding, plan.sharding.data_axis
  dropped = jnp.int32(0)
  if s.routing == "gather":
    if plan.data_gather:
      u, g = jax.lax.all_gather(u, data, tiled=True), jax.lax.all_gather(g, data, tiled=True)
    owner, local = s.owner_local(u, plan.vocab)
    mine = valid(plan, u) & (owner == _my_shard(plan))
  else:
    ids, grads = _my_share(plan, u), _my_share(plan, g)
    dest, slot, dropped, cap = _buckets(plan, ids)
    u = _a2a(plan, _scatter_buckets(plan, ids, dest, slot, cap, SENTINEL)).reshape(-1)
    g = _a2a(plan, _scatter_buckets(plan, grads, dest, slot, cap, 0)).reshape(u.shape[0], -1)
    if data not in s.axes and plan.data_gather:  # replicas of this shard on other data shards
      u, g = jax.lax.all_gather(u, data, tiled=True), jax.lax.all_gather(g, data, tiled=True)
    local, mine = s.owner_local(u, plan.vocab)[1], valid(plan, u)
  return jnp.where(mine, local, plan.rows), jnp.where(mine[:, None], g, 0), dropped


# ---- forward and the two backward passes ----
def forward(plan: Plan, table: jax.Array, ids: jax.Array) -> jax.Array:
  """`[B, T, D]` rows of `ids [B, T]` from the physical `table` (routed when a mesh is in context)."""
  def body(shard, ids):
    return _fetch(plan, shard, ids.reshape(-1)).reshape(*ids.shape, shard.shape[-1])

  if plan.local:
    index = jnp.where(valid(plan, ids), plan.sharding.physical_index(ids, plan.vocab), table.shape[0])
    return jnp.take(table, index, axis=0, mode="fill", fill_value=0)
  rows_spec, data_spec = specs(plan)
  return smap(body, (rows_spec, data_spec), data_spec)(table, ids)


def _table_cotangent(plan: Plan, table_shape, ids: jax.Array, g: jax.Array) -> jax.Array:
  def body(ids, g):
    local, rows, _ = route_to_owners(plan, ids.reshape(-1), g.reshape(ids.size, -1))
    return jnp.zeros((plan.rows, g.shape[-1]), g.dtype).at[local].add(rows, mode="drop")

  if plan.local:
    idx = jnp.where(valid(plan, ids), plan.sharding.physical_index(ids, plan.vocab), table_shape[0])
    return jnp.zeros(table_shape, g.dtype).at[idx.reshape(-1)].add(g.reshape(ids.size, -1), mode="drop")
  rows_spec, data_spec = specs(plan)
  return smap(body, (data_spec, data_spec), rows_spec)(ids, g)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def lookup_dense(plan, table, ids):
  """`forward` whose backward routes the gradients to the owners and scatter-adds them into the shards."""
  return forward(plan, table, ids)


lookup_dense.defvjp(lambda plan, table, ids: (forward(plan, table, ids), (ids, table.shape)),
                    lambda plan, res, g: (_table_cotangent(plan, res[1], res[0], g), None))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def lookup_tap(plan, table, ids, tap):
  """`forward` whose backward hands the per-id cotangents `[B, T, D]` to `tap` and none to the table."""
  del tap
  return forward(plan, table, ids)


lookup_tap.defvjp(lambda plan, table, ids, tap: (forward(plan, table, ids), None),
                  lambda plan, _, g: (None, None, g))


# Rows per id up to which `dedup` marks rows in a `[fill + 1]` buffer instead of sorting the ids.
MARK_ROWS_PER_ID = 16  # the O(fill) work costs about a sort at ~16 rows per id on CPU (1M ids)


def dedup(local: jax.Array, g: jax.Array, fill: int) -> tuple[jax.Array, jax.Array]:
  """Sums the gradients `g [S, D]` of repeated rows `local [S]` (values in `[0, fill]`, `fill` = not a
  row): (the distinct values ascending, padded with `fill`, and their summed gradients), exactly
  `jnp.unique(local, size=S, fill_value=fill)` and the `segment_sum` over its inverse.

  For tables of up to `MARK_ROWS_PER_ID` rows per id, the distinct rows are found without a sort:
  flag the rows present in a `[fill + 1]` buffer, number them by a cumulative sum (each id's slot)
  and scatter each row number to its slot. That is O(S + fill) cheap int32 work, against the
  O(S log S) two-operand sort of `jnp.unique` (about 6x a one-operand sort on XLA's CPU backend).
  """
  s = local.shape[0]
  if fill + 1 > MARK_ROWS_PER_ID * s:
    u, inv = jnp.unique(local, size=s, fill_value=fill, return_inverse=True)
    return u, jax.ops.segment_sum(g, inv.reshape(-1), num_segments=s)
  present = jnp.zeros(fill + 1, jnp.int32).at[local].set(1, mode="promise_in_bounds")
  slot = jnp.cumsum(present) - 1  # slot of each present row among the distinct ones, ascending
  inv = slot[local]
  rows = jnp.arange(fill + 1, dtype=local.dtype)
  u = jnp.full(s, fill, local.dtype).at[jnp.where(present > 0, slot, s)].set(rows, mode="drop")
  return u, jax.ops.segment_sum(g, inv, num_segments=s)
