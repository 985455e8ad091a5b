"""Differentiable top-k membership: for every item, a soft probability of being in its list's top k.

Methods (`soft_topk(..., method=...)`):

- `"neural_sort"`, `"soft_sort"`: from a relaxed permutation matrix P (`cascadejax.ops.soft_sort`),
  the mass of the first k rows in item i's column, normalised by the column's total mass, as LCRON
  (Wang et al., ICML 2025) does:  p_i = sum_{r<k} P[r, i] / sum_r P[r, i].
  O(n^2) time and memory per list: `B * n^2` floats for a batch.
- `"threshold"` (sub-quadratic): p_i = sigmoid((s_i - t) / temperature), with the threshold t solved
  so that sum_i p_i = k exactly (a safeguarded Newton iteration on the monotone sum, stopping at
  float32 resolution: 3-7 passes over the list at a temperature of the order of the score spread, at
  most 64 and in practice under 30 on adversarial lists; O(n) memory per list). The gradient
  comes from the implicit function theorem, not from unrolling the solver:

      dp_i/ds_j = p_i (1 - p_i) / temperature * (delta_ij - w_j),   w_j = p_j (1 - p_j) / sum_l p_l (1 - p_l)

  so it costs O(n) memory too and is exact at the solution. The temperature is in score units.
- `"dftopk"` (`cascadejax.ops.dftopk`; Zhu, Zhang, Wang et al., arXiv 2510.11472): p_i =
  sigmoid((s_i - theta) / temperature), theta = (s_[k] + s_[k+1]) / 2 halfway between the k-th and
  (k+1)-th largest valid scores, found by an O(n) radix selection; the gradient flows through theta
  as in the authors' code. Closed form, no sort, no iteration; the sum is only about k.
- `"lapsum"` (`cascadejax.ops.lapsum`; Struski et al., ICML 2025): p_i = F((s_i - t) / temperature)
  with F the Laplace CDF and t the exact sum-to-k threshold (closed form after one sort,
  O(n log n)); implicit gradient as above with F' in place of p (1 - p).
- `"sparse_topk"` (`cascadejax.ops.sparse_topk`; Sander et al., ICML 2023): the p = 2 regularised
  top-k mask, p_i = clip((s_i - t) / temperature, 0, 1) with sum = k (the projection onto the capped
  simplex that the paper's isotonic solvers compute), temperature = the regularisation strength;
  exactly 0 or 1 away from the threshold, implicit gradient.

`"threshold"`, `"lapsum"` and `"sparse_topk"` share the sum-to-k form and its implicit gradient
(`cascadejax.ops.sum_to_k`). `MEMBERSHIP_OPERATORS` give memberships directly (O(n) memory);
`PERMUTATION_OPERATORS` go through an `[..., n, n]` matrix.

Every method: padding (`where=False`) is never counted and gets p = 0 and no gradient; k >= the number
m of valid items gives p = 1 for every valid item; k <= 0 gives 0; ties and all-masked lists give
finite values and gradients; any leading batch dims, and `jax.vmap`, work.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cascadejax.ops.dftopk import dftopk
from cascadejax.ops.lapsum import lapsum_topk
from cascadejax.ops.ranking_utils import valid_mask
from cascadejax.ops.soft_sort import neural_sort, soft_sort
from cascadejax.ops.sparse_topk import sparse_topk
from cascadejax.ops.sum_to_k import implicit_topk

# Operators that relax a permutation matrix (O(n^2)), and those that give memberships directly.
PERMUTATION_OPERATORS = ("neural_sort", "soft_sort")
MEMBERSHIP_OPERATORS = ("threshold", "dftopk", "lapsum", "sparse_topk")
TOPK_OPERATORS = PERMUTATION_OPERATORS + MEMBERSHIP_OPERATORS
_MAX_STEPS = 64  # evaluations per list: enough for bisection alone to reach float32 resolution
_RESIDUAL_RTOL = 1e-6  # a list stops once |sum - k| <= this * min(k, m - k), then takes one more step
_MODEL_NEWTON_STEPS = 4  # scalar Newton steps per pass on the two-exponential model (per list, not per item)


def split_mass(perm: jax.Array, k: int | jax.Array, *, normaliser_grad: bool = True,
               eps: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """Each column's mass in the first k rows and in the rest, divided by the column's total mass.

      top_i  = sum_{r < k} P[r, i] / (c_i + eps),   rest_i = sum_{r >= k} P[r, i] / (c_i + eps),
      c_i    = sum_r P[r, i]

  `rest` is summed directly rather than taken as 1 - top, which would lose the small values that
  matter in log(rest) to float32 cancellation. LCRON's and ARF-v2's published code hold c_i
  constant in the gradient (`normaliser_grad=False`) and add eps = 1e-6 to it.

  Args:
    perm: `[..., n, n]` relaxed permutation matrix (rows = ranks, columns = items).
    k: the number of top rows: an int, or an int array broadcastable to `[..., 1, 1]`.
    normaliser_grad: whether gradients flow through c_i.
    eps: added to c_i; columns of zero mass (padding) get 0 either way.

  Returns:
    `(top, rest)`, each `[..., n]`.
  """
  top_rows = jnp.arange(perm.shape[-2])[:, None] < k  # [n, 1] or [..., n, 1]
  top = jnp.where(top_rows, perm, 0.0).sum(-2)
  rest = jnp.where(top_rows, 0.0, perm).sum(-2)
  total = top + rest
  if not normaliser_grad:
    total = jax.lax.stop_gradient(total)
  safe = jnp.where(total > 0, total + eps, 1.0)
  return jnp.where(total > 0, top / safe, 0.0), jnp.where(total > 0, rest / safe, 0.0)


def _threshold_bracket(s: jax.Array, valid: jax.Array, temperature: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`[..., 1]` (lo, hi) around every root of sum_valid sigmoid((s - t) / temperature) = k, 0 < k < m."""
  m = valid.sum(-1, keepdims=True).astype(s.dtype)
  lo = jnp.min(jnp.where(valid, s, jnp.inf), -1, keepdims=True)
  hi = jnp.max(jnp.where(valid, s, -jnp.inf), -1, keepdims=True)
  # At lo - margin every sigmoid exceeds m e / (m e + 1), so the sum exceeds m - 1 >= k; symmetrically
  # at hi + margin the sum is below 1 <= k. The root is inside the bracket.
  margin = temperature * (jnp.log(jnp.maximum(m, 1.0)) + 1.0)
  return jnp.where(jnp.isfinite(lo), lo, 0.0) - margin, jnp.where(jnp.isfinite(hi), hi, 0.0) + margin


def _model_step(deficit: jax.Array, lower: jax.Array, upper: jax.Array, rate_lower: jax.Array,
                rate_upper: jax.Array) -> jax.Array:
  """The x with lower e^(-rate_lower x) - upper e^(rate_upper x) = deficit (each `[..., 1]`).

  g(x) = log(lower e^(-rate_lower x) + max(-deficit, 0)) - log(upper e^(rate_upper x) + max(deficit, 0))
  is decreasing with the same root; concave for deficit > 0, convex for deficit < 0, linear at 0, so
  Newton's method from the root of its one-exponential part (right of the root when concave, left of
  it when convex) converges monotonically. Non-finite where there is no root (a zero tail).
  """
  log_l, log_u = jnp.log(lower), jnp.log(upper)
  log_pos, log_neg = jnp.log(jnp.maximum(deficit, 0.0)), jnp.log(jnp.maximum(-deficit, 0.0))
  x = jnp.where(deficit > 0, (log_l - log_pos) / rate_lower,
                jnp.where(deficit < 0, (log_neg - log_u) / rate_upper, 0.0))
  for _ in range(_MODEL_NEWTON_STEPS):
    a, b = log_l - rate_lower * x, log_u + rate_upper * x
    g = jnp.logaddexp(a, log_neg) - jnp.logaddexp(b, log_pos)
    slope = -rate_lower * jax.nn.sigmoid(a - log_neg) - rate_upper * jax.nn.sigmoid(b - log_pos)
    x = x - g / slope
  return x


@jax.jit  # compiled once per shape, also when soft_topk is called eagerly
def _threshold_iterations(s: jax.Array, valid: jax.Array, k: jax.Array,
                          temperature: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The t with sum_valid sigmoid((s - t) / temperature) = k (for 0 < k < m), and the passes used.

  Each pass over a list evaluates, at the current t, the count a of items at or above t, the lower
  tail P = sum_{s < t} sigmoid(z) and the upper tail Q = sum_{s >= t} sigmoid(-z) (z = (s - t) / tau,
  both from one exp(-|z|)) and their derivatives. The sum is S = a + P - Q, so the residual
  r = S - k = (a - k) + P - Q is free of cancellation. Two steps are proposed from these:

  - Newton's method in u = e^(t / tau) where r > 0 and in e^(-t / tau) where r < 0: S is convex and
    decreasing in each, so t' = t + tau sign(r) log(1 + |r| / sum sigmoid') never overshoots the
    root, and converges quadratically near it;
  - the root of a model with each tail an exponential in t of the measured value and slope
    (`_model_step`): it also matches S and S' at t, and it is exact when the root sits in a gap
    between items many tau apart, where the first step advances by less than tau log 2 per pass.

  The longer one is taken if it stays inside the bracket that every pass narrows; when it does not,
  or when the residual did not halve since the previous pass (a staircase of items far apart
  compared with tau, where local steps crawl), the pass bisects the bracket instead. A list stops
  once |r| <= 1e-6 min(k, m - k), its next step is below float resolution (eps (|t| + tau)) or its
  residual is exactly 0, taking that last step; the batch stops when every list has (at most
  `_MAX_STEPS` passes).

  Returns:
    `(t, steps)`: `[..., 1]` thresholds (finite everywhere) and `[..., 1]` int32 passes per list.
  """
  dtype = s.dtype
  m = valid.sum(-1, keepdims=True).astype(dtype)
  lo, hi = _threshold_bracket(s, valid, temperature)
  active = (k > 0) & (k < m)
  eps = jnp.finfo(dtype).eps

  def body(state):
    t, lo, hi, previous, done, steps, i = state
    z = (s - t) / temperature
    e = jnp.exp(-jnp.abs(z))
    inv = 1.0 / (1.0 + e)
    tail, density = e * inv, e * inv * inv  # the smaller of sigmoid(z) and sigmoid(-z); sigmoid'(z)
    up, low = valid & (z >= 0), valid & (z < 0)
    a = up.sum(-1, keepdims=True).astype(dtype)
    sums = [jnp.where(mask, x, 0.0).sum(-1, keepdims=True) for mask in (low, up) for x in (tail, density)]
    lower, d_lower, upper, d_upper = sums
    residual = (a - k) + lower - upper  # S - k; > 0: t is below the root
    lo = jnp.where(residual > 0, t, lo)
    hi = jnp.where(residual < 0, t, hi)
    step = temperature * jnp.sign(residual) * jnp.log1p(jnp.abs(residual) / (d_lower + d_upper))
    step = jnp.where(jnp.isfinite(step), step, 0.0)
    model = temperature * _model_step(k - a, lower, upper, jnp.where(lower > 0, d_lower / lower, 1.0),
                                      jnp.where(upper > 0, d_upper / upper, 1.0))
    longer = jnp.isfinite(model) & (t + model >= lo) & (t + model <= hi) & (jnp.abs(model) > jnp.abs(step))
    step = jnp.where(longer, model, step)
    slow = jnp.abs(residual) > 0.5 * jnp.abs(previous)
    bisect = (step == 0) | (t + step < lo) | (t + step > hi) | slow
    t_new = jnp.where(residual == 0, t, jnp.where(bisect, 0.5 * (lo + hi), t + step))
    stop = ((jnp.abs(residual) <= _RESIDUAL_RTOL * jnp.minimum(k, m - k))
            | (jnp.abs(t_new - t) <= eps * (jnp.abs(t) + temperature)))
    keep = lambda old, new: jnp.where(done, old, new)  # noqa: E731
    return (keep(t, t_new), keep(state[1], lo), keep(state[2], hi), keep(previous, residual), done | stop,
            steps + (~done).astype(jnp.int32), i + 1)

  def cond(state):
    return jnp.any(~state[4]) & (state[6] < _MAX_STEPS)

  state = (0.5 * (lo + hi), lo, hi, jnp.full(lo.shape, jnp.inf, dtype), ~active,
           jnp.zeros(lo.shape, jnp.int32), jnp.zeros((), jnp.int32))
  t, _, _, _, _, steps, _ = jax.lax.while_loop(cond, body, state)
  return t, steps


def _solve_threshold(s: jax.Array, valid: jax.Array, k: jax.Array, temperature: jax.Array) -> jax.Array:
  """The t with sum_valid sigmoid((s - t) / temperature) = k, for 0 < k < m (`_threshold_iterations`)."""
  return _threshold_iterations(s, valid, k, temperature)[0]


def _sigmoid_density(z: jax.Array) -> jax.Array:
  p = jax.nn.sigmoid(z)
  return p * (1.0 - p)


def soft_topk(scores: jax.Array, k: int | jax.Array, *, where: jax.Array | None = None,
              method: str = "neural_sort", temperature: float = 1.0) -> jax.Array:
  """Soft top-k membership of every item of every list.

  Args:
    scores: `[..., n]` scores.
    k: the selection size: a Python int, or an int array broadcastable to the leading dims `[...]`.
    where: optional `[..., n]` bool, False for padding.
    method: one of `TOPK_OPERATORS`: `"neural_sort"`, `"soft_sort"` (O(n^2) memory), `"threshold"`,
      `"dftopk"`, `"lapsum"` or `"sparse_topk"` (O(n) memory); see the module docstring for their
      definitions.
    temperature: positive Python float, the relaxation temperature (not differentiated). Its scale
      depends on the method: NeuralSort's logits grow with n times the score spread; every other
      method's temperature is in score units (for `"sparse_topk"` it is the regularisation strength).

  Returns:
    `[..., n]` values in [0, 1]; 0 on padding. Valid items sum to min(k, m) for `"threshold"`,
    `"lapsum"` and `"sparse_topk"`, and to about that for `"dftopk"` and the permutation methods.
  """
  if method not in TOPK_OPERATORS:
    raise ValueError(f"soft_topk: unknown method {method!r}; available: {TOPK_OPERATORS}")
  if not float(temperature) > 0:  # also rejects NaN
    raise ValueError(f"soft_topk: temperature must be positive, got {temperature!r}")
  valid = valid_mask(where, scores.shape)
  k = jnp.asarray(k)
  if method == "dftopk":
    return dftopk(scores, k, where=valid, temperature=float(temperature))
  if method == "lapsum":
    return lapsum_topk(scores, k, where=valid, temperature=float(temperature))
  if method == "sparse_topk":
    return sparse_topk(scores, k, where=valid, temperature=float(temperature))
  if method == "threshold":
    k = jnp.broadcast_to(k[..., None] if k.ndim else k, scores.shape[:-1] + (1,))
    return implicit_topk(jnp.where(valid, scores, 0.0), valid, k, float(temperature),
                         jax.nn.sigmoid, _sigmoid_density, _solve_threshold)
  relax = neural_sort if method == "neural_sort" else soft_sort
  perm = relax(scores, temperature=temperature, where=valid)
  return split_mass(perm, k[..., None, None] if k.ndim else k)[0]
