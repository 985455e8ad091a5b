"""`CascadeBatch`, the one data structure every part of cascadejax consumes.

A batch holds `B` requests (lists), each with `N` candidate slots (padding + `mask`). For every
candidate it records the deepest stage it reached in the logged production cascade, a graded label
for the final selection, and optionally user feedback. Features are integer ids that the embedding
component turns into vectors; the `FeatureSpec`s of a dataset say which embedding table each one uses.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.struct
import jax
import numpy as np

Array = Any  # jax.Array or np.ndarray: readers build NumPy batches, the trainer puts them on device.


@flax.struct.dataclass
class CascadeBatch:
  """A batch of cascade logs: `B` requests with `N` candidate slots each.

  Attributes:
    user: feature name -> `[B]` int32 ids, or `[B, L]` for sequences (0 = padding in sequences).
    items: feature name -> `[B, N]` int32 candidate feature ids.
    stage: `[B, N]` int32, deepest stage reached in the logged cascade: 0 = dropped by stage 1, ...,
      S = survived every stage (exposed).
    label: `[B, N]` float32 graded ground truth for the final selection (higher is better).
    mask: `[B, N]` bool, False for padding slots.
    feedback: optional feedback name -> `[B, N]` float32 (click, like, ...) on exposed candidates.
  """

  user: dict[str, Array]
  items: dict[str, Array]
  stage: Array
  label: Array
  mask: Array
  feedback: dict[str, Array] | None = None

  @property
  def batch_size(self) -> int:
    """B, the number of requests."""
    return self.mask.shape[0]

  @property
  def list_size(self) -> int:
    """N, the number of candidate slots per request."""
    return self.mask.shape[-1]

  def take(self, index) -> "CascadeBatch":
    """Rows `index` (an int array or slice) of every field, as a new batch."""
    return jax.tree.map(lambda a: a[index], self)


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
  """One id feature of a dataset.

  Attributes:
    name: key in `CascadeBatch.user` or `CascadeBatch.items`.
    side: "user" (per request) or "items" (per candidate).
    table: name of the embedding table it is looked up in; features sharing a table share rows
      (e.g. the candidate `item_id` and the user's `history` of item ids).
    vocab_size: number of rows of that table; valid ids are `0 .. vocab_size - 1`.
    sequence: True for `[B, L]` user sequences whose id 0 is padding.
  """

  name: str
  side: str
  table: str
  vocab_size: int
  sequence: bool = False

  def __post_init__(self):
    if self.side not in ("user", "items"):
      raise ValueError(f"FeatureSpec {self.name!r}: side must be 'user' or 'items', got {self.side!r}")
    if self.vocab_size < 1:
      raise ValueError(f"FeatureSpec {self.name!r}: vocab_size must be >= 1, got {self.vocab_size}")


@dataclasses.dataclass(frozen=True)
class CascadeData:
  """A dataset in memory: its feature specs and one NumPy `CascadeBatch` per split.

  Attributes:
    features: the id features every split carries.
    num_stages: S, the number of stages of the logged cascade (`stage` ranges over 0..S).
    splits: split name -> `CascadeBatch` whose leading dimension is the requests.
    request_ids: split name -> `[R]` request ids (disjoint across splits).
    report: what the reader did, as JSON-able counts: rows read and, under "dropped", the rows
      (users, candidates, ...) each documented filter removed, per source file where it applies.
      The cache keeps it with the entry, so a cache hit reports the same counts as the build.
    process_share: (index, count) when the splits hold only this process's share of the requests
      (the logs reader on a multi-host run); None when every process holds every request.
  """

  features: tuple[FeatureSpec, ...]
  num_stages: int
  splits: dict[str, CascadeBatch]
  request_ids: dict[str, np.ndarray]
  report: dict[str, Any] = dataclasses.field(default_factory=dict)
  process_share: tuple[int, int] | None = None


def table_sizes(features: tuple[FeatureSpec, ...]) -> dict[str, int]:
  """Embedding table name -> row count, checking that features sharing a table agree on its size."""
  sizes: dict[str, int] = {}
  for f in features:
    if sizes.setdefault(f.table, f.vocab_size) != f.vocab_size:
      raise ValueError(
          f"features disagree on the size of table {f.table!r}: {f.name!r} says {f.vocab_size}, "
          f"another feature says {sizes[f.table]}")
  return sizes


def validate(batch: CascadeBatch, features: tuple[FeatureSpec, ...], num_stages: int,
             source: str = "batch") -> None:
  """Checks a host (NumPy) batch and raises `ValueError` naming the source, field and first bad row.

  Checked: every declared feature is present with the right shape and an integer dtype, ids lie in
  `[0, vocab_size)`, `stage` lies in `[0, num_stages]`, labels and feedback are finite, `mask` is
  boolean, and at least one request has a valid candidate.

  Args:
    batch: a `CascadeBatch` of NumPy arrays with a leading request dimension.
    features: the dataset's feature specs.
    num_stages: S, the number of stages of the cascade the data is used with.
    source: a name for error messages (a file or split name).
  """
  mask = np.asarray(batch.mask)
  if mask.ndim != 2:
    raise ValueError(f"{source}: field 'mask' must be [B, N], got shape {mask.shape}")
  if mask.dtype != np.bool_:
    raise ValueError(f"{source}: field 'mask' must be bool, got {mask.dtype}")
  b, n = mask.shape

  def bad_row(ok: np.ndarray) -> int:
    return int(np.argwhere(~ok.reshape(ok.shape[0], -1).all(axis=1))[0, 0])

  for f in features:
    group = batch.user if f.side == "user" else batch.items
    if f.name not in group:
      raise ValueError(f"{source}: missing {f.side} feature {f.name!r} (have {sorted(group)})")
    ids = np.asarray(group[f.name])
    want = (b,) if f.side == "user" and not f.sequence else (b, n) if f.side == "items" else None
    if (want is not None and ids.shape != want) or (want is None and (ids.ndim != 2 or ids.shape[0] != b)):
      raise ValueError(f"{source}: {f.side} feature {f.name!r} has shape {ids.shape}, expected "
                       f"{want if want else f'[{b}, L]'}")
    if not np.issubdtype(ids.dtype, np.integer):
      raise ValueError(f"{source}: {f.side} feature {f.name!r} must hold integer ids, got {ids.dtype}")
    ok = (ids >= 0) & (ids < f.vocab_size)
    if not ok.all():
      row = bad_row(ok)
      raise ValueError(f"{source}: {f.side} feature {f.name!r} row {row} has ids outside "
                       f"[0, {f.vocab_size}): {np.asarray(ids[row]).ravel()[~ok[row].ravel()][:5]}")
  stage = np.asarray(batch.stage)
  if stage.shape != (b, n):
    raise ValueError(f"{source}: field 'stage' has shape {stage.shape}, expected {(b, n)}")
  ok = (stage >= 0) & (stage <= num_stages)
  if not ok.all():
    row = bad_row(ok)
    raise ValueError(f"{source}: field 'stage' row {row} has values outside [0, {num_stages}] "
                     f"for a {num_stages}-stage cascade: {stage[row][~ok[row]][:5]}")
  floats: Mapping[str, Array] = {"label": batch.label, **{f"feedback.{k}": v for k, v in (batch.feedback or {}).items()}}
  for name, arr in floats.items():
    arr = np.asarray(arr)
    if arr.shape != (b, n):
      raise ValueError(f"{source}: field {name!r} has shape {arr.shape}, expected {(b, n)}")
    ok = np.isfinite(arr)
    if not ok.all():
      row = bad_row(ok)
      raise ValueError(f"{source}: field {name!r} row {row} holds non-finite values: {arr[row][~ok[row]][:5]}")
  if b and not mask.any():
    raise ValueError(f"{source}: every candidate is masked out; there is nothing to train or evaluate on")
