"""Processed cascade logs as a TFDS dataset (ArrayRecord files), read back through grain.

Optional: `pip install 'cascadejax[tfds]'` (tensorflow-datasets and array_record). TensorFlow is
**not** needed: TFDS 4.9.10 writes `file_format="array_record"` datasets and reads them back as
random-access data sources without it (checked in a fresh virtual environment holding only these
packages). Training does not need this module (the reader cache, `cascadejax.data.cache`, is what
`train.py` uses); it is for sharing processed logs in the format TFDS users expect:

    data = cascadejax.data.load(config.data, num_stages)            # any reader
    path = tfds_builder.write(data, name="recflow_lcron", data_dir="~/tensorflow_datasets")
    sources, features, num_stages = tfds_builder.read(path)         # no TensorFlow involved
    ds = tfds_builder.batches(sources["train"], batch_size=1024, seed=0)   # grain MapDataset
    batch = ds[0]                                                    # a NumPy CascadeBatch

One TFDS example is one request: nested dicts `user`, `items`, `feedback` of fixed-shape arrays,
`stage`, `label`, `mask` and the scalar `request_id`. Examples keep the split's request order
(shuffling is grain's job). The dataset's `FeatureSpec`s and stage count are stored beside the
TFDS files in `cascade.json`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import grain
import numpy as np

from cascadejax.data.schema import CascadeBatch, CascadeData, FeatureSpec

try:
  import tensorflow_datasets as tfds
except ImportError as e:  # pragma: no cover (depends on the environment)
  raise ImportError("cascadejax.data.tfds_builder needs tensorflow-datasets (no TensorFlow): "
                    "pip install 'cascadejax[tfds]'") from e

VERSION = "1.0.0"
META = "cascade.json"


def _row_features(batch: CascadeBatch) -> tfds.features.FeaturesDict:
  spec = lambda a: tfds.features.Tensor(shape=tuple(np.shape(a)[1:]), dtype=np.asarray(a).dtype)
  fields = {"user": tfds.features.FeaturesDict({k: spec(v) for k, v in batch.user.items()}),
            "items": tfds.features.FeaturesDict({k: spec(v) for k, v in batch.items.items()}),
            "stage": spec(batch.stage), "label": spec(batch.label), "mask": spec(batch.mask),
            "request_id": tfds.features.Tensor(shape=(), dtype=np.int64)}
  if batch.feedback is not None:
    fields["feedback"] = tfds.features.FeaturesDict({k: spec(v) for k, v in batch.feedback.items()})
  return tfds.features.FeaturesDict(fields)


class CascadeLogs(tfds.core.GeneratorBasedBuilder):
  """A `CascadeData` written as a TFDS dataset; the builder config's name names the dataset."""

  VERSION = tfds.core.Version(VERSION)
  # TFDS finds a builder's source file (for its download checksums) with importlib.resources on the
  # top-level package. `cascadejax` is a namespace package, and under an editable install its
  # `__path__` holds setuptools' path-hook entry, which Python 3.11's importlib.resources rejects
  # (NotADirectoryError in `download_and_prepare`). This builder downloads nothing: no code path.
  code_path = None

  def __init__(self, *, data: CascadeData, name: str, **kwargs):
    self._data = data
    super().__init__(config=tfds.core.BuilderConfig(name=name), file_format="array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    first = next(iter(self._data.splits.values()))
    return tfds.core.DatasetInfo(builder=self, features=_row_features(first), disable_shuffling=True,
                                 description="Cascade ranking logs: one request per example (cascadejax).")

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in self._data.splits}

  def _generate_examples(self, split: str):
    batch, ids = self._data.splits[split], self._data.request_ids[split]
    for i in range(batch.batch_size):
      row = {"user": {k: v[i] for k, v in batch.user.items()}, "items": {k: v[i] for k, v in batch.items.items()},
             "stage": batch.stage[i], "label": batch.label[i], "mask": batch.mask[i], "request_id": int(ids[i])}
      if batch.feedback is not None:
        row["feedback"] = {k: v[i] for k, v in batch.feedback.items()}
      yield i, row


def write(data: CascadeData, *, name: str, data_dir: str) -> str:
  """Writes `data` as TFDS dataset `cascade_logs/<name>` under `data_dir`; returns its directory."""
  builder = CascadeLogs(data=data, name=name, data_dir=os.path.expanduser(data_dir))
  builder.download_and_prepare()
  path = str(builder.data_path)
  with open(os.path.join(path, META), "w") as f:
    json.dump({"num_stages": data.num_stages, "features": [dataclasses.asdict(s) for s in data.features]}, f)
  return path


def read(path: str) -> tuple[dict, tuple[FeatureSpec, ...], int]:
  """`(split -> random-access source of examples, feature specs, num_stages)` of a written dataset."""
  meta_path = os.path.join(os.path.expanduser(path), META)
  if not os.path.exists(meta_path):
    raise ValueError(f"{path}: no {META}; is it a dataset written by cascadejax.data.tfds_builder.write?")
  with open(meta_path) as f:
    meta = json.load(f)
  builder = tfds.builder_from_directory(os.path.expanduser(path))
  sources = builder.as_data_source()
  return dict(sources), tuple(FeatureSpec(**s) for s in meta["features"]), meta["num_stages"]


def to_batch(rows: dict) -> CascadeBatch:
  """A grain-batched dict of examples (leading request dimension) -> `CascadeBatch`."""
  return CascadeBatch(user=dict(rows["user"]), items=dict(rows["items"]), stage=rows["stage"],
                      label=rows["label"], mask=rows["mask"],
                      feedback=dict(rows["feedback"]) if "feedback" in rows else None)


def _cast(tree, dtypes):
  """`tree`'s arrays in the dtypes the dataset declares: TFDS decodes a scalar feature (`user`'s
  ids, say) as a Python int or float, which grain's batching stacks as int64 or float64."""
  if isinstance(tree, dict):
    return {k: _cast(v, dtypes[k]) for k, v in tree.items()}
  return np.asarray(tree, dtype=dtypes)


def _to_written_batch(rows: dict, dtypes: dict) -> CascadeBatch:
  return to_batch(_cast(rows, dtypes))


def batches(source, *, batch_size: int, seed: int | None = None) -> grain.MapDataset:
  """`source`'s examples (a data source of `read`) as `CascadeBatch`es of `batch_size` requests,
  in the written dtypes: shuffled and endless with a `seed` (as `pipeline.train_dataset`), in
  order and once through without one (the last batch may be short)."""
  dtypes = source.dataset_info.features.np_dtype
  ds = grain.MapDataset.source(source)
  if seed is not None:
    ds = ds.shuffle(seed=seed).repeat(None)
  return ds.batch(batch_size).map(functools.partial(_to_written_batch, dtypes=dtypes))
