"""Pairwise ranking losses: RankNet, BPR, hinge, LambdaRank and LambdaLoss.

Every loss here is a sum over the ordered pairs (i, j) of valid items with y_i > y_j (ties and
padding form no pair) of

    w_i * lambda_ij * l(s_i - s_j)

and is computed by the memory-tiled kernel `cascadejax.ops.lambdarank.tiled_pairwise_loss`, which
never forms `[..., n, n]` tensors. Conventions follow rax's `pairwise_loss`:

- `weights` w (per item) weight a pair by its better-labelled item's weight;
- `reduce_fn=jnp.mean` divides the batch's summed pair losses by its number of pairs (pairs with
  y_i > y_j, both valid, whatever their lambda weight); `jnp.sum` sums them; with no pair at all
  the loss is 0;
- `reduce_fn=None` returns `[..., n]`: each pair's loss credited to its better-labelled item (the
  row sums of rax's unreduced `[..., n * n]` output; the kernel never forms the pair matrix).
  Other reduce functions are refused.

Gradients flow to `scores` only; ranks are piecewise constant in the scores (as in rax).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cascadejax.ops.lambdarank import PairSpec, count_label_pairs, tiled_pairwise_loss
from cascadejax.ops.ranking_utils import ReduceFn, normalize_by_ideal_dcg, pow2m1_gain


def _pairwise(scores, labels, *, where, weights, reduce_fn, spec, gains=None):
  if reduce_fn is not None and reduce_fn is not jnp.mean and reduce_fn is not jnp.sum:
    raise ValueError(f"pairwise losses take reduce_fn=jnp.mean, jnp.sum or None, got {reduce_fn!r}")
  out = tiled_pairwise_loss(scores, labels, where=where, weights=weights, gains=gains, spec=spec,
                            per_item=reduce_fn is None)
  if reduce_fn is None:
    return out
  total = out.sum()
  if reduce_fn is jnp.sum:
    return total
  return total / jnp.maximum(count_label_pairs(labels, where=where).sum(), 1).astype(total.dtype)


def ranknet_loss(scores: jax.Array, labels: jax.Array, *, where: jax.Array | None = None,
                 weights: jax.Array | None = None, reduce_fn: ReduceFn = jnp.mean) -> jax.Array:
  """RankNet: pairwise logistic loss over all pairs with y_i > y_j (Burges et al., 2005).

      L = sum_{y_i > y_j} w_i log(1 + exp(-(s_i - s_j)))

  rax: `pairwise_logistic_loss(scores, labels)`.

  Args:
    scores: `[..., list_size]` scores.
    labels: `[..., list_size]` graded relevance.
    where: optional `[..., list_size]` bool, False for padding.
    weights: optional per-item weights, broadcastable to `scores`.
    reduce_fn: `jnp.mean` (over pairs), `jnp.sum`, or None (per-item `[..., list_size]`).

  Returns:
    The reduced loss, or `[..., list_size]` per-item sums if `reduce_fn` is None.
  """
  return _pairwise(scores, labels, where=where, weights=weights, reduce_fn=reduce_fn,
                   spec=PairSpec())


def bpr_loss(scores: jax.Array, labels: jax.Array, *, where: jax.Array | None = None,
             weights: jax.Array | None = None, reduce_fn: ReduceFn = jnp.mean) -> jax.Array:
  """Bayesian personalised ranking (Rendle et al., 2009): every positive against every negative.

      L = sum_{i: y_i > 0} sum_{j: y_j <= 0} -w_i log sigmoid(s_i - s_j)

  Items with label > 0 are positives. rax: `pairwise_logistic_loss(scores, labels > 0)`.

  Args:
    scores: `[..., list_size]` scores.
    labels: `[..., list_size]` relevance; only `labels > 0` matters.
    where: optional `[..., list_size]` bool, False for padding.
    weights: optional per-item weights (a pair carries its positive's), broadcastable to `scores`.
    reduce_fn: `jnp.mean` (over positive-negative pairs), `jnp.sum`, or None (per positive item).

  Returns:
    The reduced loss, or `[..., list_size]` per-item sums if `reduce_fn` is None.
  """
  positive = (labels > 0).astype(scores.dtype)
  return _pairwise(scores, positive, where=where, weights=weights, reduce_fn=reduce_fn,
                   spec=PairSpec())


def hinge_loss(scores: jax.Array, labels: jax.Array, *, margin: float = 1.0,
               where: jax.Array | None = None, weights: jax.Array | None = None,
               reduce_fn: ReduceFn = jnp.mean) -> jax.Array:
  """Pairwise hinge loss with margin m (RankSVM, Herbrich et al., 2000; Joachims, 2002).

      L = sum_{y_i > y_j} w_i max(0, m - (s_i - s_j))

  rax: `pairwise_hinge_loss` (which fixes m = 1).

  Args:
    scores: `[..., list_size]` scores.
    labels: `[..., list_size]` graded relevance.
    margin: the margin m.
    where: optional `[..., list_size]` bool, False for padding.
    weights: optional per-item weights, broadcastable to `scores`.
    reduce_fn: `jnp.mean` (over pairs), `jnp.sum`, or None (per-item `[..., list_size]`).

  Returns:
    The reduced loss, or `[..., list_size]` per-item sums if `reduce_fn` is None.
  """
  return _pairwise(scores, labels, where=where, weights=weights, reduce_fn=reduce_fn,
                   spec=PairSpec(pair_loss="hinge", margin=float(margin)))


def ndcg_gains(labels: jax.Array, *, where: jax.Array | None = None,
               weights: jax.Array | None = None, topn: int | None = None,
               normalize: bool = True) -> jax.Array:
  """Gains G_i = w_i (2^y_i - 1), divided by the list's maxDCG@topn if `normalize` (and it is not 0).

  Args:
    labels: `[..., list_size]` graded relevance y.
    where: optional `[..., list_size]` bool, False for padding.
    weights: optional per-item weights w, broadcastable to `labels`.
    topn: cutoff of the ideal DCG.
    normalize: divide by maxDCG (NDCG gains) or not (DCG gains).

  Returns:
    `[..., list_size]` gains.
  """
  gains = pow2m1_gain(labels.astype(jnp.result_type(labels.dtype, jnp.float32)))
  if weights is not None:
    gains = gains * weights
  return normalize_by_ideal_dcg(gains, where=where, topn=topn) if normalize else gains


def lambdarank_loss(scores: jax.Array, labels: jax.Array, *, where: jax.Array | None = None,
                    weights: jax.Array | None = None, topn: int | None = None,
                    normalize: bool = True, reduce_fn: ReduceFn = jnp.mean) -> jax.Array:
  """LambdaRank (Burges et al., 2006): RankNet with every pair weighted by its |delta NDCG|.

      L         = sum_{y_i > y_j} w_i lambda_ij log(1 + exp(-(s_i - s_j)))
      lambda_ij = n |G_i - G_j| |D(r_i) - D(r_j)|,    D(r) = 1 / log2(1 + r) if r <= topn else 0

  with r_i the 1-based rank of item i under the current scores (descending, ties by index, padding
  last), G = (2^y - 1) w / maxDCG@topn (`ndcg_gains`), and n the (padded) list size: rax scales its
  lambda weights by n; |G_i - G_j| |D(r_i) - D(r_j)| is exactly the |delta NDCG@topn| of swapping
  i and j. rax: `pairwise_logistic_loss(..., lambdaweight_fn=partial(dcg_lambdaweight,
  topn=topn, normalize=normalize))`; note rax's `normalize` defaults to False (DCG gains), ours to
  True (NDCG, as the name says). With `topn` < n / 2 only the O(n topn) pairs that touch the top
  are visited.

  Args:
    scores: `[..., list_size]` scores.
    labels: `[..., list_size]` graded relevance.
    where: optional `[..., list_size]` bool, False for padding.
    weights: optional per-item weights, broadcastable to `scores` (in the gains and on each pair's
      better item, as in rax).
    topn: NDCG cutoff; None for the whole list.
    normalize: NDCG (True) or DCG (False) gains.
    reduce_fn: `jnp.mean` (over pairs), `jnp.sum`, or None (per-item `[..., list_size]`).

  Returns:
    The reduced loss, or `[..., list_size]` per-item sums if `reduce_fn` is None.
  """
  gains = ndcg_gains(labels, where=where, weights=weights, topn=topn, normalize=normalize)
  spec = PairSpec(lambdarank=1.0, topn=topn, scale=float(scores.shape[-1]))
  return _pairwise(scores, labels, where=where, weights=weights, reduce_fn=reduce_fn, spec=spec,
                   gains=gains)


def lambdaloss(scores: jax.Array, labels: jax.Array, *, where: jax.Array | None = None,
               weights: jax.Array | None = None, topn: int | None = None, normalize: bool = True,
               scheme: str = "ndcg2++", mu: float = 10.0,
               reduce_fn: ReduceFn = jnp.mean) -> jax.Array:
  """LambdaLoss (Wang et al., 2018) with the NDCG-Loss2 or NDCG-Loss2++ weighting.

      L         = sum_{y_i > y_j} w_i lambda_ij log(1 + exp(-(s_i - s_j)))
      delta_ij  = |D(|r_i - r_j|) - D(|r_i - r_j| + 1)|                       (NDCG-Loss2)
      rho_ij    = |D@topn(r_i) - D@topn(r_j)|                                  (LambdaRank's)
      lambda_ij = n |G_i - G_j| delta_ij kappa_ij                  scheme "ndcg2"
      lambda_ij = n |G_i - G_j| (rho_ij + mu delta_ij kappa_ij)    scheme "ndcg2++"
      kappa_ij  = 1 / (1 - D(max(r_i, r_j))) if max(r_i, r_j) > topn else 1

  D(r) = 1 / log2(1 + r), ranks and gains as in `lambdarank_loss`. kappa is the top-n correction
  of Jagerman et al. (2022) that rax's `dcg2_lambdaweight` applies (1 without `topn`). rax:
  "ndcg2" is `pairwise_logistic_loss(..., lambdaweight_fn=dcg2_lambdaweight)`; "ndcg2++" is the
  same loss with the lambda weights `dcg_lambdaweight + mu * dcg2_lambdaweight`. The paper's
  loss uses log2 and a score scale sigma; this uses the natural log and sigma = 1, like rax. The
  default mu = 10 is that of allRank's public implementation.

  Args:
    scores: `[..., list_size]` scores.
    labels: `[..., list_size]` graded relevance.
    where: optional `[..., list_size]` bool, False for padding.
    weights: optional per-item weights, broadcastable to `scores`.
    topn: NDCG cutoff (maxDCG, rho and kappa); None for the whole list.
    normalize: NDCG (True) or DCG (False) gains.
    scheme: "ndcg2" or "ndcg2++".
    mu: weight of delta in "ndcg2++".
    reduce_fn: `jnp.mean` (over pairs), `jnp.sum`, or None (per-item `[..., list_size]`).

  Returns:
    The reduced loss, or `[..., list_size]` per-item sums if `reduce_fn` is None.
  """
  if scheme == "ndcg2":
    coefficients = dict(lambdarank=0.0, ndcg2=1.0)
  elif scheme == "ndcg2++":
    coefficients = dict(lambdarank=1.0, ndcg2=float(mu))
  else:
    raise ValueError(f"scheme must be 'ndcg2' or 'ndcg2++', got {scheme!r}")
  gains = ndcg_gains(labels, where=where, weights=weights, topn=topn, normalize=normalize)
  spec = PairSpec(topn=topn, scale=float(scores.shape[-1]), **coefficients)
  return _pairwise(scores, labels, where=where, weights=weights, reduce_fn=reduce_fn, spec=spec,
                   gains=gains)
