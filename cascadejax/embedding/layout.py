"""`TableSharding`: how a row-sharded table is laid out over the mesh.

Layout. A table of V rows is split over the K devices of the mesh axes `axes` (K = the product of
their sizes) into K blocks of R = ceil(V / K) rows. Placement maps logical row r to (owner, local):

  mod:    owner = r mod K,  local = r div K   (neighbouring ids, often alike in heat, go to different shards)
  range:  owner = r div R,  local = r mod R   (the stored array is the logical table itself, padded)

The parameter is the physical array `[K R, D]` (block k = shard k's rows), sharded `P(axes)`; rows
past V are padding, never read. `to_physical` / `to_logical` convert whole tables.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

PLACEMENTS = ("mod", "range")
ROUTINGS = ("gather", "all_to_all")


@dataclasses.dataclass(frozen=True)
class TableSharding:
  """How large tables are split over a mesh.

  Attributes:
    axes: mesh axes the rows are split over, e.g. ("model",) or ("data", "model").
    num_shards: K, the product of those axes' sizes.
    placement: "mod" or "range" (module docstring).
    routing: "gather" or "all_to_all" (module docstring).
    replicate_below: tables with fewer rows stay whole on every device (and train densely).
    capacity_factor: all_to_all only: 0 = buckets hold every id (nothing dropped); f > 0 = each
      bucket holds f times an even share of a device's ids, and ids past a full bucket are dropped.
    data_axis: the mesh axis batches are split over.
  """

  axes: tuple[str, ...] = ("model",)
  num_shards: int = 1
  placement: str = "mod"
  routing: str = "gather"
  replicate_below: int = 0
  capacity_factor: float = 0.0
  data_axis: str = "data"

  def shards(self, vocab: int) -> bool:
    """Whether a table of `vocab` rows is row-sharded (else replicated)."""
    return vocab >= self.replicate_below

  def rows_per_shard(self, vocab: int) -> int:
    """R = ceil(vocab / K)."""
    return -(-vocab // self.num_shards)

  def owner_local(self, ids: jax.Array, vocab: int) -> tuple[jax.Array, jax.Array]:
    """(owning shard, row within that shard) of each id."""
    if self.placement == "mod":
      return ids % self.num_shards, ids // self.num_shards
    r = self.rows_per_shard(vocab)
    return ids // r, ids % r

  def physical_index(self, ids: jax.Array, vocab: int) -> jax.Array:
    """Row of the physical `[K R, D]` array that holds each logical id."""
    owner, local = self.owner_local(ids, vocab)
    return owner * self.rows_per_shard(vocab) + local

  def to_physical(self, table: jax.Array) -> jax.Array:
    """`[V, D]` logical table -> `[K R, D]` stored layout."""
    k, r, d = self.num_shards, self.rows_per_shard(table.shape[0]), table.shape[1]
    padded = jnp.pad(table, ((0, k * r - table.shape[0]), (0, 0)))
    return padded if self.placement == "range" else padded.reshape(r, k, d).swapaxes(0, 1).reshape(k * r, d)

  def to_logical(self, physical: jax.Array, vocab: int) -> jax.Array:
    """`[K R, D]` stored layout -> `[V, D]` logical table."""
    k, r, d = self.num_shards, self.rows_per_shard(vocab), physical.shape[1]
    if self.placement == "mod":
      physical = physical.reshape(k, r, d).swapaxes(0, 1).reshape(k * r, d)
    return physical[:vocab]
