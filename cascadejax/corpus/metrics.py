"""Recall and NDCG of items retrieved from the corpus against each request's ground-truth items.

A request's retrieved items are corpus indices in rank order, `[..., K0]` (what `exact_top_k`
returns; -1 marks an empty slot); its ground truth is a padded list of corpus indices `[..., G]`
with a mask (e.g. the request's exposed or positive items). Target ids within a request are assumed
distinct. Matching sorts the targets and binary-searches them, so memory is O(K0 + G) per request
(no `[..., K0, G]` comparison). As in `cascadejax.metrics`, list values are averaged over the
requests with at least one valid target; `reduce_fn=None` gives per-request values (0 for a request
without one).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from cascadejax.ops.ranking_utils import ideal_dcg, ranked_dcg, safe_reduce

_NO_ID = -2  # stands for masked targets: never equal to a retrieved index (>= -1)


def _check(retrieved, targets, where, gains, topn) -> int:
  if jnp.ndim(retrieved) < 1 or jnp.ndim(targets) < 1:
    raise ValueError(f"retrieved [..., K0] and targets [..., G] need a list axis, got shapes "
                     f"{jnp.shape(retrieved)} and {jnp.shape(targets)}")
  if jnp.shape(retrieved)[:-1] != jnp.shape(targets)[:-1]:
    raise ValueError(f"retrieved {jnp.shape(retrieved)} and targets {jnp.shape(targets)} must share their "
                     "leading (request) axes")
  for name, value in (("where", where), ("gains", gains)):
    if value is not None and jnp.shape(value) != jnp.shape(targets):
      raise ValueError(f"{name} must have the targets' shape {jnp.shape(targets)}, got {jnp.shape(value)}")
  k0 = jnp.shape(retrieved)[-1]
  topn = k0 if topn is None else topn
  if not isinstance(topn, int) or not 1 <= topn <= k0:
    raise ValueError(f"topn must be an int in [1, {k0}] (the retrieved list's length), got {topn!r}")
  return topn


def _search(sorted_keys: jax.Array, values: jax.Array) -> jax.Array:
  """Per list, the left insertion points of `values` `[..., m]` into `sorted_keys` `[..., n]`, clipped
  to a valid position."""
  lead = sorted_keys.shape[:-1]
  keys = sorted_keys.reshape(-1, sorted_keys.shape[-1])
  pos = jax.vmap(jnp.searchsorted)(keys, values.reshape(-1, values.shape[-1]))
  return jnp.minimum(pos, sorted_keys.shape[-1] - 1).reshape(*lead, values.shape[-1])


def _valid_targets(targets, where):
  valid = jnp.ones(targets.shape, bool) if where is None else where.astype(bool)
  return valid, jnp.where(valid, targets.astype(jnp.int32), _NO_ID)


def retrieval_hits(retrieved: jax.Array, targets: jax.Array, *, where: jax.Array | None = None) -> jax.Array:
  """`[..., K0]` bool: whether the item retrieved at each rank is one of the request's valid targets.

      hit_r = retrieved_r >= 0 and retrieved_r in {t_g : where_g}

  Args:
    retrieved: `[..., K0]` int corpus indices in rank order, -1 for empty slots.
    targets: `[..., G]` int corpus indices of the ground truth (padded).
    where: optional `[..., G]` bool, False for padding targets.
  """
  _check(retrieved, targets, where, None, None)
  _, ids = _valid_targets(targets, where)
  ids = jnp.sort(ids, -1)
  retrieved = retrieved.astype(jnp.int32)
  return (retrieved >= 0) & (jnp.take_along_axis(ids, _search(ids, retrieved), -1) == retrieved)


def retrieval_recall(retrieved: jax.Array, targets: jax.Array, *, where: jax.Array | None = None,
                     topn: int | None = None, reduce_fn=jnp.mean) -> jax.Array:
  """Recall@topn of retrieval from the corpus: the fraction of a request's targets retrieved.

      recall = |{g : where_g, t_g in retrieved[:topn]}| / |{g : where_g}|

  Args:
    retrieved: `[..., K0]` int corpus indices in rank order, -1 for empty slots.
    targets: `[..., G]` int corpus indices of the ground truth (padded, distinct within a request).
    where: optional `[..., G]` bool, False for padding targets.
    topn: the rank cutoff, 1 <= topn <= K0 (None: K0).
    reduce_fn: `jnp.mean` over requests with a valid target, or None for `[...]` per-request values.

  Raises:
    ValueError: mismatched shapes, a topn outside [1, K0].
  """
  topn = _check(retrieved, targets, where, None, topn)
  valid, ids = _valid_targets(targets, where)
  kept = jnp.sort(retrieved[..., :topn].astype(jnp.int32), -1)
  found = valid & (jnp.take_along_axis(kept, _search(kept, ids), -1) == ids)
  recall = found.sum(-1) / jnp.maximum(valid.sum(-1), 1)
  return safe_reduce(recall, where=valid.any(-1), reduce_fn=None if reduce_fn is None else jnp.mean)


def retrieval_ndcg(retrieved: jax.Array, targets: jax.Array, *, where: jax.Array | None = None,
                   gains: jax.Array | None = None, topn: int | None = None, reduce_fn=jnp.mean) -> jax.Array:
  """NDCG@topn of retrieval from the corpus against the request's targets and their gains.

      DCG  = sum_{r = 1..topn} G(retrieved_r) / log2(1 + r),   G(i) = gain of target i (0 if i is none)
      NDCG = DCG / maxDCG@topn(gains of the valid targets)      (0 when maxDCG <= 0)

  Args:
    retrieved: `[..., K0]` int corpus indices in rank order, -1 for empty slots.
    targets: `[..., G]` int corpus indices of the ground truth (padded, distinct within a request).
    where: optional `[..., G]` bool, False for padding targets.
    gains: optional `[..., G]` float gains of the targets (e.g. `pow2m1_gain(labels)`); None: 1 for
      every valid target (binary relevance).
    topn: the rank cutoff, 1 <= topn <= K0 (None: K0).
    reduce_fn: `jnp.mean` over requests with a valid target, or None for `[...]` per-request values.

  Raises:
    ValueError: mismatched shapes, a topn outside [1, K0].
  """
  topn = _check(retrieved, targets, where, gains, topn)
  valid, ids = _valid_targets(targets, where)
  gains = jnp.ones(targets.shape, jnp.float32) if gains is None else gains.astype(jnp.float32)
  gains = jnp.where(valid, gains, 0.0)
  ids, sorted_gains = lax.sort((ids, gains), dimension=ids.ndim - 1, num_keys=1)
  ranked = retrieved[..., :topn].astype(jnp.int32)
  pos = _search(ids, ranked)
  hit = (ranked >= 0) & (jnp.take_along_axis(ids, pos, -1) == ranked)
  value = ranked_dcg(jnp.where(hit, jnp.take_along_axis(sorted_gains, pos, -1), 0.0))
  ideal = ideal_dcg(gains, where=valid, topn=topn)
  ndcg = jnp.where(ideal > 0, value / jnp.where(ideal > 0, ideal, 1.0), 0.0)
  return safe_reduce(ndcg, where=valid.any(-1), reduce_fn=None if reduce_fn is None else jnp.mean)
