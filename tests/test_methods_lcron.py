"""The `lcron` training method: its formula by hand, its options, masking, and config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from cascadejax.data.schema import CascadeBatch
from cascadejax.methods import get_method
from cascadejax.methods.lcron import LCRON
from cascadejax.ops import soft_topk
from tests.conftest import tiny_config


def _batch(num_stages=2, b=3, n=7, seed=0, empty_last=True):
  rng = np.random.default_rng(seed)
  mask = rng.random((b, n)) < 0.85
  mask[:, :3] = True
  if empty_last:
    mask[-1] = False
  batch = CascadeBatch(user={}, items={}, stage=jnp.asarray(rng.integers(0, num_stages + 1, (b, n)), jnp.int32),
                       label=jnp.asarray(rng.normal(size=(b, n)), jnp.float32), mask=jnp.asarray(mask))
  scores = jnp.asarray(rng.normal(size=(num_stages, b, n)) * 2, jnp.float32)
  return scores, batch


def _method(num_stages=2, **options):
  names = ("retrieval", "prerank", "rank")[:num_stages]
  ks = (5, 3, 2)[-num_stages:] if num_stages == 3 else (4, 3)
  return LCRON(options, stage_names=names, ks=ks, gt_num=2)


def _np_truth(label, mask, gt):
  y = np.zeros(label.shape, bool)
  for b in range(label.shape[0]):
    valid = np.flatnonzero(mask[b])
    y[b, sorted(valid, key=lambda i: (-label[b, i], i))[:gt]] = True
  return y


def _np_bce(p, y, mask, eps):
  y = y.astype(np.float64)
  loss = -y * np.log(p + eps) - (1 - y) * np.log(1 - p + eps)
  per_list = [loss[b][mask[b]].mean() for b in range(len(mask)) if mask[b].any()]
  return float(np.mean(per_list))


@pytest.mark.parametrize("num_stages", [2, 3])
@pytest.mark.parametrize("topk_method", ["neural_sort", "soft_sort", "threshold"])
def test_loss_matches_the_formula_by_hand(num_stages, topk_method):
  scores, batch = _batch(num_stages)
  temps = (0.5, 2.0, 1.0)[:num_stages]
  method = _method(num_stages, topk_method=topk_method, temperature=temps, joint_k="stage")
  w = jnp.array([2.0, 0.5, 1.5][:num_stages])
  total, aux = method.loss({"w": w}, scores, batch, rng=jax.random.key(0))

  mask, label = np.asarray(batch.mask), np.asarray(batch.label)
  y = _np_truth(label, mask, 2)

  def p(s, k):
    return np.asarray(soft_topk(scores[s], k, where=batch.mask, method=topk_method, temperature=temps[s]),
                      np.float64)

  relax = [_np_bce(p(s, 2), y, mask, 1e-6) for s in range(num_stages)]  # relax_k = gt_num
  joint = _np_bce(np.prod([p(s, method.ks[s]) for s in range(num_stages)], axis=0), y, mask, 1e-6)
  want = sum(0.5 / w[s] ** 2 * relax[s] for s in range(num_stages)) + joint + np.log(np.prod(w))
  np.testing.assert_allclose(float(aux["loss/joint"]), joint, rtol=1e-5)
  np.testing.assert_allclose([float(aux[f"loss/relax_{n}"]) for n in method.stage_names], relax, rtol=1e-5)
  np.testing.assert_allclose(float(total), want, rtol=1e-5)


def test_k_options_and_fixed_weights():
  scores, batch = _batch()
  gt = _method()
  assert gt.relax_k == gt.joint_k == (2, 2)  # the published code's setting
  stage = _method(relax_k="stage", joint_k=(3, 1))
  assert stage.relax_k == (4, 3) and stage.joint_k == (3, 1)
  fixed = _method(weighting="fixed", relax_weights=(0.25, 2.0))
  assert fixed.init(jax.random.key(0)) == {}
  total, aux = fixed.loss({}, scores, batch, rng=jax.random.key(0))
  want = 0.25 * aux["loss/relax_retrieval"] + 2.0 * aux["loss/relax_prerank"] + aux["loss/joint"]
  np.testing.assert_allclose(total, want, rtol=1e-6)
  # With w = 1 the uncertainty form is 0.5 * sum(relax) + joint.
  unc = _method()
  total, aux = unc.loss(unc.init(jax.random.key(0)), scores, batch, rng=jax.random.key(0))
  np.testing.assert_allclose(total, 0.5 * (aux["loss/relax_retrieval"] + aux["loss/relax_prerank"])
                             + aux["loss/joint"], rtol=1e-6)


def test_quirk_options_give_the_plain_bce_form_and_change_the_gradient():
  scores, batch = _batch(seed=3)
  plain = _method(temperature=1.5, normaliser_grad=True, normaliser_eps=0.0, joint_negative="top")
  w = jnp.array([1.0, 1.0])

  def bce_form(s):  # the textbook form: BCE of soft_topk memberships, joint on their product
    where = batch.mask
    y = jnp.asarray(_np_truth(np.asarray(batch.label), np.asarray(where), 2), jnp.float32)
    p = [soft_topk(s[t], 2, where=where, method="neural_sort", temperature=1.5) for t in range(2)]
    bce = lambda q: _list_mean(-y * jnp.log(q + 1e-6) - (1 - y) * jnp.log(1 - q + 1e-6), where)
    return 0.5 * (bce(p[0]) + bce(p[1])) + bce(p[0] * p[1])

  loss = lambda m: (lambda s: m.loss({"w": w}, s, batch, rng=jax.random.key(0))[0])
  np.testing.assert_allclose(loss(plain)(scores), bce_form(scores), rtol=1e-5)
  np.testing.assert_allclose(jax.grad(loss(plain))(scores), jax.grad(bce_form)(scores), rtol=1e-4, atol=1e-6)
  # Each published quirk keeps the value (up to eps) and moves the gradient. (With the normaliser's
  # gradient, 1 - m_s and r_s are the same function, so joint_negative matters with it held only.)
  published = _method(temperature=1.5, normaliser_eps=0.0)
  for quirk in (dict(normaliser_grad=True), dict(joint_negative="top")):
    other = _method(**{**published.options, **quirk})
    np.testing.assert_allclose(loss(other)(scores), loss(published)(scores), rtol=1e-5)
    assert np.abs(np.asarray(jax.grad(loss(other))(scores) - jax.grad(loss(published))(scores))).max() > 1e-4, quirk


def _list_mean(values, where):
  from cascadejax.ops.ranking_utils import list_mean  # noqa: PLC0415
  return list_mean(values, where=where)


@pytest.mark.parametrize("num_stages", [2, 3])
def test_tied_negatives_weigh_their_group_size_in_three_stages_only(num_stages):
  scores, batch = _batch(num_stages, empty_last=False, seed=4)
  tied = batch.replace(label=jnp.round(batch.label * 0.4) - 3.0 * (jnp.arange(7) < 2))   # ties below the top 2
  published = _method(num_stages, temperature=1.0)
  counted = _method(num_stages, temperature=1.0, tie_weighting="count")
  shared = _method(num_stages, temperature=1.0, tie_weighting="fraction")
  relax = lambda m: [float(m.loss(m.init(jax.random.key(0)), scores, tied, rng=jax.random.key(0))[1][k])
                     for k in ("loss/relax_retrieval", "loss/relax_prerank")]
  np.testing.assert_allclose(relax(published), relax(counted if num_stages == 3 else shared), rtol=1e-6)
  assert all(c > f for c, f in zip(relax(counted), relax(shared)))   # the ties weigh more than 1


@pytest.mark.parametrize("topk_method", ["neural_sort", "threshold"])
def test_padding_changes_nothing_and_gets_no_gradient(topk_method):
  scores, batch = _batch(empty_last=False)
  method = _method(topk_method=topk_method, temperature=1.0)
  params = method.init(jax.random.key(0))

  def f(s, b):
    return method.loss(params, s, b, rng=jax.random.key(0))[0]

  value, grad = jax.value_and_grad(f)(scores, batch)
  # Rewrite whatever sits in the padding slots: the loss must not move.
  pad = ~np.asarray(batch.mask)
  noisy = batch.replace(label=jnp.where(pad, 100.0, batch.label))
  np.testing.assert_allclose(f(jnp.where(pad, 50.0, scores), noisy), value, rtol=1e-6)
  assert np.all(np.asarray(grad)[:, pad] == 0)
  assert np.all(np.isfinite(grad))


def test_empty_requests_are_finite_and_do_not_count():
  scores, batch = _batch()  # the last request has no valid candidate
  method = _method(temperature=1.0)
  params = method.init(jax.random.key(0))
  full, _ = method.loss(params, scores, batch, rng=jax.random.key(0))
  trimmed, _ = method.loss(params, scores[:, :-1], batch.take(slice(0, -1)), rng=jax.random.key(0))
  np.testing.assert_allclose(full, trimmed, rtol=1e-6)
  empty = batch.replace(mask=jnp.zeros_like(batch.mask))
  value, grads = jax.value_and_grad(lambda p, s: method.loss(p, s, empty, rng=jax.random.key(0))[0],
                                    argnums=(0, 1))(params, scores)
  assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("topk_method", ["neural_sort", "soft_sort", "threshold"])
def test_scores_that_rank_the_ground_truth_first_have_the_lower_loss(topk_method):
  _, batch = _batch(num_stages=3, empty_last=False)
  method = _method(3, topk_method=topk_method, temperature=0.5)
  params = method.init(jax.random.key(0))
  aligned = jnp.broadcast_to(batch.label * 3, (3,) + batch.label.shape)

  def terms(s):
    return method.loss(params, s, batch, rng=jax.random.key(0))[1]

  good, bad = terms(aligned), terms(-aligned)
  for name in ("loss/joint", "loss/relax_retrieval", "loss/relax_prerank", "loss/relax_rank"):
    assert good[name] < 0.5 * bad[name], name


@pytest.mark.parametrize("options,message", [
    (dict(relax_k="all"), "config.method.lcron.relax_k must be 'gt_num', 'stage'"),
    (dict(joint_k=(1, 2, 3)), r"config.method.lcron.joint_k: expected one value or 2"),
    (dict(temperature=(1.0, -1.0)), "config.method.lcron.temperature must be positive"),
    (dict(topk_method="sinkhorn"), "config.method.lcron.topk_method"),
    (dict(weighting="learned"), "config.method.lcron.weighting"),
    (dict(tau=1.0), r"config.method.lcron: unknown option\(s\) \['tau'\]"),
    (dict(normaliser_grad="no"), "config.method.lcron.normaliser_grad must be True or False"),
    (dict(joint_negative="all"), "config.method.lcron.joint_negative must be 'rest' or 'top'"),
    (dict(tie_weighting="max"), "config.method.lcron.tie_weighting must be one of"),
    (dict(normaliser_eps=-1.0), r"config.method.lcron.normaliser_eps must be in \[0, 0.1\)"),
])
def test_bad_options_name_the_config_key(options, message):
  c = tiny_config()
  c.method.name = "lcron"
  c.method.lcron = ConfigDict(options)
  with pytest.raises(ValueError, match=message):
    get_method(c)
