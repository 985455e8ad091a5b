"""The pointwise sigmoid BCE (`cascadejax.losses.ranking`) against rax and hand-computed NumPy
(values, gradients, masking)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rax

from cascadejax.losses.ranking import sigmoid_bce_loss


# ----------------------------------------------------------------------------- sigmoid_bce_loss

def _bce_inputs(seed=0, shape=(3, 6)):
  rng = np.random.default_rng(seed)
  scores = jnp.asarray(rng.normal(scale=3.0, size=shape), jnp.float32)
  labels = rng.integers(0, 2, size=shape).astype(np.float32)
  labels[0] = rng.uniform(size=shape[-1])  # soft targets in one list
  where = rng.uniform(size=shape) < 0.7
  where[1] = False  # one fully masked list
  weights = rng.uniform(0.5, 2.0, size=shape).astype(np.float32)
  return scores, jnp.asarray(labels), jnp.asarray(where), jnp.asarray(weights)


@pytest.mark.parametrize("reduce_fn", [jnp.mean, jnp.sum, None], ids=["mean", "sum", "none"])
@pytest.mark.parametrize("use_where", [False, True])
@pytest.mark.parametrize("use_weights", [False, True])
def test_sigmoid_bce_matches_rax(reduce_fn, use_where, use_weights):
  """Values and gradients (a random vector-Jacobian product) equal rax.pointwise_sigmoid_loss."""
  scores, labels, where, weights = _bce_inputs()
  kw = dict(where=where if use_where else None, weights=weights if use_weights else None, reduce_fn=reduce_fn)
  ours = lambda s: sigmoid_bce_loss(s, labels, **kw)
  ref = lambda s: rax.pointwise_sigmoid_loss(s, labels, **kw)
  v, vjp = jax.vjp(ours, scores)
  v_ref, vjp_ref = jax.vjp(ref, scores)
  np.testing.assert_allclose(v, v_ref, rtol=1e-5, atol=1e-5)
  cot = jnp.asarray(np.random.default_rng(1).normal(size=np.shape(v)), jnp.float32)
  np.testing.assert_allclose(vjp(cot)[0], vjp_ref(cot)[0], rtol=1e-5, atol=1e-5)
  if use_where and reduce_fn is None:
    np.testing.assert_array_equal(np.asarray(v)[~np.asarray(where)], 0.0)


@pytest.mark.parametrize("scores", [[0.0, 0.0, 0.0, 0.0], [-1.5, 0.3, 2.0, -0.01]], ids=["zero", "random"])
def test_sigmoid_bce_gradient_is_sigmoid_minus_label(scores):
  """d/ds BCE(s, y) = sigmoid(s) - y everywhere, including at s = 0 (e.g. zero-initialized logits)."""
  s = jnp.asarray(scores, jnp.float32)
  y = jnp.array([0.0, 1.0, 0.5, 0.0])
  g = jax.grad(lambda s: sigmoid_bce_loss(s, y, reduce_fn=jnp.sum))(s)
  np.testing.assert_allclose(g, jax.nn.sigmoid(s) - y, atol=1e-6)


def test_sigmoid_bce_all_masked_is_zero_with_finite_gradients():
  """No valid entry: loss 0 for every reduction and zero (not NaN) gradients."""
  scores, labels, _, weights = _bce_inputs()
  none = jnp.zeros(scores.shape, bool)
  for reduce_fn in (jnp.mean, jnp.sum):
    f = lambda s: sigmoid_bce_loss(s, labels, where=none, weights=weights, reduce_fn=reduce_fn)
    assert float(f(scores)) == 0.0
    g = jax.grad(f)(scores)
    assert np.isfinite(g).all() and not np.asarray(g).any()
  np.testing.assert_array_equal(sigmoid_bce_loss(scores, labels, where=none, reduce_fn=None), 0.0)


def test_sigmoid_bce_large_logits_stay_finite():
  """|s| = 100: the confident-right losses are ~0, confident-wrong ones ~100, gradients are +-1 or 0."""
  s = jnp.array([100.0, 100.0, -100.0, -100.0])
  y = jnp.array([1.0, 0.0, 1.0, 0.0])
  per = sigmoid_bce_loss(s, y, reduce_fn=None)
  np.testing.assert_allclose(per, [0.0, 100.0, 100.0, 0.0], atol=1e-6)
  g = jax.grad(lambda s: sigmoid_bce_loss(s, y, reduce_fn=jnp.sum))(s)
  np.testing.assert_allclose(g, [0.0, 1.0, -1.0, 0.0], atol=1e-6)
  np.testing.assert_allclose(sigmoid_bce_loss(s, y), rax.pointwise_sigmoid_loss(s, y), rtol=1e-6)
