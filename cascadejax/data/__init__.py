"""Datasets: readers that produce `CascadeData`, and the input pipeline that batches it."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numpy as np
from ml_collections import ConfigDict

from cascadejax.data import item_corpus, logs, movielens, recflow, synthetic
from cascadejax.data.schema import CascadeBatch, CascadeData, FeatureSpec, validate
from cascadejax.sections import Section

READERS = {"synthetic": synthetic.load, "movielens": movielens.load, "recflow": recflow.load, "logs": logs.load}
CHECKS = {"synthetic": synthetic.check_config, "movielens": movielens.check_config,
          "recflow": recflow.check_config, "logs": logs.check_config}  # each reader's own checks of its keys, before any file is read


@dataclasses.dataclass(frozen=True)
class DataSection(Section):
  """The keys of `config.data` every reader shares; the rest belong to the reader `name` names,
  which checks them itself (`CHECKS`).

  Attributes:
    name: the reader, one of `READERS`.
    seed: the data's seed (simulators and samplers).
    list_size: N, the candidate slots per request.
    valid_fraction: the share of the training requests moved into a "valid" split (`split_valid`).
    on_device: keep the training split on device and gather each batch there
      (`Experiment.device_split`): a step moves only its row indices from the host. One process.
  """

  KEY = "data"
  ADDED = ("valid_fraction", "on_device")
  OPEN = True
  name: str
  seed: int
  list_size: int
  valid_fraction: Any = 0.0  # checked by `check_valid_fraction` (a number in [0, 1))
  on_device: bool = False

  def check(self) -> None:
    if self.name not in READERS:
      raise ValueError(f"config.data.name: unknown dataset {self.name!r}; available: {sorted(READERS)}")
    if self.list_size < 1:
      raise ValueError(f"config.data.list_size must be >= 1, got {self.list_size}")
    check_valid_fraction(self.valid_fraction)


def check_config(config: ConfigDict, num_stages: int) -> DataSection:
  """Parses the shared keys of `config.data` and runs its reader's checks (no file is read).

  Raises:
    ValueError: naming the `config.data` key that cannot work.
  """
  section = DataSection.parse(config)
  CHECKS[section.name](_reader_config(config), num_stages)
  return section


def _reader_config(config: ConfigDict) -> ConfigDict:
  """`config` without the keys the reader never sees (so its cache entry ignores them)."""
  dropped = [k for k in ("valid_fraction", "on_device") if k in config]
  if not dropped:
    return config
  reader_config = ConfigDict(config.to_dict())
  for key in dropped:
    del reader_config[key]
  return reader_config


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


def load(config: ConfigDict, num_stages: int, *, process_index: int = 0, process_count: int = 1) -> CascadeData:
  """Loads the dataset named by `config.name` for an S-stage cascade and validates every split.

  With `config.valid_fraction` > 0 (absent = 0), the tail of the training requests becomes a
  "valid" split (`split_valid`). The reader never sees that key, so its on-disk cache entry is
  the same whatever the fraction. On a multi-host run (`process_count` > 1) the logs reader converts
  and returns only this process's share of the requests (`CascadeData.process_share`); the other
  readers return every request and each process takes its rows of every batch.

  Raises:
    ValueError: naming `config.data.name` for an unknown dataset, `config.data.valid_fraction` for
      a bad fraction, or the split, field and row of bad data.
  """
  section = DataSection.parse(config)  # before the reader, which may take minutes
  reader = READERS[section.name]
  if section.name == "logs" and process_count > 1:
    reader = functools.partial(logs.load, share=(process_index, process_count))
  data = split_valid(reader(_reader_config(config), num_stages), section.valid_fraction)
  for split, batch in data.splits.items():
    validate(batch, data.features, num_stages, source=f"{config.name}/{split}")
  return data


def corpus(config: ConfigDict, data: CascadeData) -> item_corpus.Corpus:
  """The item corpus of `data` (loaded from `config`, the `config.data` section): every item of the
  simulator's world, else the union of the logged candidates of every split (`cascadejax.data.item_corpus`).

  Raises:
    ValueError: for request-dependent item features, or data holding one process's share only.
  """
  if data.process_share is not None:
    raise ValueError("corpus: this process holds only its share of the requests (a multi-host logs run), "
                     "so the union of their candidates is not the corpus; run full-corpus evaluation on one process")
  if config.name == "synthetic":
    return synthetic.corpus(_reader_config(config), data)
  return item_corpus.from_candidates(data)


__all__ = ["CHECKS", "CascadeBatch", "CascadeData", "DataSection", "FeatureSpec", "READERS", "check_config",
           "check_valid_fraction", "corpus", "load", "num_valid", "split_valid", "validate"]
