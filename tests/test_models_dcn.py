"""DCN-v1 cross layer against NumPy, and the dcn_v1 parameter count."""

import jax
import numpy as np

from cascadejax.models import get_model
from cascadejax.models.dcn import CrossLayerV1
from tests.test_models import D, batch, dense_count, embed, embed_params, n_params


def test_cross_layer_v1_matches_numpy():
  rng = np.random.default_rng(0)
  x0, x = (rng.normal(size=(2, 5, 6)).astype(np.float32) for _ in range(2))
  layer = CrossLayerV1()
  p = layer.init(jax.random.key(0), x0, x)["params"]
  w, b = np.asarray(p["kernel"]), rng.normal(size=6).astype(np.float32)
  assert w.shape == (6, 1)
  got = layer.apply({"params": {"kernel": w, "bias": b}}, x0, x)
  np.testing.assert_allclose(got, x0 * (x @ w) + b + x, rtol=1e-5, atol=1e-5)


def test_dcn_v1_parameter_count():
  emb = embed(embed_params(), *batch())
  params = jax.eval_shape(get_model("dcn_v1", {"num_cross": 3, "deep": (5, 3)}).init, jax.random.key(0), emb)
  d = 4 * D
  assert n_params(params) == 3 * 2 * d + dense_count((d, 5, 3)) + (d + 3) + 1
