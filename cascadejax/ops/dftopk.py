"""DFTopK: a closed-form soft top-k with the threshold halfway between the k-th and (k+1)-th score.

Zhu, Zhang, Wang et al., *Differentiable Fast Top-K Selection for Large-Scale Recommendation*,
arXiv 2510.11472, 2025. For a list of m valid scores x with x_[1] >= x_[2] >= ... (valid items only):

    theta = (x_[k] + x_[k+1]) / 2,        z_i = (x_i - theta) / tau,        p_i = sigmoid(z_i)

for 0 < k < m. Unlike the sum-to-k operators the memberships do not sum to k exactly (the
normalisation is relaxed); there is no sort and no iteration. The authors' code (zhangzhen97/DFTOPK,
`torch/deep_components/loss/two_stage/topk_loss.py`, `dftopk`, and
`tensorflow_based/op/DFTopK.py`) lets the gradient flow through theta: theta is a function of the
two boundary scores, so

    dp_i/dx_j = sigmoid'(z_i) / tau * (delta_ij - [j = i_k] / 2 - [j = i_{k+1}] / 2)

with i_k, i_{k+1} the items at ranks k and k+1 (`threshold_grad=True`, the default);
`threshold_grad=False` holds theta constant (dp_i/dx_j = sigmoid'(z_i) / tau * delta_ij).

Selection: the two boundary scores are found by a radix selection on the scores' bit patterns (one
counting pass per bit, 32 for float32, then one max pass), O(n) per list whatever k is, jittable,
with k a Python int or a traced int array. (`lax.top_k` of k + 1 is O(n log k) and measured 4-7x
slower on CPU at k = n/4.)

Conventions: padding (`where=False`) is never counted and gets p = 0 (logit -inf) and no gradient;
k >= m gives p = 1 (logit +inf) for every valid item; k <= 0 gives 0; a tie at the boundary gives
theta equal to the tied score (p = 1/2 for the tied items) and sends the threshold's gradient to two
of them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from cascadejax.ops.ranking_utils import valid_mask


def _ordered_bits(x: jax.Array) -> jax.Array:
  """Unsigned integers with the order of the floats `x` (sign-magnitude -> offset binary)."""
  bits = jnp.finfo(x.dtype).bits
  utype = jnp.dtype(f"uint{bits}")
  u = lax.bitcast_convert_type(x, utype)
  sign = jnp.asarray(1 << (bits - 1), utype)
  return jnp.where(u >= sign, ~u, u | sign)


def boundary_indices(scores: jax.Array, k: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The positions of the k-th and (k+1)-th largest valid scores of every list (radix selection).

  Finds the largest bit pattern T with #{valid i: bits_i >= T} >= k, one bit at a time from the top
  (a counting pass per bit); the k-th score is the one with pattern T. The (k+1)-th is the same
  pattern if at least k + 1 valid items reach it (a tie), else the largest pattern below it.

  Args:
    scores: `[..., n]` float scores.
    k: `[..., 1]` int, with 0 < k < m (other lists get some valid or padding position; callers
      replace their values).
    valid: `[..., n]` bool.

  Returns:
    `(i_k, i_k1)`, each `[..., 1]` int32 positions into the last axis; distinct for 0 < k < m.
  """
  u = _ordered_bits(scores)
  bits = jnp.finfo(scores.dtype).bits
  one = jnp.asarray(1, u.dtype)

  def step(i, t):
    candidate = t | (one << (bits - 1 - i).astype(u.dtype))
    enough = ((u >= candidate) & valid).sum(-1, keepdims=True) >= k
    return jnp.where(enough, candidate, t)

  t = lax.fori_loop(0, bits, step, jnp.zeros(scores.shape[:-1] + (1,), u.dtype))
  at_t = valid & (u == t)
  i_k = jnp.argmax(at_t, axis=-1, keepdims=True)
  positions = jnp.arange(scores.shape[-1])
  tie = ((u >= t) & valid).sum(-1, keepdims=True) >= k + 1
  below = jnp.max(jnp.where(valid & (u < t), u, 0), axis=-1, keepdims=True)
  t1 = jnp.where(tie, t, below)
  i_k1 = jnp.argmax(valid & (u == t1) & (positions != i_k), axis=-1, keepdims=True)
  return i_k.astype(jnp.int32), i_k1.astype(jnp.int32)


def dftopk_logits(scores: jax.Array, k: int | jax.Array, *, where: jax.Array | None = None,
                  temperature: float = 1.0, threshold_grad: bool = True) -> jax.Array:
  """DFTopK's logits z_i = (x_i - theta) / tau, theta = (x_[k] + x_[k+1]) / 2 (see the module doc).

  Args:
    scores: `[..., n]` scores.
    k: a Python int, or an int array broadcastable to the leading dims `[...]`.
    where: optional `[..., n]` bool, False for padding.
    temperature: tau > 0 (a Python float, not differentiated); in score units.
    threshold_grad: differentiate theta (the reference code) or hold it constant.

  Returns:
    `[..., n]` logits: finite for valid items of lists with 0 < k < m, +inf for valid items when
    k >= m, -inf for padding and when k <= 0. Their gradient is finite everywhere (0 off the
    finite entries).
  """
  if not float(temperature) > 0:
    raise ValueError(f"dftopk: temperature must be positive, got {temperature!r}")
  valid = valid_mask(where, scores.shape)
  k = jnp.asarray(k)
  k = jnp.broadcast_to(k[..., None] if k.ndim else k, scores.shape[:-1] + (1,))
  m = valid.sum(-1, keepdims=True)
  inside = (k > 0) & (k < m)
  x = jnp.where(valid, scores, 0.0)
  i_k, i_k1 = boundary_indices(lax.stop_gradient(x), jnp.where(inside, k, 1), valid)
  theta = 0.5 * (jnp.take_along_axis(x, i_k, -1) + jnp.take_along_axis(x, i_k1, -1))
  if not threshold_grad:
    theta = lax.stop_gradient(theta)
  z = (x - theta) / float(temperature)
  outside = jnp.where(k >= m, jnp.inf, -jnp.inf).astype(z.dtype)
  return jnp.where(valid & inside, z, jnp.where(valid, outside, -jnp.inf))


def dftopk(scores: jax.Array, k: int | jax.Array, *, where: jax.Array | None = None,
           temperature: float = 1.0, threshold_grad: bool = True) -> jax.Array:
  """DFTopK memberships p_i = sigmoid((x_i - theta) / tau), `[..., n]` in [0, 1], 0 on padding.

  Args: as `dftopk_logits`.
  """
  return jax.nn.sigmoid(dftopk_logits(scores, k, where=where, temperature=temperature,
                                      threshold_grad=threshold_grad))
