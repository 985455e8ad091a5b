"""Wide & Deep: cross-product features reach only the wide (linear) part; parameter count."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cascadejax.data.schema import FeatureSpec
from cascadejax.embedding.collection import EmbeddingCollection
from cascadejax.models import get_model
from tests.test_models import D, FEATURES, batch, dense_count, n_params

CROSS = FeatureSpec("user_id_x_category", "items", "user_id_x_category", 50)
WITH_CROSS = FEATURES + (CROSS,)


def data(cross_ids):
  user, items = batch()
  return user, {**items, "user_id_x_category": jnp.asarray(cross_ids)}


def test_cross_feature_is_a_per_id_linear_weight_in_the_wide_part_only():
  cross = np.array([[11, 12, 13, 14, 0], [21, 22, 23, 24, 25]])
  ec = EmbeddingCollection(WITH_CROSS, D)
  ep = ec.init(jax.random.key(0), *data(cross))
  emb = ec.apply(ep, *data(cross))
  model = get_model("wide_deep", {"wide": ("user_id_x_category",), "deep": (5,)})
  params = model.init(jax.random.key(1), emb)
  # The deep part reads the 4 base fields; the wide part those plus the cross.
  assert params["params"]["deep"]["Dense_0"]["kernel"].shape == (4 * D, 5)
  assert params["params"]["wide"]["kernel"].shape == (5 * D, 1)
  fc, w = 4, 1
  assert n_params(params) == (fc + w) * D + dense_count((fc * D, 5, 1))
  # Changing one candidate's cross id moves its score by exactly w^T (e_new - e_old).
  base = np.asarray(model.apply(params, emb))
  cross2 = cross.copy()
  cross2[1, 2] = 40
  moved = np.asarray(model.apply(params, ec.apply(ep, *data(cross2))))
  table = np.asarray(ep["params"]["user_id_x_category"])
  w_cross = np.asarray(params["params"]["wide"]["kernel"])[4 * D:, 0]
  np.testing.assert_allclose(moved[1, 2] - base[1, 2], w_cross @ (table[40] - table[23]), rtol=1e-4, atol=1e-6)
  mask = np.ones_like(base, bool)
  mask[1, 2] = False
  np.testing.assert_array_equal(moved[mask], base[mask])


def test_without_wide_features_it_is_linear_plus_deep_and_unknown_names_fail():
  ec = EmbeddingCollection(FEATURES, D)
  emb = ec.apply(ec.init(jax.random.key(0), *batch()), *batch())
  model = get_model("wide_deep", {"deep": (5,)})
  assert n_params(jax.eval_shape(model.init, jax.random.key(1), emb)) == 4 * D + dense_count((4 * D, 5, 1))
  with pytest.raises(ValueError, match=r"wide features \['user_group_x_category'\] are not in the data"):
    get_model("wide_deep", {"wide": ("user_group_x_category",)}).init(jax.random.key(1), emb)


def test_synthetic_cross_features():
  from cascadejax.data import synthetic
  from tests.conftest import tiny_config
  cfg = tiny_config().data
  cfg.cross_features = (("user_group", "category"),)
  data = synthetic.load(cfg, 2)
  spec = [f for f in data.features if f.name == "user_group_x_category"]
  assert spec and spec[0].side == "items" and spec[0].vocab_size == cfg.num_user_groups * cfg.num_categories + 1
  b = data.splits["train"]
  cross = b.items["user_group_x_category"]
  want = (b.user["user_group"][:, None] - 1) * cfg.num_categories + b.items["category"]
  np.testing.assert_array_equal(cross, np.where(b.mask, want, 0))
  cfg.cross_features = (("history", "category"),)
  with pytest.raises(ValueError, match=r"config\.data\.cross_features"):
    synthetic.load(cfg, 2)
