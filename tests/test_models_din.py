"""DIN: the split first attention layer equals the naive concatenation, the per-request context term of
the output MLP equals its concatenation, masking, parameter count."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cascadejax.models import get_model
from cascadejax.models.din import TargetAttention, naive_attention_input
from tests.test_models import D, batch, dense_count, embed, embed_params, n_params

KW = dict(attention=(6, 3), hidden=(5,))


def setup(**kwargs):
  emb = embed(embed_params(), *batch())
  model = get_model("din", {**KW, **kwargs})
  params = model.init(jax.random.key(0), emb)
  # Non-zero biases so every term of the split is exercised.
  params = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(x.size), x.shape), params)
  return model, params, emb


@pytest.mark.parametrize("normalization", ["none", "softmax"])
def test_fast_form_equals_naive_concatenation(normalization):
  model, params, emb = setup(normalization=normalization)
  naive = get_model("din", {**KW, "normalization": normalization, "fast": False})
  np.testing.assert_allclose(model.apply(params, emb), naive.apply(params, emb), rtol=1e-5, atol=1e-6)


def test_attention_unit_forms_agree_in_value_and_gradient():
  # The attention logits themselves, on random inputs with N != L, and their gradients.
  rng = np.random.default_rng(0)
  seq, target = rng.normal(size=(3, 7, 4)).astype(np.float32), rng.normal(size=(3, 5, 4)).astype(np.float32)
  p = TargetAttention((6, 3)).init(jax.random.key(1), seq, target)
  p = jax.tree.map(lambda x: x + 0.1, p)  # non-zero biases
  forms = [TargetAttention((6, 3)), TargetAttention((6, 3), fast=False),
           TargetAttention((6, 3), chunk=2)]  # blocks of 2 requests (the 3rd padded), recomputed in backward
  value_and_grad = lambda p, u: jax.value_and_grad(lambda q: (u.apply(q, seq, target) ** 2).sum(), has_aux=False)(p)
  outs = jax.jit(lambda p: [(u.apply(p, seq, target), value_and_grad(p, u)[1]) for u in forms])(p)
  (fast, g_fast), others = outs[0], outs[1:]
  assert fast.shape == (3, 5, 7)
  for out, grads in others:
    np.testing.assert_allclose(out, fast, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(g_fast)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_naive_input_layout():
  s, t = jnp.arange(6.0).reshape(1, 2, 3), 10 + jnp.arange(3.0).reshape(1, 1, 3)
  z = naive_attention_input(s, t)
  assert z.shape == (1, 1, 2, 12)
  np.testing.assert_array_equal(z[0, 0, 1], np.concatenate([s[0, 1], t[0, 0], s[0, 1] - t[0, 0], s[0, 1] * t[0, 0]]))


@pytest.mark.parametrize("normalization", ["none", "softmax"])
def test_interest_is_masked_attention_over_valid_steps(normalization):
  model, params, emb = setup(normalization=normalization)
  interest = np.asarray(model.apply(params, emb, method=model.interest))
  assert interest.shape == (2, 5, D)
  np.testing.assert_array_equal(interest[1], 0.0)  # row 1's history is all padding
  # By hand for row 0 (steps 0, 1 valid): weights from the attention logits of the valid steps only.
  p = params["params"]["attention_unit"]
  seq, target = emb.user["history"][:1, :2], emb.items["item_id"][:1]
  logits = np.asarray(TargetAttention((6, 3)).apply({"params": p}, seq, target))[0]  # [N, 2]
  w = logits if normalization == "none" else np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  np.testing.assert_allclose(interest[0], w @ np.asarray(seq[0]), rtol=1e-5, atol=1e-6)
  # Padded steps never matter (padding row overwritten, more padding columns).
  ep = embed_params()
  ep["params"]["item_id"] = ep["params"]["item_id"].at[0].set(3.0)
  user, items = batch()
  longer = {**user, "history": jnp.pad(user["history"], ((0, 0), (0, 3)))}
  got = model.apply(params, embed(ep, longer, items), method=model.interest)
  np.testing.assert_allclose(got[:, :4], interest[:, :4], rtol=1e-5, atol=1e-6)


def test_parameter_count():
  params = jax.eval_shape(get_model("din", KW).init, jax.random.key(0), embed(embed_params(), *batch()))
  fc, fi = 1, 2  # context: user_id; items: item_id, category
  want = (4 * D * 6 + 6) + dense_count((6, 3, 1)) + dense_count(((fc + 1 + fi) * D, 5, 1))
  assert n_params(params) == want


def test_missing_sequence_is_named():
  model = get_model("din", {**KW, "sequence": "clicks"})
  with pytest.raises(ValueError, match="din: needs user sequence 'clicks'"):
    model.init(jax.random.key(0), embed(embed_params(), *batch()))


@pytest.mark.parametrize("hidden", [(6, 4), ()])
def test_shared_input_mlp_equals_mlp_of_the_concatenation(hidden):
  # DIN's output MLP takes the context once per request (`shared`); same parameters, same values.
  from cascadejax.models.layers import MLP
  rng = np.random.default_rng(2)
  shared, x = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(3, 5, 2)).astype(np.float32)
  concat = np.concatenate([np.broadcast_to(shared[:, None], (3, 5, 4)), x], axis=-1)
  p = MLP(hidden).init(jax.random.key(3), concat)
  p = jax.tree.map(lambda a: a + 0.1, p)  # non-zero biases
  assert jax.tree.structure(MLP(hidden).init(jax.random.key(3), x, shared=shared)) == jax.tree.structure(p)
  np.testing.assert_allclose(MLP(hidden).apply(p, x, shared=shared), MLP(hidden).apply(p, concat), rtol=1e-5, atol=1e-6)
