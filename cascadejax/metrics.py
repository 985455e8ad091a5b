"""Cascade metrics, jittable, on `[..., list_size]` arrays (lists = requests).

The ground truth of a request is its top `gt_num` valid candidates by label (ties towards the lower
index). List-level values are averaged over the lists that have at least one valid candidate;
`reduce_fn=None` returns the per-list values (0 for empty lists).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from cascadejax.ops.ranking_utils import (dcg, ideal_dcg, position_discounts, pow2m1_gain, ranked_dcg,
                                          safe_reduce, valid_lists)
from cascadejax.ops.selection import ground_truth, hard_topk, select
from cascadejax.data.schema import CascadeBatch


def _over_lists(values: jax.Array, lists: jax.Array, reduce_fn) -> jax.Array:
  """Per-list `values` averaged over `lists` (any `reduce_fn` but None averages), or zeroed outside."""
  return safe_reduce(values, where=lists, reduce_fn=None if reduce_fn is None else jnp.mean)


def _recall(selected: jax.Array, truth: jax.Array) -> jax.Array:
  return (selected & truth).sum(-1) / jnp.maximum(truth.sum(-1), 1)


def _ratio(value: jax.Array, ideal: jax.Array) -> jax.Array:
  """value / ideal, 0 where the ideal is not positive (NDCG of a list without gain)."""
  return jnp.where(ideal > 0, value / jnp.where(ideal > 0, ideal, 1.0), 0.0)


def cascade_recall(stage_scores: jax.Array | Sequence[jax.Array], ks: Sequence[int], labels: jax.Array,
                   *, gt_num: int, where: jax.Array, reduce_fn=jnp.mean) -> jax.Array:
  """End-to-end cascade recall: the fraction of the ground truth that survives every stage.

      recall_e2e = |GT ∩ selected by stage S after stages 1..S-1| / |GT|

  Args:
    stage_scores: `[S, ..., n]` scores of each stage.
    ks: the S selection sizes.
    labels: `[..., n]` graded labels.
    gt_num: the ground truth is the top `gt_num` labels of each list.
    where: `[..., n]` bool, the valid candidates.
    reduce_fn: `jnp.mean` over non-empty lists, or None for per-list values.
  """
  survivors = select(stage_scores, ks, where=where)[-1]
  return _over_lists(_recall(survivors, ground_truth(labels, gt_num, where=where)), valid_lists(where), reduce_fn)


def recall_at_k(scores: jax.Array, labels: jax.Array, *, gt_num: int, k: int, where: jax.Array,
                reduce_fn=jnp.mean) -> jax.Array:
  """Recall@gt_num@k of one scorer on the whole list: |GT ∩ top-k by `scores`| / |GT|."""
  chosen = hard_topk(scores, k, where=where)
  return _over_lists(_recall(chosen, ground_truth(labels, gt_num, where=where)), valid_lists(where), reduce_fn)


def ndcg(scores: jax.Array, labels: jax.Array, *, where: jax.Array, topn: int | None = None,
         reduce_fn=jnp.mean) -> jax.Array:
  """NDCG@topn with gains 2^label - 1 and discounts 1 / log2(rank + 1) (rax's defaults).

      NDCG@k = DCG@k(order by scores) / DCG@k(order by labels)

  Lists whose ideal DCG is 0 score 0. Ties in `scores` are broken towards the lower index.
  """
  gains = pow2m1_gain(labels, where=where)
  value = _ratio(dcg(scores, gains, where=where, topn=topn), ideal_dcg(gains, where=where, topn=topn))
  return _over_lists(value, valid_lists(where), reduce_fn)


def random_recall(k: int, *, gt_num: int, where: jax.Array, reduce_fn=jnp.mean) -> jax.Array:
  """Expected Recall@gt_num@k (and end-to-end recall with k = k_S) of uniformly random selection.

  A cascade of random stages keeps a uniformly random subset of min(k_S, n) of the n valid
  candidates, so each ground-truth item survives with probability min(k, n) / n.
  """
  del gt_num  # every ground-truth item survives with the same probability
  n = where.sum(-1)
  return _over_lists(jnp.minimum(k, n) / jnp.maximum(n, 1), valid_lists(where), reduce_fn)


def random_ndcg(labels: jax.Array, *, where: jax.Array, topn: int | None = None, reduce_fn=jnp.mean) -> jax.Array:
  """Expected NDCG@topn of a uniformly random order of the valid candidates.

  Each valid candidate lands at each of the n ranks with probability 1/n, so
  E[DCG@k] = (sum_i gain_i / n) * sum_{r <= min(k, n)} 1 / log2(r + 1).
  """
  gains = pow2m1_gain(labels, where=where)
  n = where.sum(-1)
  disc = position_discounts(labels.shape[-1], topn=topn)
  expected = gains.sum(-1) / jnp.maximum(n, 1) * jnp.where(jnp.arange(labels.shape[-1]) < n[..., None], disc, 0.0).sum(-1)
  return _over_lists(_ratio(expected, ideal_dcg(gains, where=where, topn=topn)), valid_lists(where), reduce_fn)


def batch_metrics(stage_scores: jax.Array, batch: CascadeBatch, *, ks: Sequence[int], gt_num: int,
             stage_names: Sequence[str]) -> dict[str, tuple[jax.Array, jax.Array]]:
  """All evaluation metrics of one batch, as `name -> (sum over lists, number of lists)`.

  Sums and counts add up across batches (`MetricSums`), so a split's metrics are exact means over
  its requests however it is batched and padded. Names:

    recall_e2e, recall_e2e_random        end-to-end cascade recall, and random selection's
    <stage>/recall@G@K, ..._random       the stage alone on all candidates: Recall@gt_num@k_s
    <stage>/ndcg@K, ..._random           the stage alone on all candidates: NDCG@k_s
    <stage>/survival                     fraction of the ground truth alive after this stage
  """
  where, labels = batch.mask, batch.label
  lists = valid_lists(where)
  count = lists.sum().astype(jnp.float32)
  out = {}
  per_list = lambda v: (v.sum(), count)
  truth = ground_truth(labels, gt_num, where=where)
  alive = select(stage_scores, ks, where=where)
  out["recall_e2e"] = per_list(_over_lists(_recall(alive[-1], truth), lists, None))
  out["recall_e2e_random"] = per_list(random_recall(ks[-1], gt_num=gt_num, where=where, reduce_fn=None))
  for s, (name, k) in enumerate(zip(stage_names, ks)):
    out[f"{name}/recall@{gt_num}@{k}"] = per_list(
        recall_at_k(stage_scores[s], labels, gt_num=gt_num, k=k, where=where, reduce_fn=None))
    out[f"{name}/recall@{gt_num}@{k}_random"] = per_list(
        random_recall(k, gt_num=gt_num, where=where, reduce_fn=None))
    out[f"{name}/ndcg@{k}"] = per_list(ndcg(stage_scores[s], labels, where=where, topn=k, reduce_fn=None))
    out[f"{name}/ndcg@{k}_random"] = per_list(random_ndcg(labels, where=where, topn=k, reduce_fn=None))
    out[f"{name}/survival"] = per_list(_over_lists(_recall(alive[s], truth), lists, None))
  return out


def distinct_count(values: jax.Array, valid: jax.Array) -> jax.Array:
  """`[...]`: the number of distinct entries of `values [..., k]` among positions where `valid`."""
  same = (values[..., :, None] == values[..., None, :]) & valid[..., None, :]
  earlier = jnp.tril(jnp.ones(same.shape[-2:], bool), k=-1)  # [p, q] with q < p
  return (valid & ~(same & earlier).any(-1)).sum(-1)


def shown_list_metrics(order: jax.Array, valid: jax.Array, batch: CascadeBatch, *, gt_num: int,
                       diversity_features: Sequence[str], prefix: str) -> dict[str, tuple[jax.Array, jax.Array]]:
  """Metrics of the list finally shown (e.g. after a re-ranker), as `name -> (sum, count)` over lists.

  With k = order's length and GT the top `gt_num` labels among all valid candidates:

    <prefix>/recall@G@K       |GT ∩ shown| / |GT|
    <prefix>/ndcg@K           DCG of the shown order / ideal DCG@k over all valid candidates
    <prefix>/distinct_<f>@K   distinct values of item feature f among the shown items
    <prefix>/size             number of items shown

  Args:
    order: `[B, k]` slots shown, in order.
    valid: `[B, k]` bool, positions actually filled.
    batch: the batch (labels, mask, item features).
    gt_num: ground-truth size.
    diversity_features: item features whose distinct values are counted.
    prefix: name prefix.
  """
  where, labels = batch.mask, batch.label
  k = order.shape[-1]
  lists = valid_lists(where)
  count = lists.sum().astype(jnp.float32)
  per_list = lambda v: (jnp.where(lists, v, 0.0).sum(), count)
  truth = ground_truth(labels, gt_num, where=where)
  shown_truth = jnp.take_along_axis(truth, order, axis=-1) & valid
  out = {f"{prefix}/recall@{gt_num}@{k}": per_list(shown_truth.sum(-1) / jnp.maximum(truth.sum(-1), 1))}
  gains = pow2m1_gain(labels, where=where)
  shown = ranked_dcg(jnp.take_along_axis(gains, order, axis=-1), where=valid)
  out[f"{prefix}/ndcg@{k}"] = per_list(_ratio(shown, ideal_dcg(gains, where=where, topn=k)))
  for f in diversity_features:
    values = jnp.take_along_axis(batch.items[f], order, axis=-1)
    out[f"{prefix}/distinct_{f}@{k}"] = per_list(distinct_count(values, valid).astype(jnp.float32))
  out[f"{prefix}/size"] = per_list(valid.sum(-1).astype(jnp.float32))
  return out


class MetricSums:
  """Accumulates `batch_metrics` outputs over batches (on device, without syncing) into means."""

  def __init__(self):
    self._sums: dict[str, tuple[jax.Array, jax.Array]] = {}

  def add(self, batch_sums: dict[str, tuple[jax.Array, jax.Array]]) -> None:
    """Adds one batch's `batch_metrics` output."""
    for k, (s, c) in batch_sums.items():
      s0, c0 = self._sums.get(k, (0.0, 0.0))
      self._sums[k] = (s0 + s, c0 + c)

  def means(self) -> dict[str, float]:
    """name -> mean over every list seen (0 if none)."""
    return {k: float(s) / max(float(c), 1.0) for k, (s, c) in jax.device_get(self._sums).items()}
