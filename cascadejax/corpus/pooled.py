"""Top-k from a corpus split into item pools, one query per pool, merged round-robin: how mixture-of-
experts nominators (`cascadejax.models.moe_nominators`) serve from the whole corpus.

Nominator e scores only its pool's items, s_e(b, i) = <q_be, v_i> for pool(i) = e, and retrieves
their top k. The E lists are merged as the model's serving order does on a candidate list
(`round_robin_scores`): by rank within the own pool, then by score descending, then by list
position. Since no pool ever contributes more than k items to the merged top k, each pool's own
top k is all the merge needs, so the result equals the round-robin order over the whole corpus.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from cascadejax.models.moe_nominators import round_robin_scores

TopK = Callable[..., tuple[jax.Array, jax.Array]]  # (queries [B, d], items, k, where=...) -> (scores, indices)


def pooled_top_k(queries: jax.Array, items: jax.Array, pools: jax.Array, k: int, *, top_k: TopK,
                 where: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Each request's k items, merged round-robin over the pools' own top k.

  Args:
    queries: `[B, E, d]`: one query per pool.
    items: `[M, d]` item vectors.
    pools: `[M]` int32 pool of each item, in [0, E).
    k: items per request.
    top_k: the search of one pool, e.g. `exact_top_k` or a `sharded_top_k` with its mesh bound
      (called with `where=` the pool's items).
    where: optional `[M]` bool, False for items never retrieved.

  Returns:
    (each retrieved item's score by its own pool's query `[B, k]`, corpus indices `[B, k]` int32,
    -1 for empty slots), in the merged order.
  """
  e = queries.shape[-2]
  valid = jnp.ones(pools.shape, bool) if where is None else where
  lists = [top_k(queries[:, p], items, k, where=valid & (pools == p)) for p in range(e)]
  scores = jnp.concatenate([s for s, _ in lists], -1)  # [B, E k]
  index = jnp.concatenate([i for _, i in lists], -1)
  found = index >= 0
  pool_of = jnp.broadcast_to(jnp.repeat(jnp.arange(e, dtype=jnp.int32), k), index.shape)
  order = round_robin_scores(jnp.where(found, scores, 0.0), pool_of, found, e)
  _, top = jax.lax.top_k(jnp.where(found, order, -jnp.inf), k)
  got = jnp.take_along_axis(found, top, -1)
  return (jnp.where(got, jnp.take_along_axis(scores, top, -1), -jnp.inf),
          jnp.where(got, jnp.take_along_axis(index, top, -1), -1))
