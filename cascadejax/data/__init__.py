"""Datasets: readers that produce `CascadeData`, and the input pipeline that batches it."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from ml_collections import ConfigDict

from cascadejax.data import movielens_cascade, recflow, synthetic
from cascadejax.data.schema import CascadeBatch, CascadeData, FeatureSpec, validate

READERS = {"synthetic": synthetic.load, "movielens": movielens_cascade.load, "recflow": recflow.load}


def num_valid(fraction: float, num_train: int) -> int:
  """`ceil(fraction * num_train)`, the requests `split_valid` moves (rounded first, so that 0.1 of 30
  requests is 3, not the 4 that float rounding of 0.1 * 30 would give)."""
  return math.ceil(round(fraction * num_train, 9))


def check_valid_fraction(fraction) -> None:
  """Raises `ValueError` naming `config.data.valid_fraction` unless it is a number in [0, 1)."""
  if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
    raise ValueError(f"config.data.valid_fraction must be a number in [0, 1), got {fraction!r}")


def split_valid(data: CascadeData, fraction: float) -> CascadeData:
  """Moves the last `ceil(fraction * R)` of the R "train" requests (and their request ids) into a new
  "valid" split.

  The tail is taken, not a random sample, so the split is deterministic and, for readers that order
  requests by day (RecFlow), is the end of the last training days: validation then comes after
  the training requests in time, as the test days do.

  Args:
    data: a reader's output, with a "train" split and no "valid" split.
    fraction: in [0, 1); 0 returns `data` unchanged.

  Returns:
    `data` with "train" shortened and "valid" added (the other splits untouched).

  Raises:
    ValueError: naming `config.data.valid_fraction` if the fraction is out of range or leaves no
      training request.
  """
  check_valid_fraction(fraction)
  if not fraction:
    return data
  if "train" not in data.splits or "valid" in data.splits:
    raise ValueError(f"config.data.valid_fraction={fraction} needs a 'train' split and no 'valid' split; "
                     f"the reader returned {sorted(data.splits)}")
  total = data.splits["train"].batch_size
  n = num_valid(fraction, total)
  if n >= total:
    raise ValueError(f"config.data.valid_fraction={fraction} of {total} training requests leaves no "
                     "training request")
  train, valid = slice(0, total - n), slice(total - n, total)
  splits = {**data.splits, "train": data.splits["train"].take(train), "valid": data.splits["train"].take(valid)}
  ids = np.asarray(data.request_ids["train"])
  request_ids = {**data.request_ids, "train": ids[train], "valid": ids[valid]}
  moved = {"fraction": fraction, "train_requests": total - n, "valid_requests": n}
  report = {**data.report, "valid_split": moved}
  return dataclasses.replace(data, splits=splits, request_ids=request_ids, report=report)


def load(config: ConfigDict, num_stages: int) -> CascadeData:
  """Loads the dataset named by `config.name` for an S-stage cascade and validates every split.

  With `config.valid_fraction` > 0 (absent = 0), the tail of the training requests becomes a
  "valid" split (`split_valid`). The reader never sees that key, so its on-disk cache entry is
  the same whatever the fraction.

  Raises:
    ValueError: naming `config.data.name` for an unknown dataset, `config.data.valid_fraction` for
      a bad fraction, or the split, field and row of bad data.
  """
  if config.name not in READERS:
    raise ValueError(f"config.data.name: unknown dataset {config.name!r}; available: {sorted(READERS)}")
  fraction = config.get("valid_fraction", 0.0)
  check_valid_fraction(fraction)  # before the reader, which may take minutes
  reader_config = config
  if "valid_fraction" in config:
    reader_config = ConfigDict(config.to_dict())
    del reader_config["valid_fraction"]
  data = split_valid(READERS[config.name](reader_config, num_stages), fraction)
  for split, batch in data.splits.items():
    validate(batch, data.features, num_stages, source=f"{config.name}/{split}")
  return data


__all__ = ["CascadeBatch", "CascadeData", "FeatureSpec", "READERS", "check_valid_fraction", "load", "num_valid",
           "split_valid", "validate"]
