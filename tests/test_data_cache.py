"""The on-disk dataset cache (and the optional TFDS export): hits, misses, atomic writes, memory maps."""

import dataclasses
import json
import logging
import os

import jax
import numpy as np
import pytest

from cascadejax.data import cache, pipeline, synthetic
from tests.conftest import tiny_config

KEY = {"config": {"a": 1, "days": ("2024-01-13", "2024-01-14")}, "files": [["x.feather", 10, 123]], "version": 1}


def _data(feedback=True):
  cfg = tiny_config().data
  data = synthetic.load(cfg, 2)
  if not feedback:
    data.splits["test"] = data.splits["test"].replace(feedback=None)
  return data


class Builds:
  """A `build` callable that counts its calls."""

  def __init__(self, data):
    self.data, self.calls = data, 0

  def __call__(self):
    self.calls += 1
    return self.data


def _assert_same(a, b):
  assert a.features == b.features and a.num_stages == b.num_stages and set(a.splits) == set(b.splits)
  for split in a.splits:
    assert jax.tree.structure(a.splits[split]) == jax.tree.structure(b.splits[split])
    for x, y in zip(jax.tree.leaves(a.splits[split]), jax.tree.leaves(b.splits[split])):
      assert x.dtype == y.dtype
      np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.request_ids[split], b.request_ids[split])


def test_miss_then_hit_loads_equal_memory_mapped_data(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  build = Builds(_data(feedback=False))
  first = cache.cached("toy", KEY, build, cache_dir=str(tmp_path))
  second = cache.cached("toy", dict(KEY), build, cache_dir=str(tmp_path))
  assert build.calls == 1
  path = cache.entry_path("toy", KEY, str(tmp_path))
  assert os.path.basename(path) == f"toy-{cache.key_hash(KEY)}" and len(cache.key_hash(KEY)) == 16
  assert f"cache miss: building {path}" in caplog.text and f"cache hit: {path}" in caplog.text
  for loaded in (first, second):
    _assert_same(build.data, loaded)
    assert loaded.report == build.data.report
    assert loaded.splits["test"].feedback is None and loaded.splits["train"].feedback is not None
    for leaf in jax.tree.leaves(loaded.splits["train"]) + [loaded.request_ids["train"]]:
      assert isinstance(leaf, np.memmap) and not leaf.flags.writeable
  assert os.listdir(tmp_path) == [os.path.basename(path)]  # no temporary directory left behind


def test_a_hit_repeats_what_the_build_dropped(tmp_path, caplog):
  data = dataclasses.replace(_data(), report={"rows": 10, "dropped": {"bad_rows": 3, "clean": 0}})
  cache.cached("toy", KEY, Builds(data), cache_dir=str(tmp_path))
  with caplog.at_level(logging.WARNING):
    hit = cache.cached("toy", KEY, Builds(data), cache_dir=str(tmp_path))
  assert hit.report == data.report
  assert "built with these rows dropped by documented filters: bad_rows 3" in caplog.text
  assert "clean" not in caplog.text


def test_key_change_rebuilds_into_another_entry(tmp_path):
  build = Builds(_data())
  cache.cached("toy", KEY, build, cache_dir=str(tmp_path))
  changed = {**KEY, "files": [["x.feather", 10, 124]]}  # the source file's mtime changed
  cache.cached("toy", changed, build, cache_dir=str(tmp_path))
  cache.cached("other_reader", KEY, build, cache_dir=str(tmp_path))
  assert build.calls == 3 and len(os.listdir(tmp_path)) == 3
  assert cache.key_hash(KEY) == cache.key_hash(json.loads(json.dumps(KEY)))  # tuples and lists hash alike
  assert cache.key_hash({"b": 2, "a": 1}) == cache.key_hash({"a": 1, "b": 2})


def test_interrupted_write_is_never_used(tmp_path, monkeypatch):
  build = Builds(_data())
  real_save, saved = np.save, []

  def failing_save(path, array, **kw):
    if len(saved) == 5:
      raise OSError("disk full")
    saved.append(path)
    real_save(path, array, **kw)

  monkeypatch.setattr(np, "save", failing_save)
  with pytest.raises(OSError, match="disk full"):
    cache.cached("toy", KEY, build, cache_dir=str(tmp_path))
  assert os.listdir(tmp_path) == []  # neither the entry nor the temporary directory
  monkeypatch.setattr(np, "save", real_save)
  os.makedirs(tmp_path / ".tmp-toy-leftover-of-a-killed-run" / "train")  # ignored
  _assert_same(build.data, cache.cached("toy", KEY, build, cache_dir=str(tmp_path)))
  assert build.calls == 2


@pytest.mark.parametrize("damage", ["no meta", "other version", "missing array"])
def test_unusable_entry_is_rebuilt(tmp_path, damage):
  build = Builds(_data())
  cache.cached("toy", KEY, build, cache_dir=str(tmp_path))
  path = cache.entry_path("toy", KEY, str(tmp_path))
  if damage == "no meta":
    os.remove(os.path.join(path, "meta.json"))
  elif damage == "other version":
    meta = json.load(open(os.path.join(path, "meta.json")))
    json.dump({**meta, "format_version": cache.FORMAT_VERSION + 1}, open(os.path.join(path, "meta.json"), "w"))
  else:
    os.remove(os.path.join(path, "train", "label.npy"))
  _assert_same(build.data, cache.cached("toy", KEY, build, cache_dir=str(tmp_path)))
  assert build.calls == 2
  _assert_same(build.data, cache.load_entry(path))


def test_no_cache_dir_builds_every_time(tmp_path):
  build = Builds(_data())
  assert cache.cached("toy", KEY, build, cache_dir=None) is build.data
  assert cache.cached("toy", KEY, build, cache_dir=None) is build.data
  assert build.calls == 2 and os.listdir(tmp_path) == []


def test_key_without_a_json_form_is_refused(tmp_path):
  with pytest.raises(TypeError, match=r"cache key.config.path: PosixPath .* has no JSON form"):
    cache.cached("toy", {"config": {"path": tmp_path}}, Builds(_data()), cache_dir=str(tmp_path))


def test_memory_mapped_split_feeds_the_pipeline_identically(tmp_path):
  data = _data()
  loaded = cache.cached("toy", KEY, Builds(data), cache_dir=str(tmp_path))
  a = pipeline.train_dataset(data.splits["train"], global_batch_size=16, seed=3)
  b = pipeline.train_dataset(loaded.splits["train"], global_batch_size=16, seed=3)
  for step in (0, 7, 31):
    for x, y in zip(jax.tree.leaves(a[step]), jax.tree.leaves(b[step])):
      np.testing.assert_array_equal(x, y)


def test_tfds_export_reads_back_through_grain_without_tensorflow(tmp_path):
  # Imported here, not at the top, so the other tests of this module never load TFDS. A missing
  # tensorflow-datasets (the `test` extra installs it) fails this test rather than skipping it.
  import sys  # noqa: PLC0415

  from cascadejax.data import tfds_builder  # noqa: PLC0415
  data = _data()
  path = tfds_builder.write(data, name="tiny", data_dir=str(tmp_path))
  sources, features, num_stages = tfds_builder.read(path)  # the builder's as_data_source()
  assert "tensorflow" not in sys.modules
  assert features == data.features and num_stages == 2 and set(sources) == set(data.splits)
  for split, batch in data.splits.items():  # every example, field by field, as written
    _assert_rows_equal(sources[split], batch, data.request_ids[split])
  first = tfds_builder.batches(sources["test"], batch_size=10)[0]  # in order
  _assert_same_batch(first, data.splits["test"].take(slice(0, 10)))
  train = data.splits["train"]
  shuffled = tfds_builder.batches(sources["train"], batch_size=8, seed=0)
  epoch = [shuffled[i] for i in range(train.batch_size // 8)]  # exactly one pass (256 requests)
  assert jax.tree.map(lambda x: x.dtype, epoch[0]) == jax.tree.map(lambda x: x.dtype, train)
  got = np.concatenate([b.items["item_id"] for b in epoch])
  assert not np.array_equal(got, train.items["item_id"])  # shuffled...
  np.testing.assert_array_equal(np.unique(got, axis=0), np.unique(train.items["item_id"], axis=0))  # ...the same lists


def _assert_rows_equal(source, batch, request_ids):
  """The examples of a TFDS data source, stacked, equal `batch` (and its request ids) field by field;
  each feature declares the written dtype (scalars come back as Python numbers: `batches` casts)."""
  assert len(source) == batch.batch_size
  rows = [source[i] for i in range(len(source))]
  declared = source.dataset_info.features.np_dtype
  want = {"user": batch.user, "items": batch.items, "feedback": batch.feedback, "stage": batch.stage,
          "label": batch.label, "mask": batch.mask, "request_id": request_ids}
  assert set(rows[0]) == set(want)
  for name, expected in want.items():
    if isinstance(expected, dict):
      assert set(rows[0][name]) == set(expected), name
      fields = [(f"{name}.{k}", [r[name][k] for r in rows], v, declared[name][k]) for k, v in expected.items()]
    else:
      fields = [(name, [r[name] for r in rows], expected, declared[name])]
    for field, got, exp, dtype in fields:
      got = np.stack(got)
      assert np.dtype(dtype) == exp.dtype and got.shape == exp.shape, (field, dtype, got.shape, exp.dtype, exp.shape)
      np.testing.assert_array_equal(got, exp, err_msg=field)


def _assert_same_batch(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype and x.shape == y.shape, (x.dtype, x.shape, y.dtype, y.shape)
    np.testing.assert_array_equal(x, y)
