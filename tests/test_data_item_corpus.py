"""cascadejax.data.item_corpus: every retrievable item, from the simulator's world or the logged candidates."""

import numpy as np
import pytest

from cascadejax import data as data_lib
from cascadejax.data import item_corpus
from cascadejax.data.schema import CascadeBatch, CascadeData, FeatureSpec
from tests.conftest import tiny_config

FEATURES = (FeatureSpec("user_id", "user", "user_id", 5), FeatureSpec("item_id", "items", "item_id", 10),
            FeatureSpec("category", "items", "category", 4))


def _split(items, cats, mask):
  b = len(items)
  return CascadeBatch(user={"user_id": np.arange(1, b + 1, dtype=np.int32)},
                      items={"item_id": np.array(items, np.int32), "category": np.array(cats, np.int32)},
                      stage=np.zeros((b, 3), np.int32), label=np.zeros((b, 3), np.float32), mask=np.array(mask))


def _data(test_cats=((3, 1, 0),)):
  train = _split([[7, 2, 5], [2, 9, 0]], [[1, 2, 3], [2, 1, 0]], [[True, True, True], [True, True, False]])
  test = _split([[4, 7, 0]], test_cats, [[True, True, False]])
  return CascadeData(features=FEATURES, num_stages=1, splits={"train": train, "test": test},
                     request_ids={"train": np.arange(2), "test": np.arange(2, 3)})


def test_from_candidates_is_the_union_of_every_split_with_train_counts():
  c = item_corpus.from_candidates(_data())
  assert c.key == "item_id" and len(c) == 5
  np.testing.assert_array_equal(c.items["item_id"], [2, 4, 5, 7, 9])  # padding slots (row 0 of a masked slot) left out
  np.testing.assert_array_equal(c.items["category"], [2, 3, 3, 1, 1])
  np.testing.assert_array_equal(c.counts, [2, 0, 1, 1, 1])  # item 4 is only in the test split
  index = c.index()
  assert index.shape == (10,) and index[0] == -1 and index[3] == -1
  np.testing.assert_array_equal(index[[2, 4, 5, 7, 9]], np.arange(5))
  q = c.sampling_probability(smoothing=1.0)
  np.testing.assert_allclose(q, np.array([3, 1, 2, 2, 2]) / 10)


def test_an_item_feature_that_varies_with_the_request_is_named():
  with pytest.raises(ValueError, match=r"item feature 'category' is not an attribute of the item: item item_id row 7 "
                                       r"has category rows 1 and 2"):
    item_corpus.from_candidates(_data(test_cats=((3, 2, 0),)))


def test_corpus_checks_its_columns():
  with pytest.raises(ValueError, match="distinct rows > 0"):
    item_corpus.Corpus("item_id", {"item_id": np.array([1, 1])}, np.zeros(2, np.int64))
  with pytest.raises(ValueError, match=r"must be \[M\]"):
    item_corpus.Corpus("item_id", {"item_id": np.array([1, 2]), "c": np.array([1])}, np.zeros(2, np.int64))


@pytest.fixture(scope="module")
def simulated():
  config = tiny_config()
  return config, data_lib.load(config.data, 2)


def test_the_simulator_corpus_holds_every_item_with_the_features_candidates_carry(simulated):
  config, data = simulated
  c = data_lib.corpus(config.data, data)
  assert len(c) == config.data.num_items
  np.testing.assert_array_equal(c.items["item_id"], np.arange(1, config.data.num_items + 1))
  index = c.index()
  for split in data.splits.values():
    mask = np.asarray(split.mask)
    j = index[np.asarray(split.items["item_id"])[mask]]
    assert (j >= 0).all()
    for f in ("category", "creator"):
      np.testing.assert_array_equal(c.items[f][j], np.asarray(split.items[f])[mask])
  assert c.counts.sum() == np.asarray(data.splits["train"].mask).sum()
  # the logged candidates are a subset of the world: the union agrees on every item it has
  logged = item_corpus.from_candidates(data)
  j = index[logged.items["item_id"]]
  for f in logged.items:
    np.testing.assert_array_equal(c.items[f][j], logged.items[f])
  np.testing.assert_array_equal(c.counts[j], logged.counts)


def test_request_dependent_features_and_process_shares_are_refused(simulated):
  config, data = simulated
  crossed = config.data.copy_and_resolve_references()
  crossed.cross_features = (("user_group", "category"),)
  with pytest.raises(ValueError, match="config.data.cross_features: cross features depend on the request"):
    data_lib.corpus(crossed, data)
  import dataclasses  # noqa: PLC0415
  with pytest.raises(ValueError, match="holds only its share"):
    data_lib.corpus(config.data, dataclasses.replace(data, process_share=(0, 2)))
