"""SASRec: causal encoding, positions, masking, the masked-item loss, parameter count."""

import functools
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cascadejax.embedding.collection import Embedded
from cascadejax.models import get_model
from cascadejax.models.sasrec import sinusoidal_positions
from tests.test_models import D, batch, dense_count, embed, embed_params, n_params

KW = dict(num_blocks=1, hidden=(5,), out_dim=3, max_len=6)


def setup(**kwargs):
  emb = embed(embed_params(), *batch())
  model = get_model("sasrec", {**KW, **kwargs})
  return model, model.init(jax.random.key(0), emb), emb


def encode(model, params, seq, valid, causal=True):
  return _encode(model, params, seq, valid, causal)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _encode(model, params, seq, valid, causal):
  return model.apply(params, seq, valid, method=lambda m, s, v: m.encode_sequence(s, v, causal=causal))


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_causal_encoder_reads_only_the_past_and_skips_padding(positions):
  model, params, _ = setup(positions=positions)
  rng = np.random.default_rng(0)
  seq = jnp.asarray(rng.normal(size=(2, 5, D)), jnp.float32)
  valid = jnp.array([[True, True, True, True, False], [True, True, False, False, False]])
  out = encode(model, params, seq, valid)
  changed = seq.at[:, 3].set(9.0)  # step 3 (valid in row 0, padding in row 1)
  out2 = encode(model, params, changed, valid)
  np.testing.assert_allclose(out2[:, :3], out[:, :3], rtol=1e-5, atol=1e-6)  # the past never sees it
  assert not np.allclose(out2[0, 3], out[0, 3])
  np.testing.assert_allclose(out2[1], out[1], rtol=1e-5, atol=1e-6)  # padding is never read
  np.testing.assert_array_equal(out[:, 4], 0.0)
  # Bidirectional (the masked-item objective): earlier steps do see later valid ones.
  both, both2 = encode(model, params, seq, valid, False), encode(model, params, changed, valid, False)
  assert not np.allclose(both2[0, 0], both[0, 0])


def test_user_state_is_the_last_valid_step_and_positions():
  model, params, emb = setup()
  state = model.apply(params, emb, method=model.user_state)
  out = encode(model, params, emb.user["history"], emb.sequence_mask["history"])
  np.testing.assert_allclose(state[0], out[0, 1], rtol=1e-5, atol=1e-6)  # row 0: steps 0, 1 valid (two programs)
  np.testing.assert_array_equal(state[1], 0.0)  # row 1: no valid step
  u = model.apply(params, emb, method=model.encode_users)
  v = model.apply(params, emb, method=model.encode_items)
  np.testing.assert_allclose(model.apply(params, emb), np.einsum("bd,bnd->bn", u, v), rtol=1e-5, atol=1e-6)
  pe = np.asarray(sinusoidal_positions(7, 6))
  np.testing.assert_allclose(pe[3, 2], np.sin(3 / 10000 ** (2 / 6)), rtol=1e-5)
  np.testing.assert_allclose(pe[3, 3], np.cos(3 / 10000 ** (2 / 6)), rtol=1e-5)
  # Histories longer than the learned table reuse its last row instead of failing.
  long = jnp.ones((1, 9, D))
  assert np.isfinite(encode(model, params, long, jnp.ones((1, 9), bool))).all()


def test_parameter_count():
  for positions in ("learned", "sinusoidal"):
    model = get_model("sasrec", {**KW, "positions": positions, "num_blocks": 2})
    params = jax.eval_shape(model.init, jax.random.key(0), embed(embed_params(), *batch()))
    fc, fi = 1, 2
    want = (6 * D if positions == "learned" else 0) + 2 * (6 * (D * D + D) + 4 * D) + 2 * D + D + D * D + D
    want += dense_count(((fc + 1) * D, 5, 3)) + dense_count((fi * D, 5, 3))
    assert n_params(params) == want, positions


def test_masked_item_loss():
  model, params, emb = setup()
  loss = jax.jit(lambda p, e, rng, prob: model.apply(p, e, rng, method=model.masked_item_loss, mask_prob=prob,
                                                       num_negatives=8))
  rng = jax.random.key(3)
  value = loss(params, emb, rng, 0.9)
  assert np.isfinite(value) and value > 0
  assert loss(params, emb, rng, 0.0) == 0.0
  # Padding never matters: overwrite the padding row of the shared item table.
  ep = embed_params()
  ep["params"]["item_id"] = ep["params"]["item_id"].at[0].set(4.0)
  np.testing.assert_allclose(loss(params, embed(ep, *batch()), rng, 0.9), value, rtol=1e-5)


def test_masked_item_loss_trains_the_encoder():
  # 8 sequences of 4 consecutive items out of 8: a masked item is recoverable from its neighbours.
  d, model = 16, get_model("sasrec", KW)
  table = jnp.asarray(np.random.default_rng(0).normal(size=(9, d)), jnp.float32)
  ids = jnp.asarray([[i % 8 + 1, (i + 1) % 8 + 1, (i + 2) % 8 + 1, (i + 3) % 8 + 1, 0] for i in range(8)])
  e = Embedded(user={"history": table[ids]}, items={"item_id": table[ids[:, :2]]}, sequence_mask={"history": ids > 0})
  params = jax.jit(model.init)(jax.random.key(0), e)
  loss = lambda p, k: model.apply(p, e, k, method=model.masked_item_loss, mask_prob=0.3, num_negatives=16)
  tx = optax.adam(0.003)

  @jax.jit
  def step(p, opt, k):
    value, g = jax.value_and_grad(loss)(p, k)
    updates, opt = tx.update(g, opt, p)
    moved = {name: sum(jnp.abs(x).sum() for x in jax.tree.leaves(g["params"][name]))
             for name in ("block_0", "inputs", "masked_item_head")}
    return optax.apply_updates(p, updates), opt, value, moved

  p, opt, values = params, tx.init(params), []
  for i in range(150):  # fresh masks and negatives every step
    p, opt, v, moved = step(p, opt, jax.random.key(i))
    values.append(float(v))
    if i == 0:  # the encoder, the [mask] vector and the head all get gradients
      assert all(float(m) > 0 for m in moved.values()), moved
  first, last = np.mean(values[:30]), np.mean(values[-30:])
  assert last < 0.65 * first and last < np.log(17) - 0.5, (first, last)  # log(1 + M): a uniform guess
