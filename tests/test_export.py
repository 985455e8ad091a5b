"""`export.load`'s scoring checks the ids it is given: an out-of-range row was scored NaN and a
negative one silently (as another row); both now raise naming the feature, the ids and the range."""

import jax
import numpy as np
import pytest

from cascadejax import export
from cascadejax.experiment import Experiment
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  """A tiny two-stage cascade exported with random parameters (no training: shapes are all the
  export needs), its in-process scores, and a test batch."""
  c = tiny_config()
  c.data.num_train, c.data.num_test = 32, 8
  exp = Experiment.build(c)
  batch = exp.data.splits["test"].take(slice(0, 3))
  shapes = jax.eval_shape(exp.cascade.init, jax.random.key(0), batch.user, batch.items)["params"]
  leaves, tree = jax.tree.flatten(shapes)
  rng = np.random.default_rng(0)
  params = jax.tree.unflatten(tree, [(0.1 * rng.normal(size=x.shape)).astype(x.dtype) for x in leaves])
  out = str(tmp_path_factory.mktemp("export"))
  export.export_cascade(exp.cascade, params, out, gt_num=2)
  want = np.asarray(exp.cascade.apply({"params": params}, batch.user, batch.items).scores)
  return export.load(out), batch, want


def _with(batch, side, name, where, value):
  group = dict(getattr(batch, side))
  ids = np.array(group[name])
  ids[where] = value
  group[name] = ids
  return batch.replace(**{side: group})


def test_in_range_ids_score_as_in_process(served):
  loaded, batch, want = served
  np.testing.assert_allclose(np.asarray(loaded.score(batch)), want, rtol=1e-5, atol=1e-6)
  assert np.isfinite(want).all()


@pytest.mark.parametrize("side,name,where,value,message", [
    ("items", "item_id", (0, 0), 60 + 1, r"items feature 'item_id': ids \[61\] \(1 of 24\) are outside its table's "
                                         r"rows \[0, 61\); ids are rows of the training data's table"),
    ("items", "category", (slice(None), 1), -3, r"items feature 'category': ids \[-3\] \(3 of 24\) are outside its "
                                                r"table's rows \[0, 7\)"),
    ("user", "user_id", 2, -1, r"user feature 'user_id': ids \[-1\] \(1 of 3\) are outside its table's rows \[0, 41\)"),
    ("user", "history", (1, 0), 1000, r"user feature 'history': ids \[1000\] \(1 of 15\) are outside its table's "
                                      r"rows \[0, 61\)"),
])
def test_out_of_range_and_negative_ids_are_rejected_naming_the_feature(served, side, name, where, value, message):
  loaded, batch, _ = served
  bad = _with(batch, side, name, where, value)
  for call in (loaded.score, loaded.select, lambda b: loaded.score_stage(1, b)):
    with pytest.raises(ValueError, match=message):
      call(bad)


def test_an_export_with_vocabularies_says_to_map_raw_ids_and_floats_are_refused(served):
  loaded, batch, _ = served
  bad = _with(batch, "items", "item_id", (0, 0), 99)
  loaded.manifest["vocab"] = "vocab"  # as an export of data read through vocabularies records it
  try:
    with pytest.raises(ValueError, match=r"\[0, 61\); map raw ids to rows with rows\('item_id', raw_ids\) first"):
      loaded.score(bad)
  finally:
    loaded.manifest["vocab"] = None
  floats = batch.replace(items={**batch.items, "creator": np.asarray(batch.items["creator"], np.float32)})
  with pytest.raises(ValueError, match=r"items feature 'creator' must hold integer table rows, got float32"):
    loaded.score(floats)
  with pytest.raises(ValueError, match=r"missing items feature 'creator'"):
    loaded.score(batch.replace(items={k: v for k, v in batch.items.items() if k != "creator"}))
