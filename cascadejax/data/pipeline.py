"""Input pipeline: a split of `CascadeData` -> shuffled, batched `CascadeBatch`es (grain).

Training batches come from one endless grain `MapDataset` (shuffle -> repeat -> batch -> gather), so
batch t is a pure function of the seed and t: a checkpointed iterator position reproduces exactly
the batches an uninterrupted run would have seen. Each epoch is reshuffled and batches run across
epoch boundaries, so no request is ever dropped. Evaluation batches keep the split's order and pad
the last batch with empty (all-masked) requests, which metrics ignore.
"""

from __future__ import annotations

from typing import Iterator

import grain
import jax
import numpy as np

from cascadejax.data.schema import CascadeBatch


def train_dataset(split: CascadeBatch, *, global_batch_size: int, seed: int, process_index: int = 0,
                  process_count: int = 1) -> grain.MapDataset:
  """Endless shuffled batches of this process's share of each global batch.

  Args:
    split: NumPy `CascadeBatch` of R requests.
    global_batch_size: requests per step over all processes (divisible by `process_count`).
    seed: shuffle seed; epoch e uses a permutation derived from (seed, e).
    process_index, process_count: this process's rows of each global batch are the contiguous
      block `process_index` of `process_count`.
  """
  if global_batch_size % process_count:
    raise ValueError(f"config.train.batch_size={global_batch_size} is not divisible by the "
                     f"{process_count} processes")
  local = global_batch_size // process_count
  rows = slice(process_index * local, (process_index + 1) * local)
  return (grain.MapDataset.range(split.batch_size)
          .shuffle(seed=seed)
          .repeat(None)
          .batch(global_batch_size)
          .map(lambda idx: split.take(np.asarray(idx)[rows])))


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
