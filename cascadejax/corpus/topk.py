"""Blocked top-k of query x item inner products over a whole item corpus, on one device.

For queries q_b (`[B, d]`) and a corpus of items v_i (`[num_items, d]`), the score of item i for
query b is s_bi = <q_b, v_i>. `exact_top_k` returns each query's k best items

    top_k(b) = the first k items of the corpus ordered by (s_bi descending, i ascending)

(equal scores: the lower item index first, as a stable brute-force sort would give). The corpus
is read in chunks of `chunk_size` items inside one `lax.scan`, so the `[B, num_items]` score matrix
is never formed: peak memory is O(B * (chunk_size + k * group_size)) beside the table itself. The
last chunk overlaps the one before it (its start is clamped to `num_items - chunk_size`) and its
already-seen items are masked, so the table is never padded or copied.

Pruning by groups (`group_size` g > 1). Each chunk is cut into groups of g consecutive items and
only the k groups with the highest maxima (ties: the lower group first) are kept, beside the best
k groups so far. This is exact: an item x of the top k has fewer than k items ahead of it, and every
group ranked ahead of x's group holds an item ahead of x (its maximum, which is >= s_x, and, when
equal, has the lower index since groups are contiguous), so x's group is among the top k groups.
The running state is k groups of g scores; one `lax.top_k` over their k * g scores at the end gives
the answer. Selection per chunk costs a top-k over k + chunk_size / g group maxima instead of over
k + chunk_size scores, which is what makes a CPU top-k over millions of items fast.

Fewer than k items (or valid items) in the corpus: the missing slots hold score -inf and index -1.
An item whose score is -inf counts as not retrieved (index -1). Scores must not be NaN.

`approx_top_k` uses `lax.approx_max_k` per chunk (TPU's partial reduction at `recall_target`) and
an exact merge; on CPU and GPU, XLA computes `approx_max_k` exactly, and the result then equals
`exact_top_k` (the tests check it on CPU).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

DEFAULT_CHUNK = 32768  # items per scan step (benchmarks/corpus.py: 1M x 64 items, k = 100, 2-core CPU)


def check_top_k_args(queries, items, k, where, chunk_size, group_size=1) -> None:
  """Raises ValueError for shapes or sizes the top-k functions cannot take (called before tracing)."""
  if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
    raise ValueError(f"k must be a positive int, got {k!r}")
  if not isinstance(chunk_size, int) or chunk_size <= 0:
    raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
  if not isinstance(group_size, int) or group_size <= 0 or chunk_size % group_size:
    raise ValueError(f"group_size must be a positive int dividing chunk_size {chunk_size}, got {group_size!r}")
  if jnp.ndim(items) != 2:
    raise ValueError(f"items must be [num_items, d], got shape {jnp.shape(items)}")
  if jnp.shape(items)[0] == 0:
    raise ValueError("items is empty: the corpus needs at least one item")
  if jnp.ndim(queries) < 1 or jnp.shape(queries)[-1] != jnp.shape(items)[1]:
    raise ValueError(f"queries must be [..., d] with d = {jnp.shape(items)[1]} (the items' width), "
                     f"got shape {jnp.shape(queries)}")
  if where is not None and jnp.shape(where) != (jnp.shape(items)[0],):
    raise ValueError(f"where must be [num_items] = [{jnp.shape(items)[0]}], got shape {jnp.shape(where)}")


def auto_group_size(chunk_size: int, k: int, num_items: int | None = None) -> int:
  """The pruning group size used when none is given: the largest power of two g <= sqrt(c / k), with
  c = min(chunk_size, num_items), that divides `chunk_size` (it balances the k + c / g group maxima a
  chunk selects from against the k * g scores kept); 1 (no pruning) when k is close to c."""
  c = chunk_size if num_items is None else max(min(chunk_size, num_items), 1)
  g = 1
  while g * 2 <= math.sqrt(c / k) and chunk_size % (g * 2) == 0:
    g *= 2
  return g


def _score_dtype(queries, items):
  return jnp.promote_types(jnp.promote_types(queries.dtype, items.dtype), jnp.float32)


def _chunks(items, where, chunk_size, group_size):
  """(items, where, chunk, number of chunks): a corpus smaller than one chunk becomes one chunk
  padded (masked) to a multiple of the group size; a larger one is scanned without padding."""
  n = items.shape[0]
  valid = jnp.ones((n,), bool) if where is None else where.astype(bool)
  if n >= chunk_size:
    return items, valid, chunk_size, -(-n // chunk_size)
  padded = -(-n // group_size) * group_size
  items = jnp.pad(items, ((0, padded - n), (0, 0)))
  valid = jnp.pad(valid, (0, padded - n))
  return items, valid, padded, 1


def _finish(scores, index):
  """Slots scored -inf hold index -1."""
  return scores, jnp.where(scores == -jnp.inf, -1, index).astype(jnp.int32)


def _grouped_scan(queries, items, valid, k, chunk, num_chunks, g):
  """The exact blocked top-k with group pruning (the module docstring): `queries` is `[B, d]`."""
  n, d = items.shape
  b = queries.shape[0]
  ng = chunk // g
  dtype = _score_dtype(queries, items)
  # position r * ng + j of a chunk's scores holds item j * g + r, so the group maxima reduce over a
  # major axis (contiguous vectors) rather than over runs of g scores
  order = (jnp.arange(ng)[None, :] * g + jnp.arange(g)[:, None])  # [g, ng] item offset in the chunk

  def step(state, c):
    gmax, gbase, gvals = state
    start = jnp.minimum(c * chunk, n - chunk)
    block = lax.dynamic_slice_in_dim(items, start, chunk).reshape(ng, g, d).transpose(1, 0, 2).reshape(chunk, d)
    s = jnp.einsum("bd,nd->bn", queries, block, preferred_element_type=dtype).astype(dtype).reshape(b, g, ng)
    fresh = (start + order >= c * chunk) & lax.dynamic_slice_in_dim(valid, start, chunk)[order]
    s = jnp.where(fresh[None], s, -jnp.inf)                                      # [B, g, ng]
    # the k best groups of (kept groups, then this chunk's): positions follow item order, so lax.top_k's
    # lower-position-first tie rule is the lower-index-first rule
    _, pick = lax.top_k(jnp.concatenate([gmax, s.max(1)], -1), k)
    pick = jnp.sort(pick, -1)
    kept = pick < k
    old = jnp.minimum(pick, k - 1)
    new = jnp.clip(pick - k, 0, ng - 1)
    new_vals = jnp.take_along_axis(s, new[:, None, :], 2).transpose(0, 2, 1)   # [B, k, g]
    gvals = jnp.where(kept[..., None], jnp.take_along_axis(gvals, old[..., None], 1), new_vals)
    gbase = jnp.where(kept, jnp.take_along_axis(gbase, old, 1), start + new * g)
    gmax = gvals.max(-1)
    return (gmax, gbase, gvals), None

  init = (jnp.full((b, k), -jnp.inf, dtype), jnp.full((b, k), -1, jnp.int32), jnp.full((b, k, g), -jnp.inf, dtype))
  (_, gbase, gvals), _ = lax.scan(step, init, jnp.arange(num_chunks))
  scores, pos = lax.top_k(gvals.reshape(b, k * g), k)
  index = jnp.take_along_axis(gbase, pos // g, 1) + pos % g
  return _finish(scores, index)


def _approx_scan(queries, items, valid, k, chunk, num_chunks, recall_target):
  """Blocked top-k with `lax.approx_max_k` per chunk and an exact merge with the best so far."""
  n = items.shape[0]
  b = queries.shape[0]
  dtype = _score_dtype(queries, items)
  kc = min(k, chunk)

  def step(state, c):
    best, best_index = state
    start = jnp.minimum(c * chunk, n - chunk)
    block = lax.dynamic_slice_in_dim(items, start, chunk)
    s = jnp.einsum("bd,nd->bn", queries, block, preferred_element_type=dtype).astype(dtype)
    offset = jnp.arange(chunk)
    s = jnp.where((start + offset >= c * chunk) & lax.dynamic_slice_in_dim(valid, start, chunk), s, -jnp.inf)
    top, pos = lax.approx_max_k(s, kc, recall_target=recall_target)
    pos, top = lax.sort_key_val(pos, top, dimension=-1)  # item order, for the lower-index tie rule
    merged, where_ = lax.top_k(jnp.concatenate([best, top], -1), k)
    index = jnp.take_along_axis(jnp.concatenate([best_index, start + pos], -1), where_, 1)
    return (merged, index), None

  init = (jnp.full((b, k), -jnp.inf, dtype), jnp.full((b, k), -1, jnp.int32))
  (scores, index), _ = lax.scan(step, init, jnp.arange(num_chunks))
  return _finish(scores, index)


@functools.partial(jax.jit, static_argnames=("k", "chunk_size", "group_size"))
def _exact(queries, items, where, *, k, chunk_size, group_size):
  lead = queries.shape[:-1]
  items, valid, chunk, num_chunks = _chunks(items, where, chunk_size, group_size)
  scores, index = _grouped_scan(queries.reshape(-1, queries.shape[-1]), items, valid, k, chunk, num_chunks,
                                group_size)
  return scores.reshape(*lead, k), index.reshape(*lead, k)


@functools.partial(jax.jit, static_argnames=("k", "chunk_size", "recall_target"))
def _approx(queries, items, where, *, k, chunk_size, recall_target):
  lead = queries.shape[:-1]
  items, valid, chunk, num_chunks = _chunks(items, where, chunk_size, 1)
  scores, index = _approx_scan(queries.reshape(-1, queries.shape[-1]), items, valid, k, chunk, num_chunks,
                               recall_target)
  return scores.reshape(*lead, k), index.reshape(*lead, k)


def exact_top_k(queries: jax.Array, items: jax.Array, k: int, *, where: jax.Array | None = None,
                chunk_size: int = DEFAULT_CHUNK, group_size: int | None = None) -> tuple[jax.Array, jax.Array]:
  """Each query's k highest-scoring corpus items, exactly, without a `[B, num_items]` matrix.

      s_bi = <q_b, v_i>,   top_k(b) = first k of the valid items ordered by (s_bi desc, i asc)

  Jittable (k, chunk_size and group_size are static); callable inside `jax.jit` and `shard_map`.

  Args:
    queries: `[..., d]` query embeddings q.
    items: `[num_items, d]` corpus item embeddings v (any float dtype; scores are computed in at
      least float32).
    k: how many items per query (any positive int; beyond the number of valid items the slots are
      score -inf, index -1).
    where: optional `[num_items]` bool, False for items that must not be retrieved (padding rows,
      excluded items). Per-query exclusions are not taken here (they would need `[B, num_items]`):
      retrieve k + the number excluded and drop them.
    chunk_size: items scored per scan step; memory is O(B * (chunk_size + k * group_size)).
    group_size: items per pruning group (a divisor of chunk_size); None picks `auto_group_size`;
      1 turns pruning off (a top-k over every chunk's scores).

  Returns:
    (scores `[..., k]` descending, indices `[..., k]` int32 rows of `items`, -1 for empty slots).

  Raises:
    ValueError: k <= 0, items not `[num_items, d]` or empty, queries' last axis not d, `where` not
      `[num_items]`, a chunk_size or group_size that is not a positive int (group_size dividing it).
  """
  check_top_k_args(queries, items, k, where, chunk_size, 1 if group_size is None else group_size)
  if group_size is None:
    group_size = auto_group_size(chunk_size, k, jnp.shape(items)[0])
  return _exact(queries, items, where, k=k, chunk_size=chunk_size, group_size=group_size)


def approx_top_k(queries: jax.Array, items: jax.Array, k: int, *, where: jax.Array | None = None,
                 recall_target: float = 0.95, chunk_size: int = DEFAULT_CHUNK) -> tuple[jax.Array, jax.Array]:
  """Approximate top-k (`lax.approx_max_k` per chunk at `recall_target`), the contract of `exact_top_k`.

  Each chunk's `[B, chunk_size]` scores go through `lax.approx_max_k(..., recall_target)`, which on
  TPU finds each true top-k item of the chunk with probability about `recall_target`; the chunk's
  candidates are then merged exactly with the best so far, so the expected recall of the whole corpus
  top-k is about `recall_target` too. On CPU and GPU XLA computes approx_max_k exactly and the result
  equals `exact_top_k` (ties included). Ties are otherwise unspecified.

  Args:
    queries: `[..., d]` query embeddings.
    items: `[num_items, d]` corpus item embeddings.
    k: how many items per query (slots beyond the valid items: score -inf, index -1).
    where: optional `[num_items]` bool, False for items that must not be retrieved.
    recall_target: in (0, 1], the recall `lax.approx_max_k` aims at.
    chunk_size: items scored per scan step (memory O(B * (chunk_size + k))).

  Returns:
    (scores `[..., k]` descending, indices `[..., k]` int32, -1 for empty slots).

  Raises:
    ValueError: as `exact_top_k`, and a recall_target outside (0, 1].
  """
  check_top_k_args(queries, items, k, where, chunk_size)
  if not 0.0 < recall_target <= 1.0:
    raise ValueError(f"recall_target must be in (0, 1], got {recall_target!r}")
  return _approx(queries, items, where, k=k, chunk_size=chunk_size, recall_target=float(recall_target))
