"""Hard selection: each list's top-k, the cascade's stage-by-stage survivors and the ground truth.

The pure, dependency-free operators every layer above shares: the `Cascade` model serves with
`select`, training methods mark their positives with `ground_truth`, metrics measure both.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def hard_topk(scores: jax.Array, k: int, *, where: jax.Array | None = None) -> jax.Array:
  """`[..., n]` bool: the top-`k` entries of each list among those where `where` is True.

  Ties are broken towards the lower index. Entries outside `where` are never selected, so a list
  with fewer than `k` valid entries selects all of them.
  """
  if where is None:
    where = jnp.ones(scores.shape, bool)
  if not jnp.issubdtype(scores.dtype, jnp.floating):
    scores = scores.astype(jnp.float32)
  k = min(k, scores.shape[-1])
  # Valid entries rank above every invalid one, even at -inf: clamp them to the finite minimum.
  masked = jnp.where(where, jnp.maximum(scores, jnp.finfo(scores.dtype).min), -jnp.inf)
  _, idx = jax.lax.top_k(masked, k)
  chosen = jnp.zeros(scores.shape, bool)
  chosen = jnp.put_along_axis(chosen, idx, True, axis=-1, inplace=False)
  return chosen & where


def select(stage_scores: jax.Array | Sequence[jax.Array], ks: Sequence[int], *,
           where: jax.Array) -> jax.Array:
  """Hard cascade selection.

  Args:
    stage_scores: `[S, ..., n]` scores of each stage (or a list of S `[..., n]` arrays).
    ks: the S selection sizes, non-increasing.
    where: `[..., n]` bool, the valid candidates.

  Returns:
    `[S, ..., n]` bool: `out[s]` marks the candidates that survive stages 1..s+1, i.e. stage s+1's
    top k_{s+1} among the survivors of stage s.
  """
  alive, out = where, []
  for scores, k in zip(stage_scores, ks, strict=True):
    alive = hard_topk(scores, k, where=alive)
    out.append(alive)
  return jnp.stack(out)


def ground_truth(labels: jax.Array, gt_num: int, *, where: jax.Array) -> jax.Array:
  """`[..., n]` bool: each list's top `gt_num` valid candidates by label."""
  return hard_topk(labels, gt_num, where=where)
