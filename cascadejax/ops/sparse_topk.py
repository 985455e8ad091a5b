"""Sparse soft top-k: the p = 2 regularised top-k mask of Sander et al., solved exactly.

Sander, Puigcerver, Djolonga, Peyre, Blondel, *Fast, Differentiable and Sparse Top-k: a Convex
Analysis Perspective*, ICML 2023, arXiv 2302.01425. The soft top-k mask of a list x with
regularisation strength l is

    p = argmax_{y in C_k}  <x, y> - (l / 2) ||y||^2,      C_k = {y in [0, 1]^m : sum_i y_i = k}

(C_k is the permutahedron of (1, ..., 1, 0, ..., 0) with k ones). The paper computes it as
p = (s - v) / l in sorted order, v the decreasing isotonic regression of s - l w (s = x sorted
descending, w = k ones then zeros), by PAV or by Dykstra's alternating projections. Here s - l w
decreases everywhere but at the single step between positions k and k + 1, so the isotonic
regression pools one block around it and leaves the rest alone; equivalently p is the Euclidean
projection of x / l onto the capped simplex C_k:

    p_i = clip((x_i - t) / l, 0, 1),    t solved so that sum_{i valid} p_i = k

Items far above t get exactly 1, items far below exactly 0 (the sparsity), the ones in between a
linear ramp. t is bracketed by bisection (O(n) per pass) and then solved exactly on its linear
piece: t = (sum_{0 < p_i < 1} x_i - l (k - #{p_i = 1})) / #{0 < p_i < 1}. The gradient is the
isotonic regression's (implicit, `cascadejax.ops.sum_to_k`): within the ramp
dp_i/dx_j = (delta_ij - 1 / |ramp|) / l, 0 elsewhere.

DFTopK's comparison runs this operator at l = 1 with k = the ground-truth size, by 500 Dykstra
iterations unrolled in autograd (zhangzhen97/DFTOPK, `torch/deep_components/loss/two_stage/
google_top_k.py`, `sparse_soft_topk_mask_dykstra(x, k, l=1)`, and `isotonic_dykstra.py`); this module
computes the point those iterations converge to. Only the p = 2 (quadratic) regulariser is
implemented: the reference runs no other.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cascadejax.ops.ranking_utils import valid_mask
from cascadejax.ops.sum_to_k import implicit_topk

_BISECTION_STEPS = 60


def ramp(z: jax.Array) -> jax.Array:
  """clip(z, 0, 1)."""
  return jnp.clip(z, 0.0, 1.0)


def ramp_density(z: jax.Array) -> jax.Array:
  """1 on (0, 1), 0 elsewhere (the derivative of `ramp` almost everywhere)."""
  return ((z > 0) & (z < 1)).astype(z.dtype)


def _solve_sparse(s: jax.Array, valid: jax.Array, k: jax.Array, l: jax.Array) -> jax.Array:
  """The t with sum_valid clip((s - t) / l, 0, 1) = k, for 0 < k < m."""
  lo = jnp.min(jnp.where(valid, s, jnp.inf), -1, keepdims=True)
  hi = jnp.max(jnp.where(valid, s, -jnp.inf), -1, keepdims=True)
  lo = jnp.where(jnp.isfinite(lo), lo, 0.0) - l  # every item at 1: the sum is m > k
  hi = jnp.where(jnp.isfinite(hi), hi, 0.0)      # every item at 0: the sum is 0 < k

  def total(t):
    return jnp.where(valid, ramp((s - t) / l), 0.0).sum(-1, keepdims=True)

  def step(_, bracket):
    lo, hi = bracket
    mid = 0.5 * (lo + hi)
    above = total(mid) > k  # threshold too low
    return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

  lo, hi = jax.lax.fori_loop(0, _BISECTION_STEPS, step, (lo, hi))
  t = 0.5 * (lo + hi)
  z = (s - t) / l
  mid = valid & (z > 0) & (z < 1)
  count = mid.sum(-1, keepdims=True)
  ones = (valid & (z >= 1)).sum(-1, keepdims=True)
  exact = (jnp.where(mid, s, 0.0).sum(-1, keepdims=True) - l * (k - ones)) / jnp.maximum(count, 1)
  return jnp.where(count > 0, exact, t)


def sparse_topk(scores: jax.Array, k: int | jax.Array, *, where: jax.Array | None = None,
                temperature: float = 1.0) -> jax.Array:
  """Sparse soft top-k mask p_i = clip((x_i - t) / l, 0, 1), sum_valid p = min(k, m).

  Args:
    scores: `[..., n]` scores.
    k: a Python int, or an int array broadcastable to the leading dims `[...]`.
    where: optional `[..., n]` bool, False for padding (p = 0, no gradient).
    temperature: the regularisation strength l > 0 (a Python float), in score units.

  Returns:
    `[..., n]` memberships in [0, 1], many exactly 0 or 1; 1 for every valid item when k >= m, 0
    when k <= 0.
  """
  valid = valid_mask(where, scores.shape)
  k = jnp.asarray(k)
  k = jnp.broadcast_to(k[..., None] if k.ndim else k, scores.shape[:-1] + (1,))
  return implicit_topk(jnp.where(valid, scores, 0.0), valid, k, float(temperature),
                       ramp, ramp_density, _solve_sparse)
