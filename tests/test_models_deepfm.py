"""DeepFM: the O(nk) FM term equals the explicit pairwise sum; decomposition and parameter count."""

import itertools

import jax
import numpy as np

from cascadejax.models import get_model
from cascadejax.models.deepfm import fm_interaction
from cascadejax.models.layers import fields
from tests.test_models import D, batch, dense_count, embed, embed_params, n_params


def test_fm_interaction_equals_explicit_pairwise_sum():
  rng = np.random.default_rng(0)
  user, items = rng.normal(size=(2, 3, 4)).astype(np.float32), rng.normal(size=(2, 5, 2, 4)).astype(np.float32)
  got = np.asarray(fm_interaction(user, items))
  assert got.shape == (2, 5)
  for b, n in np.ndindex(2, 5):
    f = np.concatenate([user[b], items[b, n]])  # the 5 fields this candidate sees
    want = sum(f[i] @ f[j] for i, j in itertools.combinations(range(len(f)), 2))
    np.testing.assert_allclose(got[b, n], want, rtol=1e-5, atol=1e-5)


def test_score_is_first_order_plus_fm_plus_deep():
  emb = embed(embed_params(), *batch())
  model = get_model("deepfm", {"hidden": (5,)})
  params = model.init(jax.random.key(0), emb)
  p = params["params"]
  user, items = (np.asarray(x) for x in fields(emb))
  assert user.shape == (2, 2, D) and items.shape == (2, 5, 2, D)  # history (pooled), user_id | category, item_id
  x = np.concatenate([np.broadcast_to(user.reshape(2, 1, -1), (2, 5, 2 * D)), items.reshape(2, 5, -1)], -1)
  first = x @ np.asarray(p["first_order"]["kernel"])[:, 0]
  h = np.maximum(x @ np.asarray(p["deep"]["Dense_0"]["kernel"]) + np.asarray(p["deep"]["Dense_0"]["bias"]), 0)
  deep = h @ np.asarray(p["deep_out"]["kernel"])[:, 0] + np.asarray(p["deep_out"]["bias"])[0]
  fm = np.asarray(fm_interaction(user, items))
  np.testing.assert_allclose(model.apply(params, emb), first + fm + deep, rtol=1e-5, atol=1e-5)
  assert n_params(params) == 4 * D + dense_count((4 * D, 5, 1))  # F = 4 fields of width D
