"""The item corpus: every item the retrieval stage can retrieve, with its item features.

Training and the logged-candidate metrics see only each request's logged candidates; a production
retrieval stage retrieves from every item. `Corpus` holds those items as columns of embedding rows,
one entry per distinct value of the *key* feature (the first item feature, e.g. `item_id`), in the
same row space the candidates use, so a corpus item and a logged candidate of the same item embed
identically:

    items[f][j]    row of item feature f of corpus item j           (int32, [M])
    counts[j]      how often item j was a logged candidate in the training split   (int64, [M])

Where the corpus comes from: the simulator knows every item it has (`synthetic.corpus`, including
items no request ever drew); every other reader's corpus is the union of the logged candidates of all
its splits (`from_candidates`): MovieLens's rated movies, RecFlow's videos in its day files, your
logs' items. An item feature must be an attribute of the item (the same row wherever the item is a
candidate); features that vary with the request (e.g. the simulator's user x item crosses) cannot be
scored without the request and make `from_candidates` raise, naming the feature and an item.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cascadejax.data.schema import CascadeData, FeatureSpec


@dataclasses.dataclass(frozen=True)
class Corpus:
  """Every retrievable item as columns of embedding rows (see the module docstring).

  Attributes:
    key: the item feature identifying an item; `items[key]` holds distinct rows > 0.
    items: item feature -> `[M]` int32 rows, every item feature of the data.
    counts: `[M]` int64, each item's logged-candidate count in the training split (the popularity
      that sampled negatives correct for with log Q).
  """

  key: str
  items: dict[str, np.ndarray]
  counts: np.ndarray

  def __post_init__(self):
    keys = np.asarray(self.items[self.key])
    if len(np.unique(keys)) != len(keys) or (keys <= 0).any():
      raise ValueError(f"corpus: the key feature {self.key!r} must hold distinct rows > 0 (0 is padding)")
    if any(np.shape(v) != keys.shape for v in self.items.values()) or self.counts.shape != keys.shape:
      raise ValueError(f"corpus: every item column and counts must be [M] = {keys.shape}")

  def __len__(self) -> int:
    return len(self.items[self.key])

  def index(self) -> np.ndarray:
    """`[max key row + 1]` int32: the corpus position of each key row, -1 for rows not in the corpus
    (padding row 0 included), so `index()[rows]` maps candidates to corpus items."""
    keys = np.asarray(self.items[self.key])
    out = np.full(int(keys.max(initial=0)) + 1, -1, np.int32)
    out[keys] = np.arange(len(keys), dtype=np.int32)
    return out

  def sampling_probability(self, smoothing: float = 1.0) -> np.ndarray:
    """`[M]` float64 Q(j) = (counts_j + smoothing) / sum(counts + smoothing): the probability that a
    popularity-proportional sampler draws item j (smoothing keeps never-logged items drawable)."""
    c = self.counts.astype(np.float64) + smoothing
    return c / c.sum()


def item_features(features: tuple[FeatureSpec, ...]) -> tuple[str, ...]:
  """The item-side features, key (first) first."""
  return tuple(f.name for f in features if f.side == "items")


def _train_counts(data: CascadeData, key: str, keys: np.ndarray) -> np.ndarray:
  train = data.splits.get("train")
  counts = np.zeros(len(keys), np.int64)
  if train is None:
    return counts
  rows = np.asarray(train.items[key])[np.asarray(train.mask)]
  present, n = np.unique(rows, return_counts=True)
  where = np.searchsorted(keys, present)
  hit = (where < len(keys)) & (keys[np.minimum(where, len(keys) - 1)] == present)
  counts[where[hit]] = n[hit]
  return counts


def from_candidates(data: CascadeData) -> Corpus:
  """The union of the logged candidates of every split, items ordered by key row.

  Raises:
    ValueError: if the data has no item feature, or an item feature is not constant per item
      (naming the feature, the item's key row and two of its rows).
  """
  names = item_features(data.features)
  if not names:
    raise ValueError("corpus: the data has no item feature to identify items by")
  key = names[0]
  columns = {f: [] for f in names}
  for split in data.splits.values():
    mask = np.asarray(split.mask)
    for f in names:
      columns[f].append(np.asarray(split.items[f])[mask])
  flat = {f: np.concatenate(v) if v else np.zeros(0, np.int32) for f, v in columns.items()}
  keys, first, inverse = np.unique(flat[key], return_index=True, return_inverse=True)
  if len(keys) and keys[0] <= 0:
    raise ValueError(f"corpus: a valid candidate has the padding row 0 in its key feature {key!r}")
  items = {key: keys.astype(np.int32)}
  for f in names[1:]:
    value = flat[f][first]
    bad = np.flatnonzero(flat[f] != value[inverse])
    if len(bad):
      i = bad[0]
      raise ValueError(f"corpus: item feature {f!r} is not an attribute of the item: item {key} row "
                       f"{flat[key][i]} has {f} rows {value[inverse[i]]} and {flat[f][i]}; a feature that "
                       "varies with the request (e.g. config.data.cross_features) cannot be scored over the corpus")
    items[f] = value.astype(np.int32)
  return Corpus(key=key, items=items, counts=_train_counts(data, key, keys))


def with_counts(data: CascadeData, key: str, items: dict[str, np.ndarray]) -> Corpus:
  """A corpus of the given item columns (e.g. every item a simulator has), counts from `data`'s
  training split, items ordered by key row."""
  order = np.argsort(np.asarray(items[key]), kind="stable")
  items = {f: np.asarray(v, np.int32)[order] for f, v in items.items()}
  return Corpus(key=key, items=items, counts=_train_counts(data, key, items[key]))
