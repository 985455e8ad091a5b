"""Datasets: readers that produce `CascadeData`, and the input pipeline that batches it."""

from __future__ import annotations

from ml_collections import ConfigDict

from cascadejax.data import movielens_cascade, recflow, synthetic
from cascadejax.data.schema import CascadeBatch, CascadeData, FeatureSpec, validate

READERS = {"synthetic": synthetic.load, "movielens": movielens_cascade.load, "recflow": recflow.load}


def load(config: ConfigDict, num_stages: int) -> CascadeData:
  """Loads the dataset named by `config.name` for an S-stage cascade and validates every split.

  Raises:
    ValueError: naming `config.data.name` for an unknown dataset, or the split, field and row of
      bad data.
  """
  if config.name not in READERS:
    raise ValueError(f"config.data.name: unknown dataset {config.name!r}; available: {sorted(READERS)}")
  data = READERS[config.name](config, num_stages)
  for split, batch in data.splits.items():
    validate(batch, data.features, num_stages, source=f"{config.name}/{split}")
  return data


__all__ = ["CascadeBatch", "CascadeData", "FeatureSpec", "READERS", "load", "validate"]
