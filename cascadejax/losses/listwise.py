"""Listwise losses: softmax cross-entropy over the list (ListNet-top-1 / rax's `softmax_loss`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cascadejax.ops.ranking_utils import ReduceFn, safe_reduce, valid_lists, valid_mask


def softmax_loss(scores: jax.Array, labels: jax.Array, *, where: jax.Array | None = None,
                 weights: jax.Array | None = None, normalize_labels: bool = False,
                 reduce_fn: ReduceFn = jnp.mean) -> jax.Array:
  """Softmax cross-entropy between graded labels and the list's score distribution.

      p_i = exp(s_i) / sum_{j valid} exp(s_j)
      L   = -sum_{i valid} t_i log p_i,     t_i = w_i y_i
                                            (t_i / sum_j t_j with `normalize_labels`)

  Matches rax's `softmax_loss` (whose default `label_fn` leaves the labels unnormalised): one loss
  per list, and `jnp.mean` averages over the lists that have at least one valid item. With
  `normalize_labels=True` it matches rax with `label_fn=rax.utils.normalize_probabilities`, except
  that a list whose targets are all 0 contributes 0 here, where rax would use a uniform target.
  A list with no valid item contributes 0 with a zero gradient.

  Args:
    scores: `[..., list_size]` scores.
    labels: `[..., list_size]` non-negative graded relevance.
    where: optional `[..., list_size]` bool, False for padding.
    weights: optional per-item weights w, broadcastable to `scores`, multiplying the labels.
    normalize_labels: divide each list's targets by their sum (a target distribution).
    reduce_fn: `jnp.mean` (over lists with a valid item), `jnp.sum`, or None for per-list losses.

  Returns:
    The reduced loss, or `[...]` per-list losses if `reduce_fn` is None.
  """
  valid = valid_mask(where, scores.shape)
  targets = jnp.where(valid, labels, 0.0).astype(scores.dtype)
  if weights is not None:
    targets = targets * weights
  if normalize_labels:
    total = targets.sum(-1, keepdims=True)
    targets = jnp.where(total > 0, targets / jnp.where(total > 0, total, 1.0), 0.0)
  # log-softmax over the valid entries only; stays finite (and differentiable) when none is valid
  top = jax.lax.stop_gradient(jnp.max(jnp.where(valid, scores, -jnp.inf), -1, keepdims=True))
  shifted = jnp.where(valid, scores - top, 0.0)
  norm = jnp.sum(jnp.where(valid, jnp.exp(shifted), 0.0), -1, keepdims=True)
  log_p = shifted - jnp.log(jnp.where(norm > 0, norm, 1.0))
  loss = -jnp.sum(jnp.where(valid, targets * log_p, 0.0), -1)
  return safe_reduce(loss, where=valid_lists(valid), reduce_fn=reduce_fn)
