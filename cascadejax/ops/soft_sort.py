"""Relaxed permutation matrices: NeuralSort and SoftSort.

Both map the scores of a list to a `[..., n, n]` row-stochastic matrix `P` whose row r is a soft
one-hot of the item at rank r (0-based, descending scores). As the temperature goes to 0, `P` tends to
the hard permutation matrix of the descending sort.

Padding: with `where`, only the m valid items of a list are sorted. Rows 0..m-1 hold their relaxed
ranks and sum to 1 over the valid columns; rows m..n-1 and the padding columns are 0, and padding
scores receive no gradient. A list with no valid item gives an all-zero matrix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cascadejax.ops.ranking_utils import valid_mask


def masked_softmax(logits: jax.Array, where: jax.Array, axis: int = -1) -> jax.Array:
  """Softmax over the entries where `where` is True; 0 elsewhere and for rows with no True entry.

  Never produces NaN or infinite gradients, whatever the masked-out logits hold.

  Args:
    logits: array of logits.
    where: bool array broadcastable to `logits`.
    axis: the axis to normalise over.

  Returns:
    An array shaped like `logits`.
  """
  where = jnp.broadcast_to(where, logits.shape)
  logits = jnp.where(where, logits, 0.0)
  shift = jax.lax.stop_gradient(jnp.max(jnp.where(where, logits, -jnp.inf), axis=axis, keepdims=True))
  shift = jnp.where(jnp.isfinite(shift), shift, 0.0)
  e = jnp.where(where, jnp.exp(logits - shift), 0.0)
  return e / jnp.maximum(e.sum(axis=axis, keepdims=True), jnp.finfo(logits.dtype).tiny)


def _rank_rows(valid: jax.Array) -> jax.Array:
  """`[..., n, 1]` bool: row r is a real rank (r < number of valid items)."""
  m = valid.sum(-1, keepdims=True)
  return (jnp.arange(valid.shape[-1]) < m)[..., :, None]


def neural_sort(scores: jax.Array, *, temperature: float | jax.Array,
                where: jax.Array | None = None) -> jax.Array:
  """NeuralSort relaxed permutation matrix (Grover et al., ICLR 2019, arXiv 1903.08850).

  For a list of m valid scores s and 1-based rank r:

      P[r, j] = softmax_j( ((m + 1 - 2r) s_j - sum_k |s_j - s_k|) / temperature )

  (the sums and the softmax run over valid items only). Row r concentrates on the item whose score is
  r-th largest. The logits grow with m times the spread of the scores, so the temperature that keeps
  the relaxation soft grows with the list length and the score scale.

  Args:
    scores: `[..., n]` scores.
    temperature: positive; smaller is closer to the hard sort.
    where: optional `[..., n]` bool, False for padding.

  Returns:
    `[..., n, n]` matrix: rows = ranks in descending order, columns = items.
  """
  valid = valid_mask(where, scores.shape)
  s = jnp.where(valid, scores, 0.0)
  m = valid.sum(-1, keepdims=True).astype(s.dtype)  # [..., 1]
  pair = valid[..., :, None] & valid[..., None, :]
  abs_diff = jnp.where(pair, jnp.abs(s[..., :, None] - s[..., None, :]), 0.0)
  b = abs_diff.sum(-1)  # [..., n]: sum_k |s_j - s_k|
  r = jnp.arange(1, scores.shape[-1] + 1, dtype=s.dtype)  # 1-based ranks
  coef = (m + 1.0 - 2.0 * r)[..., :, None]  # [..., n(r), 1]
  logits = (coef * s[..., None, :] - b[..., None, :]) / temperature
  return masked_softmax(logits, _rank_rows(valid) & valid[..., None, :])


def soft_sort(scores: jax.Array, *, temperature: float | jax.Array,
              where: jax.Array | None = None) -> jax.Array:
  """SoftSort relaxed permutation matrix (Prillo & Eisenschlos, ICML 2020, arXiv 2006.16038).

      P[r, j] = softmax_j( -|sort(s)_r - s_j| / temperature )

  with sort descending and the softmax over valid items. Unlike NeuralSort, the logits do not grow
  with the list length: the temperature is in units of score differences.

  Args:
    scores: `[..., n]` scores.
    temperature: positive; smaller is closer to the hard sort.
    where: optional `[..., n]` bool, False for padding.

  Returns:
    `[..., n, n]` matrix: rows = ranks in descending order, columns = items.
  """
  valid = valid_mask(where, scores.shape)
  s = jnp.where(valid, scores, 0.0)
  rows = _rank_rows(valid)
  # Padding sorts last; its rows are replaced before any arithmetic so no infinity reaches a gradient.
  ordered = -jnp.sort(jnp.where(valid, -s, jnp.inf), axis=-1)
  ordered = jnp.where(rows[..., 0], ordered, 0.0)
  logits = -jnp.abs(ordered[..., :, None] - s[..., None, :]) / temperature
  return masked_softmax(logits, rows & valid[..., None, :])
