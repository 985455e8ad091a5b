"""LapSum soft top-k: Laplace-CDF memberships with the exact threshold that makes them sum to k.

Struski, Bednarczyk, Podolak, Tabor, *LapSum -- One Method to Differentiate Them All: Ranking,
Sorting and Top-k Selection*, ICML 2025, arXiv 2503.06242. With the Laplace CDF

    F(z) = e^z / 2 (z <= 0),   1 - e^-z / 2 (z > 0),        f(z) = F'(z) = e^-|z| / 2

the memberships of a list of m valid scores s at temperature alpha are

    p_i = F((s_i - t) / alpha),    sum_{i valid} p_i = k     (0 < k < m)

Because F is exponential on either side of t, the sum is, between two consecutive sorted scores,
a quadratic in e^{t/alpha}: after one sort the threshold is found exactly in closed form (no
iteration), O(n log n) per list. With u = s / alpha sorted ascending (u_0 <= ... <= u_{m-1}), the
sum at t / alpha = u_j is

    G(u_j) = L_j / 2 + (m - j) - 1/2 - R_j / 2,   L_j = sum_{i <= j} e^{u_i - u_j},  R_j = sum_{i >= j} e^{u_j - u_i}

which decreases in j. With c = #{j : G(u_j) > k}, the root lies between u_{c-1} and u_c; taking
r = u_c (u_{m-1} when c = m), A = sum_{i < c} e^{u_i - r}, C = sum_{i >= c} e^{r - u_i} and
d = m - c - k, y = e^{t/alpha - r} solves C y^2 - 2 d y - A = 0, evaluated in the log domain so
that A, C spanning many orders of magnitude (a cold temperature) stays finite.

The gradient is implicit (`cascadejax.ops.sum_to_k`): dp_i/ds_j = f_i / alpha (delta_ij - f_j /
sum_l f_l), the backward pass of the LapSum authors' code. DFTopK's comparison runs LapSum at
alpha = 5 with k = the ground-truth size (zhangzhen97/DFTOPK,
`torch/deep_components/run_train2_negativesampling.py`: `alpha = torch.tensor(5)`; the operator in
`torch/deep_components/loss/two_stage/lapsum.py`, `soft_top_k(..., descending=False)`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from cascadejax.ops.ranking_utils import valid_mask
from cascadejax.ops.sum_to_k import implicit_topk


def laplace_cdf(z: jax.Array) -> jax.Array:
  """F(z) = e^z / 2 for z <= 0, 1 - e^-z / 2 for z > 0 (the standard Laplace CDF)."""
  half = 0.5 * jnp.exp(-jnp.abs(z))
  return jnp.where(z > 0, 1.0 - half, half)


def laplace_density(z: jax.Array) -> jax.Array:
  """f(z) = e^-|z| / 2."""
  return 0.5 * jnp.exp(-jnp.abs(z))


def _solve_lapsum(s: jax.Array, valid: jax.Array, k: jax.Array, alpha: jax.Array) -> jax.Array:
  """The exact t with sum_valid F((s - t) / alpha) = k, for 0 < k < m (see the module docstring)."""
  n = s.shape[-1]
  m = valid.sum(-1, keepdims=True)
  u = jnp.where(valid, s / alpha, 0.0)
  ordered = jnp.sort(jnp.where(valid, u, jnp.inf), axis=-1)  # padding last
  j = jnp.arange(n)
  real = j < m
  ordered = jnp.where(real, ordered, 0.0)
  neg_inf = jnp.asarray(-jnp.inf, s.dtype)
  # A log-add-exp scan (lax.cumlogsumexp lowers to a 13x slower reduce_window on CPU).
  scan = lambda v, reverse: lax.associative_scan(jnp.logaddexp, v, reverse=reverse, axis=u.ndim - 1)
  log_l = scan(jnp.where(real, ordered, neg_inf), False) - ordered
  log_r = scan(jnp.where(real, -ordered, neg_inf), True) + ordered
  g = 0.5 * jnp.exp(log_l) + (m - j) - 0.5 - 0.5 * jnp.exp(log_r)
  c = (real & (g > k)).sum(-1, keepdims=True)
  r = jnp.take_along_axis(ordered, jnp.clip(jnp.where(c < m, c, m - 1), 0, n - 1), -1)
  # Items strictly below r are the c items under the threshold (a block of tied scores is never split:
  # G is the same at every score of the block).
  below = valid & ((u < r) | (c >= m))
  above = valid & ~below
  log_a = jax.nn.logsumexp(jnp.where(below, u - r, neg_inf), axis=-1, keepdims=True)
  log_c = jax.nn.logsumexp(jnp.where(above, r - u, neg_inf), axis=-1, keepdims=True)
  d = (m - below.sum(-1, keepdims=True)).astype(s.dtype) - k  # the partition's own count (rounding-proof)
  log_abs_d = jnp.log(jnp.abs(d))
  log_sqrt = 0.5 * jnp.logaddexp(2.0 * log_abs_d, log_a + log_c)  # log sqrt(d^2 + A C)
  log_y = jnp.where(d >= 0, jnp.logaddexp(log_abs_d, log_sqrt) - log_c, log_a - jnp.logaddexp(log_abs_d, log_sqrt))
  inside = (k > 0) & (k < m)
  log_y = jnp.where(inside & jnp.isfinite(log_y), log_y, 0.0)
  return alpha * (r + log_y)


def lapsum_topk(scores: jax.Array, k: int | jax.Array, *, where: jax.Array | None = None,
                temperature: float = 1.0) -> jax.Array:
  """LapSum soft top-k memberships, `[..., n]` in [0, 1], valid items summing to min(k, m).

  Args:
    scores: `[..., n]` scores.
    k: a Python int, or an int array broadcastable to the leading dims `[...]`.
    where: optional `[..., n]` bool, False for padding (p = 0, no gradient).
    temperature: alpha > 0 (a Python float), in score units.

  Returns:
    `[..., n]` memberships: F((s - t) / alpha) with the exact sum-to-k threshold t; 1 for every
    valid item when k >= m; 0 when k <= 0.
  """
  valid = valid_mask(where, scores.shape)
  k = jnp.asarray(k)
  k = jnp.broadcast_to(k[..., None] if k.ndim else k, scores.shape[:-1] + (1,))
  return implicit_topk(jnp.where(valid, scores, 0.0), valid, k, float(temperature),
                       laplace_cdf, laplace_density, _solve_lapsum)
