"""Top-k over an item table split by rows over mesh axes: a local blocked top-k on every device, then
an all-gather of the per-device `[B, k]` results and one more top-k.

Device p of the `item_axes` (p = 0..P-1 in mesh order, the order `PartitionSpec(item_axes)` lays rows
out in) holds the rows [p * n_local, (p + 1) * n_local). Its local top-k, with indices shifted by
p * n_local, lists equal scores by ascending index; the gathered `[B, P * k]` row lists device 0's
results first, so `lax.top_k`'s lower-position-first rule is again the lower-index-first rule and
the merged result equals `exact_top_k` over the whole table, ties included.

Communication: one all-gather of B * k scores and indices per device; nothing item-sized moves.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from cascadejax.corpus.topk import (DEFAULT_CHUNK, _approx, _exact, auto_group_size, check_top_k_args)


def pad_corpus(items: jax.Array, where: jax.Array | None, multiple: int) -> tuple[jax.Array, jax.Array]:
  """Pads an item table with masked zero rows to a multiple of `multiple` rows (e.g. the number of
  item shards), so it splits evenly.

  Args:
    items: `[num_items, d]` item embeddings.
    where: optional `[num_items]` bool validity (None: all valid).
    multiple: the row count to round up to a multiple of (a positive int).

  Returns:
    (`[n_padded, d]` items, `[n_padded]` bool where), n_padded = ceil(num_items / multiple) * multiple;
    the added rows are False in `where`, so they are never retrieved and indices are unchanged.
  """
  if not isinstance(multiple, int) or multiple <= 0:
    raise ValueError(f"multiple must be a positive int, got {multiple!r}")
  n = items.shape[0]
  valid = jnp.ones((n,), bool) if where is None else jnp.asarray(where, bool)
  extra = -(-n // multiple) * multiple - n
  return jnp.pad(items, ((0, extra), (0, 0))), jnp.pad(valid, (0, extra))


def _axes(item_axes) -> tuple[str, ...]:
  return (item_axes,) if isinstance(item_axes, str) else tuple(item_axes)


@functools.partial(jax.jit, static_argnames=("k", "mesh", "item_axes", "query_axis", "chunk_size", "group_size",
                                             "recall_target"))
def _sharded(queries, items, where, *, k, mesh, item_axes, query_axis, chunk_size, group_size, recall_target):
  shards = 1
  for a in item_axes:
    shards *= mesh.shape[a]
  n_local = items.shape[0] // shards

  def local(q, v, w):
    if recall_target is None:
      scores, index = _exact(q, v, w, k=k, chunk_size=chunk_size, group_size=group_size)
    else:
      scores, index = _approx(q, v, w, k=k, chunk_size=chunk_size, recall_target=recall_target)
    index = jnp.where(index >= 0, index + lax.axis_index(item_axes) * n_local, -1)
    scores = lax.all_gather(scores, item_axes, axis=q.ndim - 1, tiled=True)    # [..., P * k] in device order
    index = lax.all_gather(index, item_axes, axis=q.ndim - 1, tiled=True)
    scores, pos = lax.top_k(scores, k)
    index = jnp.take_along_axis(index, pos, -1)
    return scores, jnp.where(scores == -jnp.inf, -1, index)

  qspec = P(query_axis) if query_axis is not None else P()
  # check_vma=False: the local scan's carry starts as constants (invariant) and becomes device-varying;
  # the outputs are equal on every item shard after the all-gather, as out_specs says
  fn = jax.shard_map(local, mesh=mesh, in_specs=(qspec, P(item_axes), P(item_axes)), out_specs=(qspec, qspec),
                     check_vma=False)
  return fn(queries, items, where)


def sharded_top_k(queries: jax.Array, items: jax.Array, k: int, *, mesh: Mesh, item_axes: str | tuple[str, ...],
                  query_axis: str | None = None, where: jax.Array | None = None, approximate: bool = False,
                  recall_target: float = 0.95, chunk_size: int = DEFAULT_CHUNK,
                  group_size: int | None = None) -> tuple[jax.Array, jax.Array]:
  """`exact_top_k` (or `approx_top_k`) with the item table's rows split over `item_axes` of `mesh`.

      top_k(b) = top_k over p of (local top_k on device p, indices + p * n_local)

  Equal to `exact_top_k(queries, items, k, where=where)` on one device, ties included (exact mode).
  Jittable; `mesh` must be concrete (a `jax.sharding.Mesh`).

  Args:
    queries: `[B, d]` query embeddings (`[..., d]` when `query_axis` is None): replicated over the
      item axes, split over `query_axis` if one is given (B divisible by its size).
    items: `[num_items, d]` item embeddings, rows split over `item_axes` (num_items divisible by the
      number of item shards: pad with `pad_corpus`).
    k: items per query.
    mesh: the device mesh.
    item_axes: the mesh axis (or axes) the rows are split over.
    query_axis: optional mesh axis (not among `item_axes`) the queries are split over, e.g. "data".
    where: optional `[num_items]` bool, False for items never retrieved (split like `items`).
    approximate: `lax.approx_max_k` locally at `recall_target` (as `approx_top_k`) instead of exact.
    recall_target: in (0, 1], for `approximate`.
    chunk_size: items per scan step on each device.
    group_size: pruning group size of the exact local top-k (None: `auto_group_size`).

  Returns:
    (scores `[B, k]` descending, global indices `[B, k]` int32, -1 for empty slots), split over
    `query_axis` like the queries (replicated over the item axes).

  Raises:
    ValueError: as `exact_top_k`; an axis not in the mesh; `query_axis` among `item_axes`; a row
      count not divisible by the item shards, or a batch not divisible by the query axis.
  """
  axes = _axes(item_axes)
  for a in axes + (() if query_axis is None else (query_axis,)):
    if a not in mesh.shape:
      raise ValueError(f"mesh axis {a!r} is not in the mesh's axes {tuple(mesh.shape)}")
  if query_axis is not None and query_axis in axes:
    raise ValueError(f"query_axis {query_axis!r} must not be one of item_axes {axes}")
  shards = 1
  for a in axes:
    shards *= mesh.shape[a]
  num_items = jnp.shape(items)[0] if jnp.ndim(items) == 2 else 0
  if jnp.ndim(items) == 2 and num_items % shards:
    raise ValueError(f"{num_items} items do not split over {shards} item shards: pad the table with "
                     f"cascadejax.corpus.pad_corpus(items, where, {shards}) (padding rows are masked)")
  if query_axis is not None and (jnp.ndim(queries) != 2 or jnp.shape(queries)[0] % mesh.shape[query_axis]):
    raise ValueError(f"queries must be [B, d] with B divisible by the {mesh.shape[query_axis]} devices of "
                     f"{query_axis!r}, got shape {jnp.shape(queries)}")
  if approximate:
    check_top_k_args(queries, items, k, where, chunk_size)
    if not 0.0 < recall_target <= 1.0:
      raise ValueError(f"recall_target must be in (0, 1], got {recall_target!r}")
    group, target = 1, float(recall_target)
  else:
    check_top_k_args(queries, items, k, where, chunk_size, 1 if group_size is None else group_size)
    group = auto_group_size(chunk_size, k, num_items // shards) if group_size is None else group_size
    target = None
  if num_items // shards == 0:
    raise ValueError(f"{num_items} items leave no row for some of the {shards} item shards")
  valid = jnp.ones((num_items,), bool) if where is None else where
  return _sharded(queries, items, valid, k=k, mesh=mesh, item_axes=axes, query_axis=query_axis,
                  chunk_size=chunk_size, group_size=group, recall_target=target)
