"""The embedding component: every stage model reads its features through it.

Stage models learn from vectors, not ids. The cascade looks the batch's id features up here and hands
models an `Embedded` (vectors plus masks for sequences, and the raw candidate ids for the rare model
that routes by id, such as fixed item pools). With `EmbeddingConfig.sharding` set, tables of at least
`replicate_below` rows are row-sharded over the mesh and looked up by `cascadejax.embedding.sharded`
(their training goes through `cascadejax.embedding.update`); models see the same `Embedded` either way.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from cascadejax.embedding import sharded
from cascadejax.data.schema import FeatureSpec, table_sizes
from cascadejax.embedding.layout import PLACEMENTS, ROUTINGS, TableSharding
from cascadejax.sections import Section

# Variable collection through which `cascadejax.embedding.update` reads sharded tables' row gradients.
GRADS_COLLECTION = "embedding_grads"


@flax.struct.dataclass
class Embedded:
  """Embedded features of a batch.

  Attributes:
    user: feature -> `[B, D]`, or `[B, L, D]` for sequence features.
    items: feature -> `[B, N, D]`.
    sequence_mask: sequence feature -> `[B, L]` bool, False where the id is the padding id 0.
    item_ids: candidate feature -> `[B, N]` int32, the raw ids the `items` vectors were looked up
      with, for the few models whose behaviour depends on an id itself rather than on its learned
      vector (e.g. `moe_nominators`' fixed item pools, which also read padding slots as id 0).
  """

  user: dict[str, jax.Array]
  items: dict[str, jax.Array]
  sequence_mask: dict[str, jax.Array]
  item_ids: dict[str, jax.Array] = dataclasses.field(default_factory=dict)

  def user_vector(self) -> jax.Array:
    """`[B, sum D]`: user features concatenated, sequences mean-pooled over their valid steps."""
    parts = [masked_mean(v, self.sequence_mask[k]) if k in self.sequence_mask else v
             for k, v in sorted(self.user.items())]
    return jnp.concatenate(parts, axis=-1)

  def item_matrix(self) -> jax.Array:
    """`[B, N, sum D]`: candidate features concatenated."""
    return jnp.concatenate([v for _, v in sorted(self.items.items())], axis=-1)


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of `x [..., L, D]` over the steps where `mask [..., L]` is True; zeros if there are none."""
  w = mask.astype(x.dtype)[..., None]
  return (x * w).sum(-2) / jnp.maximum(w.sum(-2), 1.0)


class EmbeddingCollection(nn.Module):
  """A set of embedding tables and the features that look them up.

  Attributes:
    features: the dataset's feature specs; features naming the same table share its rows.
    dim: embedding width of every table.
    stddev: standard deviation of the normal initialiser.
    table_sharding: None, or the layout of tables with at least `replicate_below` rows (stored as
      `[K R, dim]` physical arrays, see `cascadejax.embedding.sharded`).
  """

  features: tuple[FeatureSpec, ...]
  dim: int
  stddev: float = 0.05
  table_sharding: TableSharding | None = None

  def _sharded(self, rows: int) -> bool:
    return self.table_sharding is not None and self.table_sharding.shards(rows)

  @nn.compact
  def __call__(self, user: Mapping[str, jax.Array], items: Mapping[str, jax.Array]) -> Embedded:
    """Looks every declared feature of `user` and `items` up in its table."""
    init = nn.initializers.normal(self.stddev)
    sizes = table_sizes(self.features)
    row_sharded = [name for name, rows in sorted(sizes.items()) if self._sharded(rows)]
    tables = {}
    for name, rows in sorted(sizes.items()):
      if name in row_sharded:  # same logical values as the dense table, stored in the sharded layout
        tables[name] = self.param(name, lambda key, r=rows: self.table_sharding.to_physical(init(key, (r, self.dim))))
      else:
        tables[name] = self.param(name, init, (rows, self.dim))
    out = {"user": {}, "items": {}}
    seq_mask = {}
    for f in self.features:
      ids = (user if f.side == "user" else items)[f.name]
      if f.table not in row_sharded:
        out[f.side][f.name] = jnp.take(tables[f.table], ids, axis=0)
      if f.sequence:
        seq_mask[f.name] = ids > 0
    for name in row_sharded:  # one routed lookup per table, for all the features that read it
      feats = [f for f in self.features if f.table == name]
      ids = sharded.table_ids(feats, user, items)
      tap = self.get_variable(GRADS_COLLECTION, name) if self.has_variable(GRADS_COLLECTION, name) else None
      vectors = sharded.lookup(tables[name], ids, self.table_sharding, sizes[name], tap=tap)
      split = sharded.split_rows(vectors, feats, user, items)
      for f in feats:
        out[f.side][f.name] = split[f.name]
    item_ids = {f.name: jnp.asarray(items[f.name]) for f in self.features if f.side == "items"}
    return Embedded(user=out["user"], items=out["items"], sequence_mask=seq_mask, item_ids=item_ids)


@dataclasses.dataclass(frozen=True)
class EmbeddingSection(Section):
  """`config.embedding`: table width, sharing between stages, and row-sharding over the mesh.

  Attributes:
    dim: embedding width (>= 1).
    shared: one collection for every stage (True) or one per stage (False).
    sharded: row-shard the tables of at least `replicate_below` rows over `shard_axes`
      (docs/sharding.md); the other keys matter only then.
    shard_axes: distinct mesh axes the rows are split over.
    placement: "mod" or "range" (`cascadejax.embedding.layout`).
    routing: "gather" or "all_to_all" (`cascadejax.embedding.routing`).
    replicate_below: tables with fewer rows stay whole on every device.
    capacity_factor: all_to_all bucket bound, 0 = exact (nothing dropped).
  """

  KEY = "embedding"
  ADDED = ("sharded", "shard_axes", "placement", "routing", "replicate_below", "capacity_factor")
  dim: int
  shared: bool
  sharded: bool = False
  shard_axes: tuple[str, ...] = ("model",)
  placement: str = "mod"
  routing: str = "gather"
  replicate_below: int = 100_000
  capacity_factor: float = 0.0

  def check(self) -> None:
    if self.dim < 1:
      raise ValueError(f"config.embedding.dim must be >= 1, got {self.dim}")
    if not self.sharded:
      return
    if not self.shard_axes or len(set(self.shard_axes)) != len(self.shard_axes):
      raise ValueError(f"config.embedding.shard_axes must be a non-empty tuple of distinct mesh axes, "
                       f"got {self.shard_axes!r}")
    if self.placement not in PLACEMENTS:
      raise ValueError(f"config.embedding.placement must be one of {PLACEMENTS}, got {self.placement!r}")
    if self.routing not in ROUTINGS:
      raise ValueError(f"config.embedding.routing must be one of {ROUTINGS}, got {self.routing!r}")
    if not 0.0 <= self.capacity_factor < float("inf"):
      raise ValueError(f"config.embedding.capacity_factor must be a number >= 0, got {self.capacity_factor!r}")
    if self.replicate_below < 0:
      raise ValueError(f"config.embedding.replicate_below must be an int >= 0, got {self.replicate_below!r}")


@dataclasses.dataclass(frozen=True)
class EmbeddingConfig:
  """How the cascade's stages get their tables (what `Cascade` holds: the section laid out on a mesh).

  Attributes:
    dim: embedding width.
    shared: True: one collection serves every stage (one set of rows, trained by every stage's
      loss). False: each stage owns a collection of its own (stages trained apart stay apart).
    sharding: None (every table whole on every device), or how large tables are row-sharded.
  """

  dim: int = 16
  shared: bool = False
  sharding: TableSharding | None = None

  @classmethod
  def from_config(cls, cfg, mesh=None) -> "EmbeddingConfig":
    """From `config.embedding` (a ConfigDict or an `EmbeddingSection`); `mesh` (a
    `jax.sharding.Mesh`) sizes the shards when the section is `sharded`."""
    section = cfg if isinstance(cfg, EmbeddingSection) else EmbeddingSection.parse(cfg)
    sharding = None
    if section.sharded:
      if mesh is None:
        raise ValueError("config.embedding.sharded=True needs the device mesh to lay tables out")
      axes = section.shard_axes
      missing = [a for a in axes if a not in mesh.shape]
      if missing:
        raise ValueError(f"config.embedding.shard_axes {axes} must be axes of the mesh {tuple(mesh.shape)} "
                         "(config.mesh.axes)")
      sharding = TableSharding(axes=axes, num_shards=math.prod(mesh.shape[a] for a in axes),
                               placement=section.placement, routing=section.routing,
                               replicate_below=section.replicate_below, capacity_factor=section.capacity_factor)
    return cls(dim=section.dim, shared=section.shared, sharding=sharding)
