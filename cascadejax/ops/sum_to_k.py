"""Soft top-k by a threshold that makes the memberships sum to k, differentiated implicitly.

The `"threshold"`, `"lapsum"` and `"sparse_topk"` operators of `cascadejax.ops.soft_topk` share one
form. For a list of m valid scores s, a temperature tau and a non-decreasing CDF-like map F from the
reals onto [0, 1] with derivative f:

    p_i = F((s_i - t) / tau),   t solved so that  sum_{i valid} p_i = k        (0 < k < m)

(`threshold`: F = sigmoid; `lapsum`: F = the Laplace CDF; `sparse_topk`: F = clip(., 0, 1)). Only
the solver that finds t differs. The gradient does not unroll the solver: differentiating the
constraint sum_i p_i = k gives dt = sum_j f_j ds_j / sum_l f_l, so

    dp_i/ds_j = f_i / tau * (delta_ij - f_j / sum_l f_l),     f_i = f((s_i - t) / tau)

which is exact at the solution and costs two O(n) reductions. Where every f_i is 0 (a sparse
solution with no item strictly between 0 and 1) the gradient is 0.

Conventions of `soft_topk`: padding (`valid=False`) gets p = 0 and no gradient; k >= m gives p = 1
for every valid item; k <= 0 gives 0; the solver is only trusted for 0 < k < m.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

# solve(s, valid, k, temperature) -> t: `[..., n]`, `[..., n]`, `[..., 1]` (float), scalar -> `[..., 1]`.
Solver = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4, 5, 6))
def implicit_topk(s: jax.Array, valid: jax.Array, k: jax.Array, temperature: float,
                  cdf: Callable[[jax.Array], jax.Array], density: Callable[[jax.Array], jax.Array],
                  solve: Solver) -> jax.Array:
  """p_i = cdf((s_i - t) / temperature) with sum_valid p = k, t from `solve`; implicit gradient.

  Args:
    s: `[..., n]` scores.
    valid: `[..., n]` bool, False for padding.
    k: `[..., 1]` int selection sizes (one per list).
    temperature: positive Python float (not differentiated).
    cdf: F, non-decreasing onto [0, 1].
    density: f = F', used only by the gradient.
    solve: finds t for the lists with 0 < k < m (its value elsewhere is ignored, but must be finite).

  Returns:
    `[..., n]` memberships in [0, 1]; 0 on padding.
  """
  del density
  m = valid.sum(-1, keepdims=True)
  inside = (k > 0) & (k < m)
  tau = jnp.asarray(temperature, s.dtype)
  t = solve(s, valid, jnp.clip(k, 0, None).astype(s.dtype), tau)
  p = cdf((s - t) / tau)
  p = jnp.where(inside, p, jnp.where(k >= m, 1.0, 0.0).astype(s.dtype))
  return jnp.where(valid, p, 0.0)


@implicit_topk.defjvp
def _implicit_topk_jvp(temperature, cdf, density, solve, primals, tangents):
  s, valid, k = primals
  ds = jnp.where(valid, tangents[0], 0.0)
  m = valid.sum(-1, keepdims=True)
  inside = valid & (k > 0) & (k < m)
  tau = jnp.asarray(temperature, s.dtype)
  t = solve(s, valid, jnp.clip(k, 0, None).astype(s.dtype), tau)
  z = (s - t) / tau
  p = jnp.where(inside, cdf(z), jnp.where(k >= m, 1.0, 0.0).astype(s.dtype))
  p = jnp.where(valid, p, 0.0)
  slope = jnp.where(inside, density(jnp.where(inside, z, 0.0)), 0.0)  # 0 where p is constant
  norm = slope.sum(-1, keepdims=True)
  dt = (slope * ds).sum(-1, keepdims=True) / jnp.where(norm > 0, norm, 1.0)
  return p, slope / tau * (ds - dt)
