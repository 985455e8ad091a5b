"""DSSM: towers, pooling (mean and attention), dot and cosine scores, masking, parameter count."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cascadejax.models import get_model
from tests.test_models import D, batch, dense_count, embed, embed_params, n_params


def setup(**kwargs):
  emb = embed(embed_params(), *batch())
  model = get_model("dssm", {"hidden": (5,), "out_dim": 3, **kwargs})
  return model, model.init(jax.random.key(0), emb), emb


@pytest.mark.parametrize("pooling", ["mean", "attention"])
@pytest.mark.parametrize("score", ["dot", "cosine"])
def test_shapes_and_score_is_tower_product(pooling, score):
  model, params, emb = setup(pooling=pooling, score=score, temperature=0.2)
  u = model.apply(params, emb, method=model.encode_users)
  v = model.apply(params, emb, method=model.encode_items)
  assert u.shape == (2, 3) and v.shape == (2, 5, 3)
  s = np.asarray(model.apply(params, emb))
  want = np.einsum("bd,bnd->bn", u, v) / (0.2 if score == "cosine" else 1.0)
  np.testing.assert_allclose(s, want, rtol=1e-5, atol=1e-6)
  if score == "cosine":
    np.testing.assert_allclose(np.linalg.norm(u, axis=-1), 1.0, rtol=1e-5)
    assert np.abs(s).max() <= 1 / 0.2 + 1e-5


def test_attention_pooling_masks_padding_and_weights_valid_steps():
  model, params, emb = setup(pooling="attention")
  p = params["params"]["history"]["attention_history"]
  # By hand: a_l = softmax over valid steps of v^T tanh(W s_l + b).
  s = np.asarray(emb.user["history"][0])  # row 0: steps 0, 1 valid; 2, 3 padding
  w, b, v = (np.asarray(x) for x in (p["proj"]["kernel"], p["proj"]["bias"], p["query"]["kernel"]))
  logits = (np.tanh(s @ w + b) @ v)[:2, 0]
  a = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
  pooled = model.apply(params, emb, method=lambda m, e: m.history(e))
  np.testing.assert_allclose(pooled[0], a @ s[:2], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(pooled[1], np.zeros(D))  # row 1 has no valid step
  # Padded steps never matter: overwrite the padding row of the item table, add padding columns.
  ep = embed_params()
  ep["params"]["item_id"] = ep["params"]["item_id"].at[0].set(7.0)
  user, items = batch()
  longer = {**user, "history": jnp.pad(user["history"], ((0, 0), (0, 2)))}
  np.testing.assert_allclose(model.apply(params, embed(ep, longer, items))[:, :4],
                             model.apply(params, emb)[:, :4], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_parameter_count(pooling):
  model = get_model("dssm", {"hidden": (5,), "out_dim": 3, "pooling": pooling, "attention_hidden": 6})
  params = jax.eval_shape(model.init, jax.random.key(0), embed(embed_params(), *batch()))
  fc, s, fi = 1, 1, 2  # user_id | history | item_id, category
  want = dense_count(((fc + s) * D, 5, 3)) + dense_count((fi * D, 5, 3))
  if pooling == "attention":
    want += s * (D * 6 + 6 + 6)
  else:  # the same towers as two_tower's, whose count docs/models.md gives by the same formula
    tt = get_model("two_tower", {"hidden": (5,), "out_dim": 3})
    assert n_params(jax.eval_shape(tt.init, jax.random.key(0), embed(embed_params(), *batch()))) == want
  assert n_params(params) == want


def test_bad_options_fail_at_construction():
  with pytest.raises(ValueError, match=r"cascade\.retrieval\.model: dssm model_kwargs\.pooling"):
    get_model("dssm", {"pooling": "max"}, config_key="cascade.retrieval.model")
  with pytest.raises(ValueError, match=r"model_kwargs\.score"):
    get_model("dssm", {"score": "l2"})
