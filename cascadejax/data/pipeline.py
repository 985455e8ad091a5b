"""Input pipeline: a split of `CascadeData` -> shuffled, batched `CascadeBatch`es (grain).

Training batches come from one endless grain `MapDataset` over step numbers (step t -> its rows of
a per-epoch NumPy permutation -> gather), so batch t is a pure function of the seed and t: a
checkpointed iterator position reproduces exactly the batches an uninterrupted run would have seen.
Each epoch is reshuffled and batches run across epoch boundaries, so no request is ever dropped.
Evaluation batches keep the split's order and pad the last batch with empty (all-masked) requests,
which metrics ignore.
"""

from __future__ import annotations

import functools
import sys
from typing import Iterator

import grain
import jax
import numpy as np

from cascadejax.data.schema import CascadeBatch


class EpochOrder:
  """The endless training row order: epoch e is a permutation of `range(n)` drawn from `(seed, e)`.

  Position q of the endless sequence is row `perm_(q // n)[q % n]`. Permutations are drawn with
  NumPy (one `O(n)` draw per epoch, the last few cached), so a batch's rows cost one slice instead
  of one Python call per request.
  """

  def __init__(self, n: int, seed: int):
    if n < 1:
      raise ValueError("the training split has no requests")
    self.n, self.seed = n, seed
    self._perm = functools.lru_cache(maxsize=4)(self._draw)  # thread-safe; reader threads share it

  def _draw(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(self.n)

  def rows(self, start: int, stop: int) -> np.ndarray:
    """Rows at positions `[start, stop)` of the endless sequence (may span several epochs)."""
    first, last = start // self.n, (stop - 1) // self.n
    parts = [self._perm(e)[max(start - e * self.n, 0):min(stop - e * self.n, self.n)]
             for e in range(first, last + 1)]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def train_dataset(split: CascadeBatch, *, global_batch_size: int, seed: int, process_index: int = 0,
                  process_count: int = 1, local_share: bool = False, indices: bool = False) -> grain.MapDataset:
  """Endless shuffled batches of this process's share of each global batch.

  Global batch t holds positions `[t * G, (t + 1) * G)` of `EpochOrder(R, seed)`, so every epoch
  visits each request once, epochs are reshuffled, and batches run across epoch boundaries.

  Args:
    split: NumPy `CascadeBatch` of R requests.
    global_batch_size: G, requests per step over all processes (divisible by `process_count`).
    seed: shuffle seed; epoch e uses a permutation derived from (seed, e).
    process_index, process_count: this process's rows of each global batch are the contiguous
      block `process_index` of `process_count`.
    local_share: `split` holds only this process's share of the requests (`CascadeData.process_share`):
      each process draws its G / process_count rows per step from its own epochs over its share.
    indices: yield each batch's `[G / process_count]` int32 row indices instead of its rows, for a
      split kept on device (`config.data.on_device`); the iterator's position is the same either way.
  """
  if global_batch_size % process_count:
    raise ValueError(f"config.train.batch_size={global_batch_size} is not divisible by the "
                     f"{process_count} processes")
  local = global_batch_size // process_count
  order = EpochOrder(split.batch_size, seed)
  if local_share:
    first = lambda t: t * local
  else:
    first = lambda t: t * global_batch_size + process_index * local
  rows = lambda t: order.rows(first(t), first(t) + local)
  batch = (lambda t: rows(t).astype(np.int32)) if indices else (lambda t: split.take(rows(t)))
  return grain.MapDataset.range(sys.maxsize).map(batch)


def train_iterator(ds: grain.MapDataset, *, prefetch: int = 4) -> grain.DatasetIterator:
  """A checkpointable iterator over `ds`, read ahead by background threads."""
  options = grain.ReadOptions(num_threads=2, prefetch_buffer_size=prefetch)
  return iter(ds.to_iter_dataset(options))


def _pad_rows(batch: CascadeBatch, rows: int) -> CascadeBatch:
  """Appends `rows` empty requests (zero ids and labels, mask False)."""
  return jax.tree.map(lambda a: np.concatenate([a, np.zeros((rows,) + a.shape[1:], a.dtype)]), batch)


def eval_batches(split: CascadeBatch, batch_size: int) -> Iterator[CascadeBatch]:
  """The split in order, in batches of exactly `batch_size` (the last one padded)."""
  total = split.batch_size
  for lo in range(0, total, batch_size):
    batch = split.take(slice(lo, min(lo + batch_size, total)))
    if batch.batch_size < batch_size:
      batch = _pad_rows(batch, batch_size - batch.batch_size)
    yield batch
