"""Shared ranking utilities (rax-style): gains, discounts, DCG, masks and means over lists.

Every array is `[..., list_size]` (lists on the last axis, any batch dims before it); masks are
keyword-only `where` arrays, True for the items that count. Ranks are 1-based: rank r is position
r - 1 of a list sorted by descending score, ties broken towards the lower index, invalid items
last (rax's `sort_by` order). Nothing here produces NaN for masked or empty lists.

The metrics (`cascadejax.metrics`), the ranking losses (`cascadejax.losses`), the pairwise kernel
(`cascadejax.ops.lambdarank`) and the training methods (`cascadejax.methods`) all use these, so each
formula is written once. rax counterparts: `pow2m1_gain` = `rax.default_gain_fn`, `log2_discount`
= `rax.default_discount_fn`, `dcg` = `rax.dcg_metric(..., reduce_fn=None)`, `safe_reduce` =
`rax.utils.safe_reduce` (with `jnp.mean` as the default reduction).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

ReduceFn = Callable[..., jax.Array] | None


# ---------------------------------------------------------------------------------------- masks

def valid_mask(where: jax.Array | None, shape: tuple[int, ...]) -> jax.Array:
  """The mask of the items that count: `where` broadcast to `shape`, all True when it is None.

  Args:
    where: optional mask broadcastable to `shape` (left as it is: not cast to bool).
    shape: the `[..., list_size]` shape of the values it masks.

  Returns:
    A `shape` array.
  """
  return jnp.ones(shape, bool) if where is None else jnp.broadcast_to(where, shape)


def valid_lists(where: jax.Array) -> jax.Array:
  """`[...]` bool: the lists of a `[..., list_size]` mask that have at least one valid item."""
  return where.any(axis=-1)


# ---------------------------------------------------------------------------------------- means

def safe_reduce(values: jax.Array, *, where: jax.Array | None = None,
                reduce_fn: ReduceFn = jnp.mean) -> jax.Array:
  """Reduces `values` over the entries where `where` is True; a mean over none of them is 0.

      mean = sum_{where} values / max(|where|, 1)

  Args:
    values: any-shaped values (per item, per pair or per list).
    where: optional bool mask of `values`' shape; None counts every entry.
    reduce_fn: `jnp.mean` (over the entries in `where`), another reduction called as
      `reduce_fn(values, where=where)` (e.g. `jnp.sum`), or None: `values` unreduced with the entries
      outside `where` set to 0.

  Returns:
    A scalar, or `values`' shape when `reduce_fn` is None.
  """
  if where is not None:
    values = jnp.where(where, values, 0.0)
  if reduce_fn is None:
    return values
  if reduce_fn is jnp.mean and where is not None:
    return values.sum() / jnp.maximum(where.sum(), 1)
  return reduce_fn(values) if where is None else reduce_fn(values, where=where)


def item_mean(values: jax.Array, *, where: jax.Array) -> jax.Array:
  """`[...]`: the mean of each list's valid items, 0 for a list without any.

      mean_b = sum_{i: where[b, i]} values[b, i] / max(|where[b]|, 1)

  Args:
    values: `[..., list_size]` per-item values.
    where: `[..., list_size]` bool, the items that count.
  """
  return jnp.where(where, values, 0.0).sum(-1) / jnp.maximum(where.sum(-1), 1)


def list_mean(values: jax.Array, *, where: jax.Array) -> jax.Array:
  """The mean over each list's valid items, then over the lists that have any (0 if none do).

      list_mean = safe_reduce(item_mean(values, where), where=valid_lists(where))

  Args:
    values: `[..., list_size]` per-item values.
    where: `[..., list_size]` bool, the items that count.

  Returns:
    A scalar.
  """
  return safe_reduce(item_mean(values, where=where), where=valid_lists(where))


# ------------------------------------------------------------------------- gains and discounts

def pow2m1_gain(labels: jax.Array, *, where: jax.Array | None = None) -> jax.Array:
  """The exponential gain G(y) = 2^y - 1 (rax's default `gain_fn`), 0 outside `where`.

  Args:
    labels: `[..., list_size]` graded relevance y (computed in their own dtype; integer labels give
      float32 gains).
    where: optional `[..., list_size]` bool; entries outside it get gain 0.

  Returns:
    `[..., list_size]` gains.
  """
  gains = jnp.power(2.0, labels) - 1.0
  return gains if where is None else jnp.where(where, gains, 0.0)


def log2_discount(rank: jax.Array) -> jax.Array:
  """The DCG position discount D(r) = 1 / log2(1 + r) of 1-based ranks (rax's `discount_fn`)."""
  return 1.0 / jnp.log2(rank + 1.0)


def position_discounts(n: int, *, topn: int | None = None, dtype=jnp.float32) -> jax.Array:
  """`[n]`: D(r) = 1 / log2(1 + r) of the ranks r = 1..n, 0 for r > topn.

  Args:
    n: the list size.
    topn: rank cutoff; None for none.
    dtype: dtype of the ranks and discounts (an integer dtype gives float32 discounts).
  """
  rank = jnp.arange(1, n + 1, dtype=dtype)
  discount = log2_discount(rank)
  return discount if topn is None else jnp.where(rank <= topn, discount, 0.0)


# ---------------------------------------------------------------------------------------- DCG

def ranked_dcg(ranked_gains: jax.Array, *, where: jax.Array | None = None,
               topn: int | None = None) -> jax.Array:
  """`[...]`: the DCG of gains already in rank order, sum_{r <= topn, where} G_(r) D(r).

  Args:
    ranked_gains: `[..., list_size]` gains G_(r) at positions r - 1 = 0, 1, ...
    where: optional `[..., list_size]` bool, the positions that hold an item (others add 0).
    topn: rank cutoff; None for the whole list.
  """
  n = ranked_gains.shape[-1]
  dtype = ranked_gains.dtype if jnp.issubdtype(ranked_gains.dtype, jnp.floating) else jnp.float32
  keep = valid_mask(where, ranked_gains.shape)
  if topn is not None:
    keep = keep & (jnp.arange(1, n + 1) <= topn)
  return jnp.sum(jnp.where(keep, ranked_gains * position_discounts(n, dtype=dtype), 0.0), -1)


def dcg(scores: jax.Array, gains: jax.Array, *, where: jax.Array | None = None,
        topn: int | None = None) -> jax.Array:
  """`[...]`: DCG@topn of the order of `scores`, sum_{i valid, r_i <= topn} G_i / log2(1 + r_i).

  r_i is item i's 1-based rank under descending `scores`, ties towards the lower index, invalid
  items last (`rax.dcg_metric(scores, labels, gain_fn=..., reduce_fn=None)` with G = gain(labels)).

  Args:
    scores: `[..., list_size]` scores that order each list.
    gains: `[..., list_size]` gains G (e.g. `pow2m1_gain(labels)`).
    where: optional `[..., list_size]` bool, False for padding (which adds nothing).
    topn: rank cutoff; None for the whole list.

  Returns:
    `[...]` DCG per list (0 for a list without valid items).
  """
  valid = valid_mask(where, gains.shape)
  invalid, _, ranked = lax.sort((~valid, -jnp.broadcast_to(scores, gains.shape), gains),
                                dimension=gains.ndim - 1, num_keys=2)
  return ranked_dcg(ranked, where=~invalid, topn=topn)


def ideal_dcg(gains: jax.Array, *, where: jax.Array | None = None,
              topn: int | None = None) -> jax.Array:
  """maxDCG@topn: the DCG of the list sorted by its own gains, sum_{r <= topn} G_(r) / log2(1 + r).

  Args:
    gains: `[..., list_size]` gains G.
    where: optional `[..., list_size]` bool, False for padding (excluded).
    topn: rank cutoff; None for the whole list.

  Returns:
    `[...]` ideal DCG per list (0 for a list without valid items).
  """
  return dcg(gains, gains, where=where, topn=topn)


def normalize_by_ideal_dcg(gains: jax.Array, *, where: jax.Array | None = None, topn: int | None = None,
                           positive_only: bool = False) -> jax.Array:
  """`[..., list_size]`: gains divided by their list's maxDCG@topn (NDCG gains), G_i / maxDCG.

  A list whose maxDCG is 0 keeps its gains as they are; with `positive_only`, so does a list whose
  maxDCG is negative (possible with negative gains).

  Args:
    gains: `[..., list_size]` gains G.
    where: optional `[..., list_size]` bool, False for padding (excluded from maxDCG).
    topn: cutoff of the ideal DCG; None for the whole list.
    positive_only: divide only by a positive maxDCG (else by any nonzero one, as rax does).
  """
  best = ideal_dcg(gains, where=where, topn=topn)[..., None]
  divide = best > 0 if positive_only else best != 0.0
  return gains / jnp.where(divide, best, 1.0)
