"""Pieces shared by the cascade training methods: the label order's tie structure (targets read
from it as the published code reads them), the parsing of per-stage options, and the weighted sum
of per-stage and joint terms (learned uncertainty weights or fixed ones) LCRON and DFTopK share.

The request-level means the methods take (over each request's valid candidates, then over the
requests that have any: `list_mean`, `safe_reduce`) are in `cascadejax.ops.ranking_utils`. Option
errors name the config key `config.method.<method name>.<option>`.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp


def label_ties(labels: jax.Array, *, where: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Where each item's block of equal labels sits in its list's descending label order.

  Args:
    labels: `[..., n]` graded labels.
    where: `[..., n]` bool, the valid items.

  Returns:
    `(start, size)`, each `[..., n]` int32: the 0-based rank at which the item's block of tied
    labels starts, and the block's size (1 for an untied label; 0 for padding).
  """
  valid = where[..., None, :]
  mine, other = labels[..., :, None], labels[..., None, :]
  start = (valid & (other > mine)).sum(-1, dtype=jnp.int32)
  size = jnp.where(where, (valid & (other == mine)).sum(-1, dtype=jnp.int32), 0)
  return start, size


def label_permutation(labels: jax.Array, *, where: jax.Array) -> jax.Array:
  """`[..., n, n]` the permutation matrix of the descending label order, ties spread uniformly.

  P[r, i] = 1 / size_i for the ranks r of item i's block of tied labels (`label_ties`), else 0:
  exactly what NeuralSort of the labels gives as its temperature goes to 0, which is how the
  LCRON authors' code builds its targets (NeuralSort of the integer labels at tau = 1e-4). Rows are
  ranks, columns items; padding rows and columns are 0.
  """
  start, size = label_ties(labels, where=where)
  r = jnp.arange(labels.shape[-1])[:, None]
  inside = (r >= start[..., None, :]) & (r < (start + size)[..., None, :])
  return jnp.where(inside, 1.0 / jnp.maximum(size, 1)[..., None, :], 0.0).astype(jnp.float32)


def _sorted_label_ties(labels: jax.Array, *, where: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`label_ties` by one sort and two binary searches per list: O(n log n) time, O(n) memory.

  With the m valid labels sorted ascending (padding placed after them as +inf), the number of
  valid labels <= l (< l) is the right (left) insertion point of l, capped at m: start = m - #(<= l)
  and size = #(<= l) - #(< l), 0 on padding.
  """
  shape = labels.shape
  flat, valid = labels.reshape(-1, shape[-1]), where.reshape(-1, shape[-1])
  m = valid.sum(-1, keepdims=True, dtype=jnp.int32)
  ordered = jnp.sort(jnp.where(valid, flat, jnp.inf), axis=-1)
  search = jax.vmap(lambda row, x, side: jnp.searchsorted(row, x, side=side).astype(jnp.int32),
                    in_axes=(0, 0, None))
  at_most = jnp.minimum(search(ordered, flat, "right"), m)
  below = jnp.minimum(search(ordered, flat, "left"), m)
  size = jnp.where(valid, at_most - below, 0)
  return (m - at_most).reshape(shape), size.reshape(shape)


def label_split(labels: jax.Array, k: int, *, where: jax.Array, count_ties: bool) -> tuple[jax.Array, jax.Array]:
  """How much of each item lies in the first k rows of `label_permutation`, and how much below.

  With `count_ties=False`, the column sums of the first k rows and of the rest: (1, 0) for an
  item among the top k labels, (0, 1) for one below, fractions for a tied block that straddles
  rank k. With `count_ties=True`, the same sums of the thresholded matrix 1[P > 0] (as the LCRON
  authors' three-stage code thresholds it): the number of the block's ranks on each side, so a
  negative tied with m - 1 others weighs m. One sort per list (`_sorted_label_ties`): O(n log n)
  time and O(n) memory, the same values as the pairwise comparisons of `label_ties`.

  Args:
    labels: `[..., n]` graded labels.
    k: the ground-truth size.
    where: `[..., n]` bool, the valid items.
    count_ties: count tied ranks (thresholded) instead of sharing them (soft).

  Returns:
    `(y_top, y_rest)`, each `[..., n]` float32, 0 on padding.
  """
  return split_ties(*_sorted_label_ties(labels, where=where), k, count_ties=count_ties)


def split_ties(start: jax.Array, size: jax.Array, k: int | jax.Array, *,
               count_ties: bool = False) -> tuple[jax.Array, jax.Array]:
  """`label_split` from a tie structure: `start` (ranks above each item's tie block) and `size` (the
  block's size), as `label_ties` gives them; the block's ranks below `k` and at or above it."""
  top = jnp.clip(k - start, 0, size)
  top, rest = top.astype(jnp.float32), (size - top).astype(jnp.float32)
  if count_ties:
    return top, rest
  share = jnp.maximum(size, 1).astype(jnp.float32)
  return top / share, rest / share


def per_stage_option(method: Any, key: str, cast: Callable[[Any], Any], *, length: int | None = None,
                     scalar: bool = True) -> tuple[Any, ...]:
  """`method.options[key]` as one value per stage (or per level): a scalar is repeated, a sequence
  must have the right length.

  Args:
    method: a `CascadeMethod` (its `name`, `options`, `num_stages` and `stage_names` are read).
    key: the option name.
    cast: converts each value (e.g. `float`, `int`); with `int`, non-integral values are refused.
    length: how many values (default S, one per stage).
    scalar: whether one scalar may stand for all of them.

  Returns:
    A tuple of `length` cast values.

  Raises:
    ValueError: naming `config.method.<name>.<key>`, for a wrong length, a non-numeric value or
      (with `cast=int`) a non-integral one.
  """
  name, value = f"config.method.{method.name}.{key}", method.options[key]
  n = method.num_stages if length is None else length
  if isinstance(value, (tuple, list)):
    values = tuple(value)
  else:
    values = (value,) * n if scalar else ()
  if len(values) != n:
    what = (f"(one per stage {method.stage_names})" if length is None
            else f"values for a {method.num_stages}-stage cascade {method.stage_names}")
    raise ValueError(f"{name}: expected {'one value or ' if scalar else ''}{n} {what}, got {value!r}")
  try:
    out = tuple(cast(v) for v in values)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{name}: {value!r} is not numeric") from e
  if cast is int and any(a != b for a, b in zip(out, values)):
    raise ValueError(f"{name}: expected integers, got {value!r}")
  return out


def stage_ks_option(method: Any, key: str) -> tuple[int, ...]:
  """A per-stage k option: "gt_num" (every stage), "stage" (each stage's own k_s) or S ints >= 1.

  Args:
    method: a `CascadeMethod` (its `name`, `options`, `ks`, `gt_num` and stages are read).
    key: the option name.

  Returns:
    A tuple of S ints.

  Raises:
    ValueError: naming `config.method.<name>.<key>`.
  """
  value = method.options[key]
  if value == "gt_num":
    return (method.gt_num,) * method.num_stages
  if value == "stage":
    return tuple(method.ks)
  if isinstance(value, str):
    raise ValueError(f"config.method.{method.name}.{key} must be 'gt_num', 'stage' or "
                     f"{method.num_stages} ints, got {value!r}")
  ks = per_stage_option(method, key, int)
  if any(k < 1 for k in ks):
    raise ValueError(f"config.method.{method.name}.{key}: every k must be >= 1, got {value!r}")
  return ks


def weighting_options(method: Any) -> tuple[tuple[int, ...], tuple[int, ...], tuple[float, ...]]:
  """`(relax_k, joint_k, relax_weights)` of a method with per-stage and joint terms (LCRON, DFTopK),
  after checking its `weighting` option (the combination `weighted_total` computes)."""
  relax_k, joint_k = stage_ks_option(method, "relax_k"), stage_ks_option(method, "joint_k")
  weighting = method.options["weighting"]
  if weighting not in ("uncertainty", "fixed"):
    raise ValueError(f"config.method.{method.name}.weighting must be 'uncertainty' or 'fixed', got {weighting!r}")
  return relax_k, joint_k, per_stage_option(method, "relax_weights", float)


def weighted_total(relax: jax.Array, joint: jax.Array, *, weighting: str, params: Any,
                   relax_weights: Sequence[float], stage_names: Sequence[str]) -> tuple[jax.Array, dict]:
  """LCRON's (and DFTopK's) combination of the S per-stage terms L_s with the joint term:

      "uncertainty":  L = sum_s 0.5 / w_s^2 L_s + L_joint + sum_s log |w_s|     (w_s = params["w"], learned)
      "fixed":        L = sum_s lambda_s L_s + L_joint                         (lambda = relax_weights)

  Returns the total and the logged values: each L_s (`loss/relax_<stage>`) and, learned, each w_s.
  """
  aux = {f"loss/relax_{n}": relax[s] for s, n in enumerate(stage_names)}
  if weighting == "uncertainty":
    w = params["w"]
    aux.update({f"weight/{n}": w[s] for s, n in enumerate(stage_names)})
    return jnp.sum(0.5 / jnp.square(w) * relax) + joint + jnp.sum(jnp.log(jnp.abs(w))), aux
  return jnp.sum(jnp.asarray(relax_weights) * relax) + joint, aux

