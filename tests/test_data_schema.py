"""`validate`: bad data is reported with its source, field and first bad row, never passed on."""

import numpy as np
import pytest

from cascadejax.data import synthetic
from cascadejax.data.schema import validate
from tests.conftest import tiny_config


@pytest.fixture
def split():
  cfg = tiny_config().data
  data = synthetic.load(cfg, 2)
  return data.features, data.splits["train"].take(slice(0, 10))


def test_clean_split_passes(split):
  features, batch = split
  validate(batch, features, 2, source="x")


def test_id_out_of_range_names_feature_and_row(split):
  features, batch = split
  batch.items["category"][3, 1] = 10_000
  with pytest.raises(ValueError, match=r"file.feather: items feature 'category' row 3 has ids outside"):
    validate(batch, features, 2, source="file.feather")


def test_stage_beyond_cascade_depth(split):
  features, batch = split
  batch.stage[7, 0] = 3
  with pytest.raises(ValueError, match=r"field 'stage' row 7 has values outside \[0, 2\]"):
    validate(batch, features, 2)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_label_or_feedback(split, bad):
  features, batch = split
  batch.label[2, 4] = bad
  with pytest.raises(ValueError, match="field 'label' row 2 holds non-finite"):
    validate(batch, features, 2)
  batch.label[2, 4] = 0.0
  batch.feedback["click"][5, 0] = bad
  with pytest.raises(ValueError, match=r"field 'feedback.click' row 5"):
    validate(batch, features, 2)


def test_missing_feature_wrong_shape_and_dtype(split):
  features, batch = split
  del batch.user["context"]
  with pytest.raises(ValueError, match="missing user feature 'context'"):
    validate(batch, features, 2)
  features, batch = split
  batch.user["context"] = np.zeros((10, 2), np.int32)
  with pytest.raises(ValueError, match=r"user feature 'context' has shape \(10, 2\)"):
    validate(batch, features, 2)
  batch.user["context"] = np.zeros(10, np.float32)
  with pytest.raises(ValueError, match="must hold integer ids"):
    validate(batch, features, 2)


def test_all_masked_and_non_bool_mask(split):
  features, batch = split
  with pytest.raises(ValueError, match="'mask' must be bool"):
    validate(batch.replace(mask=batch.mask.astype(np.int32)), features, 2)
  with pytest.raises(ValueError, match="every candidate is masked out"):
    validate(batch.replace(mask=np.zeros_like(batch.mask)), features, 2)
