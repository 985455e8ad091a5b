"""Sampled softmax over corpus items with the logQ correction, and in-batch negatives (Yi et al.,
RecSys 2019, "Sampling-bias-corrected neural modeling for large corpus item recommendations").

A retrieval model scores a query x against items y with s(x, y) = <u(x), v(y)>. The full softmax
over the corpus is too costly, so each example's positive y+ competes with a few negatives drawn
from a proposal distribution Q (a fixed sampler, or the other examples' positives in the batch,
which arrive with the items' popularity). Items drawn often would be pushed down too hard; the
correction subtracts log Q(y) from every logit, positive included (for in-batch negatives the
positive is one of the batch's draws, as in the paper's eq. 3):

    z(y) = s(x, y) / tau - log Q(y)
    L    = -w log [ exp z(y+) / (exp z(y+) + sum_{j kept} exp z(y_j)) ]

A negative equal to the positive item (an "accidental hit", same id) is dropped when ids are given.
Shifting every log Q by one constant leaves L unchanged, so Q may be a per-example probability, a
per-batch inclusion probability or unnormalised frequencies, as long as it is one of them throughout.

The frequency helpers estimate log Q: from item counts (`log_q_from_counts`) or streaming, from the
gaps between the steps an item is seen at (the paper's algorithm 2, `FrequencyEstimate`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cascadejax.ops.ranking_utils import ReduceFn, safe_reduce


def _broadcast(name: str, value, shape: tuple[int, ...]):
  if value is None:
    return None
  try:
    np.broadcast_shapes(jnp.shape(value), shape)
  except ValueError:
    raise ValueError(f"{name} of shape {jnp.shape(value)} does not broadcast to {shape}") from None
  return jnp.broadcast_to(value, shape)


def _check_temperature(temperature) -> None:
  if isinstance(temperature, (int, float)) and not temperature > 0:
    raise ValueError(f"temperature must be positive, got {temperature!r}")


def sampled_softmax_loss(positive_scores: jax.Array, negative_scores: jax.Array, *,
                         positive_log_q: jax.Array | None = None, negative_log_q: jax.Array | None = None,
                         positive_ids: jax.Array | None = None, negative_ids: jax.Array | None = None,
                         negative_where: jax.Array | None = None, temperature: float = 1.0,
                         where: jax.Array | None = None, weights: jax.Array | None = None,
                         reduce_fn: ReduceFn = jnp.mean) -> jax.Array:
  """Softmax of each example's positive against its sampled negatives, with the logQ correction.

      z+  = s+ / tau - log Q(y+)               (log Q(y+) = 0 when positive_log_q is None)
      z_j = s_j / tau - log Q(y_j)             (log Q(y_j) = 0 when negative_log_q is None)
      kept_j = negative_where_j and y_j != y+  (the id test only when both ids are given)
      l   = -w (z+ - log(exp z+ + sum_{kept} exp z_j))

  Negatives shared by the whole batch (one sample of m items scored by every query) pass
  `negative_log_q` and `negative_ids` as `[m]`; they broadcast. Duplicated negatives count once per
  copy, as a sample with replacement should. An example with no kept negative has loss 0 (and
  gradient 0); an example outside `where` contributes 0 with a zero gradient; no input of a masked
  entry can make the loss NaN.

  Args:
    positive_scores: `[...]` scores s+ = <u(x), v(y+)> of each example's positive.
    negative_scores: `[..., m]` scores s_j of its m negatives.
    positive_log_q: optional `[...]` log Q(y+), the positive's log sampling probability.
    negative_log_q: optional log Q(y_j), broadcastable to `[..., m]`.
    positive_ids: optional `[...]` int item ids of the positives (for accidental hits).
    negative_ids: optional int ids of the negatives, broadcastable to `[..., m]`.
    negative_where: optional bool, broadcastable to `[..., m]`, False for padding negatives.
    temperature: tau > 0, dividing the scores (not the log Q).
    where: optional `[...]` bool, False for examples that do not count.
    weights: optional `[...]` per-example weights w (the paper's reward r).
    reduce_fn: `jnp.mean` (over the examples in `where`), `jnp.sum`, or None for `[...]` losses.

  Returns:
    The reduced loss, or `[...]` per-example losses if `reduce_fn` is None.

  Raises:
    ValueError: negative_scores without a negatives axis, shapes that do not match or broadcast, a
      non-positive temperature.
  """
  if jnp.ndim(negative_scores) < 1 or jnp.shape(positive_scores) != jnp.shape(negative_scores)[:-1]:
    raise ValueError(f"negative_scores must be [..., m] over positive_scores' shape {jnp.shape(positive_scores)}, "
                     f"got {jnp.shape(negative_scores)}")
  _check_temperature(temperature)
  batch, full = jnp.shape(positive_scores), jnp.shape(negative_scores)
  positive_log_q, positive_ids, where, weights = (_broadcast(n, v, batch) for n, v in (
      ("positive_log_q", positive_log_q), ("positive_ids", positive_ids), ("where", where), ("weights", weights)))
  negative_log_q, negative_ids, negative_where = (_broadcast(n, v, full) for n, v in (
      ("negative_log_q", negative_log_q), ("negative_ids", negative_ids), ("negative_where", negative_where)))

  dtype = jnp.promote_types(jnp.result_type(positive_scores, negative_scores), jnp.float32)
  valid = jnp.ones(batch, bool) if where is None else where.astype(bool)
  zp = positive_scores.astype(dtype) / temperature
  zn = negative_scores.astype(dtype) / temperature
  if positive_log_q is not None:
    zp = zp - positive_log_q.astype(dtype)
  if negative_log_q is not None:
    zn = zn - negative_log_q.astype(dtype)
  kept = valid[..., None] if negative_where is None else valid[..., None] & negative_where.astype(bool)
  if positive_ids is not None and negative_ids is not None:
    kept = kept & (negative_ids != positive_ids[..., None])
  # log-sum-exp over the positive and the kept negatives; masked entries are replaced before exp so
  # neither their values nor their gradients can be NaN
  zp = jnp.where(valid, zp, 0.0)
  top = jax.lax.stop_gradient(jnp.maximum(zp, jnp.max(jnp.where(kept, zn, -jnp.inf), -1)))
  zn = jnp.where(kept, zn, top[..., None])
  norm = jnp.exp(zp - top) + jnp.sum(jnp.where(kept, jnp.exp(zn - top[..., None]), 0.0), -1)
  loss = jnp.log(norm) + top - zp
  if weights is not None:
    loss = loss * weights
  return safe_reduce(loss, where=valid, reduce_fn=reduce_fn)


def in_batch_softmax_loss(scores: jax.Array, *, log_q: jax.Array | None = None, item_ids: jax.Array | None = None,
                          positive_columns: jax.Array | None = None, column_where: jax.Array | None = None,
                          temperature: float = 1.0, where: jax.Array | None = None, weights: jax.Array | None = None,
                          reduce_fn: ReduceFn = jnp.mean) -> jax.Array:
  """In-batch negatives: every example's positive competes with the other columns' items (the paper).

  `scores[i, j] = <u(x_i), v(y_j)>` for B queries and M >= B column items: the batch's positives
  (possibly gathered from every data shard) and any extra sampled items. Row i's positive is column
  c_i (`positive_columns`, default i); every other kept column is a negative, corrected by its own
  log Q, and so is the positive (eq. 3 of Yi et al.):

      z_ij = scores_ij / tau - log Q(y_j)
      l_i  = -w_i log [ exp z_{i c_i} / sum_{j = c_i or kept_ij} exp z_ij ],
      kept_ij = j != c_i and column_where_j and item_ids_j != item_ids_{c_i}

  The id test (given `item_ids`) drops the copies of a row's positive that other rows brought, so
  an item twice in the batch is not its own negative.

  Args:
    scores: `[B, M]` query x column-item scores.
    log_q: optional `[M]` log sampling probabilities of the column items.
    item_ids: optional `[M]` int ids of the column items (accidental-hit removal).
    positive_columns: optional `[B]` int column of each row's positive (default `arange(B)`, which
      needs M >= B).
    column_where: optional `[M]` bool, False for padding columns.
    temperature: tau > 0.
    where: optional `[B]` bool, False for examples that do not count.
    weights: optional `[B]` per-example weights w.
    reduce_fn: `jnp.mean` (over the examples in `where`), `jnp.sum`, or None for `[B]` losses.

  Returns:
    The reduced loss, or `[B]` per-example losses if `reduce_fn` is None.

  Raises:
    ValueError: scores not `[B, M]`, M < B without `positive_columns`, column arrays not `[M]`,
      positive_columns not `[B]`, a non-positive temperature.
  """
  if jnp.ndim(scores) != 2:
    raise ValueError(f"scores must be [B, M], got shape {jnp.shape(scores)}")
  b, m = jnp.shape(scores)
  for name, value in (("log_q", log_q), ("item_ids", item_ids), ("column_where", column_where)):
    if value is not None and jnp.shape(value) != (m,):
      raise ValueError(f"{name} must be [M] = [{m}], got shape {jnp.shape(value)}")
  if positive_columns is None:
    if m < b:
      raise ValueError(f"scores [B, M] = {jnp.shape(scores)} has fewer columns than rows: pass positive_columns")
    positive_columns = jnp.arange(b)
  elif jnp.shape(positive_columns) != (b,):
    raise ValueError(f"positive_columns must be [B] = [{b}], got shape {jnp.shape(positive_columns)}")
  positive_columns = jnp.asarray(positive_columns, jnp.int32)
  positive = jnp.take_along_axis(scores, positive_columns[:, None], 1)[:, 0]
  others = jnp.arange(m)[None, :] != positive_columns[:, None]
  if column_where is not None:
    others = others & column_where[None, :]
  return sampled_softmax_loss(
      positive, scores,
      positive_log_q=None if log_q is None else jnp.take(log_q, positive_columns),
      negative_log_q=log_q,
      positive_ids=None if item_ids is None else jnp.take(item_ids, positive_columns),
      negative_ids=item_ids, negative_where=others, temperature=temperature, where=where, weights=weights,
      reduce_fn=reduce_fn)


# ---------------------------------------------------------------------------------- log Q estimates

def log_q_from_counts(counts: jax.Array, *, smoothing: float = 1.0) -> jax.Array:
  """`[V]` log sampling probabilities from item counts (e.g. training-set occurrences), smoothed.

      Q(y) = (c_y + alpha) / (sum_y' c_y' + V alpha)

  For in-batch negatives the batch's positives are drawn in proportion to the counts, so this is the
  paper's p_j up to a constant (which the loss ignores).

  Args:
    counts: `[V]` non-negative counts per item id.
    smoothing: alpha >= 0 added to every count, so unseen items keep a finite log Q (alpha = 0 gives
      -inf for them: only safe when unseen items are never sampled).

  Returns:
    `[V]` float32 log Q.
  """
  if jnp.ndim(counts) != 1:
    raise ValueError(f"counts must be [V], got shape {jnp.shape(counts)}")
  if not smoothing >= 0:
    raise ValueError(f"smoothing must be >= 0, got {smoothing!r}")
  c = jnp.asarray(counts, jnp.float32) + smoothing
  return jnp.log(c) - jnp.log(jnp.sum(c))


class FrequencyEstimate(NamedTuple):
  """Streaming estimate of how often each item is sampled (Yi et al., algorithm 2), a pytree.

  Items hash into H buckets (h(y) = y mod H; pass H >= the vocabulary for no collisions). For each
  bucket, `last_step` is the step it was last seen at and `gap` a moving average of the steps between
  sightings; the estimated probability of the item appearing in a step's batch is 1 / gap.

  Attributes:
    last_step: `[H]` int32, the last step each bucket was seen (0 before the first sighting).
    gap: `[H]` float32, the moving average delta of the steps between sightings.
  """

  last_step: jax.Array
  gap: jax.Array

  @classmethod
  def init(cls, num_buckets: int, *, initial_gap: float) -> "FrequencyEstimate":
    """A fresh estimate: never seen, every gap `initial_gap` (> 0, e.g. the number of items divided
    by the batch size: uniform sampling)."""
    if not isinstance(num_buckets, int) or num_buckets <= 0:
      raise ValueError(f"num_buckets must be a positive int, got {num_buckets!r}")
    if not initial_gap > 0:
      raise ValueError(f"initial_gap must be positive, got {initial_gap!r}")
    return cls(jnp.zeros((num_buckets,), jnp.int32), jnp.full((num_buckets,), initial_gap, jnp.float32))

  def update(self, ids: jax.Array, step: jax.Array, *, alpha: float = 0.01,
             where: jax.Array | None = None) -> "FrequencyEstimate":
    """The estimate after seeing the batch's item `ids` (any shape, non-negative ints) at `step` (> 0).

        gap[h(y)]       <- (1 - alpha) gap[h(y)] + alpha (step - last_step[h(y)])
        last_step[h(y)] <- step

    Every copy of an id in one batch makes the same update (from the state before the batch), so
    the result does not depend on the order of the batch. Steps must increase between calls.

    Args:
      ids: int item ids of the batch.
      step: the current training step (a positive int, traced or not).
      alpha: the moving average's learning rate, in (0, 1].
      where: optional bool of `ids`' shape, False for padding ids (left out).
    """
    buckets = jnp.asarray(ids, jnp.int32).reshape(-1) % self.gap.shape[0]
    if where is not None:
      # left-out ids point past the table and are dropped by the scatter
      buckets = jnp.where(jnp.asarray(where, bool).reshape(-1), buckets, self.gap.shape[0])
    step = jnp.asarray(step, jnp.int32)
    safe = jnp.minimum(buckets, self.gap.shape[0] - 1)
    new_gap = (1.0 - alpha) * self.gap[safe] + alpha * (step - self.last_step[safe]).astype(jnp.float32)
    return FrequencyEstimate(self.last_step.at[buckets].set(step, mode="drop"),
                             self.gap.at[buckets].set(new_gap, mode="drop"))

  def log_q(self, ids: jax.Array) -> jax.Array:
    """log Q(y) = -log gap[h(y)] for item `ids` (any shape): the log probability of y per step."""
    return -jnp.log(self.gap[jnp.asarray(ids, jnp.int32) % self.gap.shape[0]])
