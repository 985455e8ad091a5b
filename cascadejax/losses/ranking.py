"""Ranking losses with rax-style signatures: `[..., list_size]` inputs, keyword-only `where`,
`weights` and `reduce_fn`. Masked and empty lists never produce NaN.

This module holds the pointwise losses; the pairwise losses (RankNet, BPR, hinge, LambdaRank,
LambdaLoss) live in `pairwise.py`, the listwise softmax loss in `listwise.py`, and the reduction
they share (`safe_reduce`), the gains and the ideal DCG in `cascadejax.ops.ranking_utils`.
All of them are exported from `cascadejax.losses`; docs/losses.md gives every formula and its rax
counterpart.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cascadejax.ops.ranking_utils import ReduceFn, safe_reduce


def sigmoid_bce_loss(scores: jax.Array, labels: jax.Array, *, where: jax.Array | None = None,
                     weights: jax.Array | None = None, reduce_fn: ReduceFn = jnp.mean) -> jax.Array:
  """Pointwise sigmoid cross-entropy, computed from logits without overflow.

      l_i = -y_i log sigmoid(s_i) - (1 - y_i) log(1 - sigmoid(s_i))
          = log(1 + exp(s_i)) - s_i y_i      (as logaddexp(0, s_i): stable, exact gradient at 0)

  Args:
    scores: `[..., list_size]` logits.
    labels: `[..., list_size]` targets in [0, 1].
    where: optional `[..., list_size]` bool; False entries contribute nothing.
    weights: optional per-item weights, broadcastable to `scores`.
    reduce_fn: `jnp.mean` (over the valid entries), `jnp.sum`, or None for per-item losses.

  Returns:
    The reduced loss, or `[..., list_size]` losses if `reduce_fn` is None.
  """
  labels = labels.astype(scores.dtype)
  loss = jnp.logaddexp(0.0, scores) - scores * labels
  if weights is not None:
    loss = loss * weights
  return safe_reduce(loss, where=where, reduce_fn=reduce_fn)


def mse_loss(scores: jax.Array, labels: jax.Array, *, where: jax.Array | None = None,
             weights: jax.Array | None = None, reduce_fn: ReduceFn = jnp.mean) -> jax.Array:
  """Pointwise squared error (rax's `pointwise_mse_loss`).

      l_i = w_i (s_i - y_i)^2

  Args:
    scores: `[..., list_size]` predictions.
    labels: `[..., list_size]` targets.
    where: optional `[..., list_size]` bool; False entries contribute nothing.
    weights: optional per-item weights w, broadcastable to `scores`.
    reduce_fn: `jnp.mean` (over the valid entries), `jnp.sum`, or None for per-item losses.

  Returns:
    The reduced loss, or `[..., list_size]` losses if `reduce_fn` is None.
  """
  loss = jnp.square(scores - labels.astype(scores.dtype))
  if weights is not None:
    loss = loss * weights
  return safe_reduce(loss, where=where, reduce_fn=reduce_fn)
