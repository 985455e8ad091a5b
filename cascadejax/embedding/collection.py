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
from cascadejax.embedding.layout import TableSharding

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
class EmbeddingConfig:
  """How the cascade's stages get their tables.

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
    """From `config.embedding`; `mesh` (a `jax.sharding.Mesh`) sizes the shards when `cfg.sharded`."""
    sharding = None
    if cfg.get("sharded", False):
      if mesh is None:
        raise ValueError("config.embedding.sharded=True needs the device mesh to lay tables out")
      axes = tuple(cfg.get("shard_axes", ("model",)))
      sharding = TableSharding(axes=axes, num_shards=math.prod(mesh.shape[a] for a in axes),
                               placement=cfg.get("placement", "mod"), routing=cfg.get("routing", "gather"),
                               replicate_below=int(cfg.get("replicate_below", 0)),
                               capacity_factor=float(cfg.get("capacity_factor", 0.0)))
    return cls(dim=cfg.dim, shared=cfg.shared, sharding=sharding)
