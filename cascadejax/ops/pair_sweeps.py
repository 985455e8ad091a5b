"""The pair sweeps of the pairwise-loss kernel (`cascadejax.ops.lambdarank`) and the pair spec.

Each sweep takes a chunk `[bc, n]` of lists already sorted by score (padding last; `nv` valid items
per list) and returns the chunk's loss (per list, per item or none) and gradient with respect to the
sorted scores:

- `cyclic_sweep`: every unordered pair once as (p, (p + d) mod n), scanning the offsets d; working
  set O(bc * n). The fast path on a CPU.
- `rows_sweep`: the pairs (p, q), p < rows, q > p, at once as `[bc, rows, n]`: every pair with
  rows = n (the dense path, for accelerators), or LambdaRank's nonzero-weight pairs with
  rows = topn.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jax import lax

from cascadejax.ops.ranking_utils import log2_discount, position_discounts


@dataclasses.dataclass(frozen=True)
class PairSpec:
  """Static description of a pairwise loss (hashable; one compilation per spec).

  Attributes:
    pair_loss: "logistic" (log(1 + exp(-t))) or "hinge" (max(0, margin - t)), t = s_i - s_j.
    margin: the hinge margin m.
    lambdarank: coefficient of LambdaRank's |D(r_i) - D(r_j)| in lambda_ij.
    ndcg2: coefficient of LambdaLoss's |D(|r_i - r_j|) - D(|r_i - r_j| + 1)| in lambda_ij.
      When both coefficients are 0 the pairs are unweighted (lambda_ij = 1, RankNet).
      Otherwise lambda_ij = scale * |G_i - G_j| * (lambdarank * rho_ij + ndcg2 * delta_ij * kappa_ij)
      with rho_ij = |D(r_i) - D(r_j)| and delta_ij = |D(|r_i - r_j|) - D(|r_i - r_j| + 1)|,
      D(r) = 1 / log2(1 + r).
    topn: rank cutoff: D(r) = 0 for r > topn in rho; in delta, see `topn_rule`. None: no cutoff,
      kappa = 1.
    topn_rule: how delta's kappa_ij treats ranks beyond topn: "kappa" (kappa_ij = 1 / (1 -
      D(max(r_i, r_j))) when max(r_i, r_j) > topn, else 1: Jagerman et al. 2022, rax's
      `dcg2_lambdaweight`) or "mask" (kappa_ij = 1[min(r_i, r_j) <= topn]: a pair counts only if
      one of its items is in the top n, as TF-Ranking's smoothed `LambdaWeight`).
    scale: constant factor of lambda_ij (rax multiplies by the padded list size).
  """

  pair_loss: str = "logistic"
  margin: float = 1.0
  lambdarank: float = 0.0
  ndcg2: float = 0.0
  topn: int | None = None
  topn_rule: str = "kappa"
  scale: float = 1.0

  @property
  def rank_weighted(self) -> bool:
    return self.lambdarank != 0.0 or self.ndcg2 != 0.0


def _pair_terms(spec, t, w, *, want_loss, want_grad):
  """Loss w * l(t) and its derivative w * l'(t) for oriented score gaps t."""
  loss = grad = None
  if spec.pair_loss == "logistic":
    e = jnp.exp(-jnp.abs(t))   # shared by softplus(-t) and sigmoid(-t)
    if want_loss:
      loss = w * (jnp.maximum(-t, 0.0) + jnp.log1p(e))
    if want_grad:
      grad = -w * jnp.where(t < 0, 1.0, e) / (1.0 + e)
  elif spec.pair_loss == "hinge":
    if want_loss:
      loss = w * jnp.maximum(spec.margin - t, 0.0)
    if want_grad:
      grad = jnp.where(t < spec.margin, -w, 0.0)
  else:
    raise ValueError(f"pair_loss must be 'logistic' or 'hinge', got {spec.pair_loss!r}")
  return loss, grad


def _position_factors(spec, n, dtype):
  """Per-position D(rank) (0 beyond topn) and delta's top-n factors `[n]`: kappa_ij is the worse
  position's factor times the better one's."""
  rank = jnp.arange(1, n + 1, dtype=dtype)
  disc = position_discounts(n, dtype=dtype)
  ones = jnp.ones_like(disc)
  if spec.topn is None:
    return disc, ones, ones
  cut = position_discounts(n, topn=spec.topn, dtype=dtype)
  if spec.topn_rule == "mask":
    return cut, ones, (rank <= spec.topn).astype(dtype)
  if spec.topn_rule != "kappa":
    raise ValueError(f"topn_rule must be 'kappa' or 'mask', got {spec.topn_rule!r}")
  kappa = jnp.where(rank > spec.topn, 1.0 / (1.0 - jnp.where(rank > 1, disc, 0.0)), 1.0)
  return cut, kappa, ones


def cyclic_sweep(spec, s, y, g, c, nv, *, loss_mode, want_grad, unroll):
  """All pairs of a chunk `[bc, n]` of score-sorted lists, one cyclic offset d per scan step.

  Returns (loss `[bc]` or `[bc, n]` or None, gradient `[bc, n]` or None), in sorted order.
  """
  bc, n = s.shape
  pos = jnp.arange(n)
  nv = nv[:, None]
  twice = lambda a: None if a is None else jnp.concatenate([a, a], axis=-1)
  s2, y2, g2, c2 = twice(s), twice(y), twice(g), twice(c)
  disc, worse, better = _position_factors(spec, n, s.dtype)
  disc2, worse2, better2 = twice(disc), twice(worse), twice(better)

  def add_at(buf, d, x):   # buf[:, d:d + n] += x: the partner of position p is p + d (mod n)
    return lax.dynamic_update_slice_in_dim(buf, lax.dynamic_slice_in_dim(buf, d, n, -1) + x, d, -1)

  def body(carry, d):
    at = lambda a2: lax.dynamic_slice_in_dim(a2, d, n, -1)
    wrapped = pos >= n - d
    last = jnp.where(wrapped, pos, pos + d)   # the pair's worse (larger) position
    keep = (last < nv) & ((2 * d < n) | (pos < d))   # valid, and each pair once when d = n / 2
    sgn = jnp.where(keep, jnp.sign(y - at(y2)), 0.0)
    lam = 1.0
    if spec.rank_weighted:
      parts = 0.0
      if spec.lambdarank:
        parts = spec.lambdarank * jnp.abs(disc - at(disc2))
      if spec.ndcg2:
        gap = lambda k: jnp.abs(log2_discount(k) - log2_discount(k + 1.0))
        fwd, back = gap(d.astype(s.dtype)), gap((n - d).astype(s.dtype))
        parts = parts + spec.ndcg2 * jnp.where(wrapped, back * worse * at(better2), fwd * at(worse2) * better)
      lam = spec.scale * jnp.abs(g - at(g2)) * parts
    if c is not None:
      lam = lam * jnp.where(sgn > 0, c, at(c2))
    w = jnp.where(sgn != 0, lam, 0.0)
    loss, dl = _pair_terms(spec, sgn * (s - at(s2)), w, want_loss=loss_mode is not None,
                           want_grad=want_grad)
    lacc, lacc2, gacc, gacc2 = carry
    if loss_mode == "list":
      lacc = lacc + loss
    elif loss_mode == "item":   # a pair's loss belongs to its better-labelled item
      lacc = lacc + jnp.where(sgn > 0, loss, 0.0)
      lacc2 = add_at(lacc2, d, jnp.where(sgn < 0, loss, 0.0))
    if want_grad:
      gp = dl * sgn
      gacc, gacc2 = gacc + gp, add_at(gacc2, d, -gp)
    return (lacc, lacc2, gacc, gacc2), None

  z, z2 = jnp.zeros_like(s), jnp.zeros((bc, 2 * n), s.dtype)
  init = (z if loss_mode else None, z2 if loss_mode == "item" else None,
          z if want_grad else None, z2 if want_grad else None)
  (lacc, lacc2, gacc, gacc2), _ = lax.scan(body, init, jnp.arange(1, n // 2 + 1), unroll=unroll)
  fold = lambda a2: a2[:, :n] + a2[:, n:]
  loss = lacc.sum(-1) if loss_mode == "list" else lacc + fold(lacc2) if loss_mode == "item" else None
  return loss, (gacc + fold(gacc2) if want_grad else None)


def rows_sweep(spec, s, y, g, c, nv, *, rows, loss_mode, want_grad):
  """Pairs (p, q) of sorted positions p < `rows`, q > p, all at once as `[bc, rows, n]`.

  With rows = n this is every pair (the dense path); with rows = topn it is every pair of nonzero
  LambdaRank weight (the top-n row path).
  """
  bc, n = s.shape
  k = rows
  disc, worse, better = _position_factors(spec, n, s.dtype)
  row = lambda a: a[:, :k, None]
  col = lambda a: a[:, None, :]
  p, q = jnp.arange(k)[:, None], jnp.arange(n)[None, :]
  keep = (q > p) & (q < nv[:, None, None])
  sgn = jnp.where(keep, jnp.sign(row(y) - col(y)), 0.0)
  lam = 1.0
  if spec.rank_weighted:
    parts = 0.0
    if spec.lambdarank:
      parts = spec.lambdarank * jnp.abs(disc[:k, None] - disc[None, :])
    if spec.ndcg2:   # rank gap q - p; the worse rank is q's
      gap = (q - p).astype(s.dtype)
      delta = jnp.abs(log2_discount(gap) - log2_discount(gap + 1.0))
      parts = parts + spec.ndcg2 * delta * worse[None, :] * better[:k, None]
    lam = spec.scale * jnp.abs(row(g) - col(g)) * parts
  if c is not None:
    lam = lam * jnp.where(sgn > 0, row(c), col(c))
  w = jnp.where(sgn != 0, lam, 0.0)
  loss, dl = _pair_terms(spec, sgn * (row(s) - col(s)), w, want_loss=loss_mode is not None,
                         want_grad=want_grad)
  pad = lambda a: jnp.pad(a, ((0, 0), (0, n - k)))
  if loss_mode == "list":
    loss = loss.sum((1, 2))
  elif loss_mode == "item":
    loss = pad(jnp.where(sgn > 0, loss, 0.0).sum(2)) + jnp.where(sgn < 0, loss, 0.0).sum(1)
  grad = None
  if want_grad:
    gp = dl * sgn
    grad = pad(gp.sum(2)) - gp.sum(1)
  return loss, grad
