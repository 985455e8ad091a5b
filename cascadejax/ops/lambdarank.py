"""Memory-tiled pairwise kernel for RankNet, LambdaRank and LambdaLoss.

Every pairwise ranking loss in `cascadejax.losses` is, per list, a sum over the ordered pairs (i, j)
of valid items with y_i > y_j:

    L = sum_{y_i > y_j}  c_i * lambda_ij * l(s_i - s_j)
    l(t) = log(1 + exp(-t))  ("logistic")   or   max(0, m - t)  ("hinge")

with c_i a per-item weight of the better item and lambda_ij a rank-dependent pair weight (1 for
RankNet; |delta NDCG| for LambdaRank; NDCG-Loss2(++) for LambdaLoss). Built naively (rax's
`compute_pairs`) this materialises several `[B, n * n]` tensors. This kernel never does:

1. It sorts every list once by score (descending, ties by index, padding last), so the 1-based rank
   of an item is its position p + 1 and every rank-dependent factor is a function of positions.
2. It visits each unordered pair exactly once, as (p, (p + d) mod n) for offsets d = 1 .. n // 2,
   orients it by the labels and scans over d (`lax.scan`, `unroll` offsets per step) inside a
   `lax.map` over tiles of `list_tile` lists, so the working set is O(list_tile * n * unroll).
   On a cyclic offset d the rank gap |p - q| is d or n - d and the worse rank is the partner's or
   the item's own, so LambdaLoss's rank-gap discounts are two scalars per step, not per pair.
3. A `custom_vjp` computes the pair gradients ("lambdas") in the same sweep as the loss and
   accumulates them per item; nothing of the sweep is stored for the backward pass.

When only LambdaRank's weight is used with a `topn` < n / 2 (or LambdaLoss's delta with
`topn_rule="mask"` beside it), pairs with both ranks below topn have weight 0, so a second path
visits only the rows p < topn (O(n * topn) pairs instead of n^2 / 2).

The cyclic scan is the fast path on CPUs, where a small working set matters most. On a GPU its
sequential offsets cost one small kernel each (about 50x slower than rax's dense pairs on an H100
at n = 1000, benchmarks/RESULTS.md), so there a third path compares every sorted position with
every later one at once, `[chunk, n, n]`, in chunks of about 64M pairs: faster than rax there,
in bounded memory. `path="auto"` picks by the default backend.

The sweeps themselves are in `cascadejax.ops.pair_sweeps`; this module sorts, chunks and dispatches.

Gradients flow to `scores` only: labels, gains and weights are treated as constants, and the ranks
(positions) are piecewise constant in the scores, as in LambdaRank and rax.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from cascadejax.ops.pair_sweeps import PairSpec, cyclic_sweep, rows_sweep
from cascadejax.ops.ranking_utils import log2_discount as dcg_discount, valid_mask   # dcg_discount: the old name

__all__ = ["PairSpec", "count_label_pairs", "dcg_discount", "tiled_pairwise_loss"]

TILE_ELEMENTS = 1 << 14   # items per chunk of lists on the cyclic path (stays in a core's L2 cache)
ROW_TILE_ELEMENTS = 1 << 18   # pairs per chunk on the top-n row path, on a CPU
DENSE_TILE_ELEMENTS = 1 << 26   # pairs per chunk of the dense and top-n row paths on an accelerator
PATHS = ("auto", "cyclic", "topn_rows", "dense")


@dataclasses.dataclass(frozen=True)
class _Config:
  spec: PairSpec
  per_item: bool
  list_tile: int | None
  unroll: int
  path: str   # "cyclic", "topn_rows" or "dense"
  accelerator: bool


def _run(cfg, s, y, g, c, valid, *, want_loss, want_grad):
  """Sorts `[m, n]` lists by score, sweeps them in chunks, returns (loss, grad) in input order."""
  m, n = s.shape
  iota = lax.broadcasted_iota(jnp.int32, s.shape, 1)
  # rax's tie-breaking: padding last, then descending score, then index
  _, _, perm = lax.sort((~valid, -s, iota), dimension=1, num_keys=3)
  take = lambda a: None if a is None else jnp.take_along_axis(a, perm, axis=1)
  s, y, g, c = take(s), take(y), take(g), take(c)
  nv = valid.sum(-1, dtype=jnp.int32)
  loss_mode = None if not want_loss else ("item" if cfg.per_item else "list")
  if cfg.path != "cyclic":
    rows = n if cfg.path == "dense" else cfg.spec.topn
    per_list = max(1, (DENSE_TILE_ELEMENTS if cfg.accelerator else ROW_TILE_ELEMENTS) // (rows * n))
    sweep = functools.partial(rows_sweep, cfg.spec, rows=rows, loss_mode=loss_mode,
                              want_grad=want_grad)
  else:
    per_list = max(1, TILE_ELEMENTS // n)
    sweep = functools.partial(cyclic_sweep, cfg.spec, loss_mode=loss_mode, want_grad=want_grad,
                              unroll=cfg.unroll)
  bc = min(m, cfg.list_tile or per_list)
  chunks = -(-m // bc)
  pad_rows = chunks * bc - m   # padded lists have no valid item, so no pairs

  def split(a):
    if a is None:
      return None
    a = jnp.pad(a, [(0, pad_rows)] + [(0, 0)] * (a.ndim - 1))
    return a.reshape((chunks, bc) + a.shape[1:])

  args = tuple(map(split, (s, y, g, c, nv)))
  if chunks == 1:
    loss, grad = sweep(*(None if a is None else a[0] for a in args))
    loss, grad = (None if a is None else a[None] for a in (loss, grad))
  else:
    loss, grad = lax.map(lambda a: sweep(*a), args)
  merge = lambda a: None if a is None else a.reshape((chunks * bc,) + a.shape[2:])[:m]
  loss, grad = merge(loss), merge(grad)
  unsort = lambda a: lax.sort((perm, a), dimension=1, num_keys=1)[1]
  if loss is not None and cfg.per_item:
    loss = unsort(loss)
  return loss, (None if grad is None else unsort(grad))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _pairwise(cfg, s, y, g, c, valid):
  return _run(cfg, s, y, g, c, valid, want_loss=True, want_grad=False)[0]


def _pairwise_fwd(cfg, s, y, g, c, valid):
  if cfg.per_item:   # the cotangent differs per item: recompute the sweep with it in the backward
    return _run(cfg, s, y, g, c, valid, want_loss=True, want_grad=False)[0], (s, y, g, c, valid)
  loss, grad = _run(cfg, s, y, g, c, valid, want_loss=True, want_grad=True)
  return loss, (grad,)


def _pairwise_bwd(cfg, res, ct):
  if cfg.per_item:
    s, y, g, c, valid = res
    _, grad = _run(cfg, s, y, g, ct if c is None else c * ct, valid, want_loss=False, want_grad=True)
  else:
    grad = res[0] * ct[:, None]
  return grad, None, None, None, None


_pairwise.defvjp(_pairwise_fwd, _pairwise_bwd)


def tiled_pairwise_loss(scores: jax.Array, labels: jax.Array, *, where: jax.Array | None = None,
                        weights: jax.Array | None = None, gains: jax.Array | None = None,
                        spec: PairSpec = PairSpec(), per_item: bool = False,
                        list_tile: int | None = None, unroll: int = 1,
                        path: str = "auto") -> jax.Array:
  """Sums `c_i * lambda_ij * l(s_i - s_j)` over valid pairs with y_i > y_j, in bounded-memory tiles.

  Args:
    scores: `[..., n]` scores s (the only differentiated input).
    labels: `[..., n]` labels y; a pair is formed when y_i > y_j (ties and padding form none).
    where: optional `[..., n]` bool, False for padding.
    weights: optional per-item weights c, broadcastable to `scores`; a pair carries the weight of
      its better-labelled item (rax's convention). None: 1.
    gains: `[..., n]` gains G in lambda_ij (needed when `spec` is rank-weighted), e.g.
      (2^y - 1) / maxDCG.
    spec: the pair loss and pair weight (`PairSpec`).
    per_item: False: one loss per list, `[...]`. True: `[..., n]`, each pair's loss credited to
      its better-labelled item (the row sums of rax's `[..., n * n]` unreduced pairwise loss).
    list_tile: lists per chunk (default: about 16k items per chunk on the cyclic path; 256k pairs
      per chunk on the top-n row path on a CPU; 64M pairs on the dense path and on the top-n row
      path on an accelerator). Results do not depend on it. Peak memory is
      O(list_tile * n * unroll) on the cyclic path and O(list_tile * rows * n) on the others.
    unroll: cyclic offsets per scan step.
    path: "cyclic" (the offset scan), "topn_rows" (pair weights zero beyond the top n, 0 < topn < n:
      the rows p < topn), "dense" (every pair of a chunk of lists at once) or "auto": "topn_rows"
      when it applies and topn < n / 2, else "cyclic" on a CPU and "dense" on an accelerator
      (`jax.default_backend()`).

  Returns:
    `[...]` per-list sums, or `[..., n]` per-item sums if `per_item`.
  """
  shape = scores.shape
  n = shape[-1]
  dtype = jnp.result_type(scores.dtype, jnp.float32)
  flat = lambda a: jnp.broadcast_to(a, shape).reshape(-1, n)
  valid = flat(valid_mask(where, shape).astype(bool))
  clean = lambda a: jnp.where(valid, flat(a).astype(dtype), 0.0)
  s, y = clean(scores), clean(labels)
  if spec.rank_weighted and gains is None:
    raise ValueError("a rank-weighted PairSpec needs `gains`")
  g = clean(gains) if spec.rank_weighted else None
  c = None if weights is None else clean(weights)
  # Only pairs touching the top n carry weight: LambdaRank's rho alone, or with a masked delta.
  rows_apply = (spec.topn is not None and spec.rank_weighted and 0 < spec.topn < n
                and (spec.ndcg2 == 0.0 or spec.topn_rule == "mask"))
  accelerator = jax.default_backend() != "cpu"
  if path not in PATHS:
    raise ValueError(f"path must be one of {PATHS}, got {path!r}")
  if path == "auto":
    path = "topn_rows" if rows_apply and 2 * spec.topn < n else "dense" if accelerator else "cyclic"
  elif path == "topn_rows" and not rows_apply:
    raise ValueError("path='topn_rows' needs a rank-weighted spec with 0 < topn < list size whose delta "
                     "term, if any, uses topn_rule='mask'")
  cfg = _Config(spec, per_item, list_tile, unroll, path, accelerator)
  out = _pairwise(cfg, s, y, g, c, valid)
  return out.reshape(shape if per_item else shape[:-1])


def count_label_pairs(labels: jax.Array, *, where: jax.Array | None = None) -> jax.Array:
  """Number of ordered pairs (i, j) of valid items with labels_i > labels_j, per list.

  O(n log n): after sorting a list's valid labels ascending, the item at sorted position k
  outranks exactly the items before the first occurrence of its own label.

  Args:
    labels: `[..., n]` labels.
    where: optional `[..., n]` bool, False for padding.

  Returns:
    `[...]` int32 counts.
  """
  valid = valid_mask(where, labels.shape)
  y = jnp.where(valid, labels, 0)
  _, ys = lax.sort((~valid, y), dimension=y.ndim - 1, num_keys=2)
  k = lax.broadcasted_iota(jnp.int32, ys.shape, ys.ndim - 1)
  first = jnp.concatenate([jnp.ones_like(ys[..., :1], bool), ys[..., 1:] != ys[..., :-1]], -1)
  start = lax.cummax(jnp.where(first, k, 0), axis=ys.ndim - 1)
  return jnp.where(k < valid.sum(-1, keepdims=True), start, 0).sum(-1, dtype=jnp.int32)
