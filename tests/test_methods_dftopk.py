"""The `dftopk` training method against its formula by hand (2 and 3 stages, every operator branch),
its options and errors; and every soft top-k operator inside LCRON and ARF-v2 (`topk_method`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from cascadejax import metric_writer, trainer
from cascadejax.compare import parse_method
from cascadejax.data.schema import CascadeBatch
from cascadejax.methods import get_method
from cascadejax.methods.arf import ARFv2
from cascadejax.methods.dftopk import DFTopK
from cascadejax.methods.lcron import LCRON
from cascadejax.ops.soft_topk import MEMBERSHIP_OPERATORS, TOPK_OPERATORS
from tests.conftest import tiny_config
from tests.test_ops_soft_topk import BRUTE

NAMES = ("retrieval", "prerank", "rank")


def _batch(num_stages, b=4, n=7, seed=0):
  rng = np.random.default_rng(seed)
  mask = rng.random((b, n)) < 0.8
  mask[:, :5] = True
  mask[-1] = False  # an empty request
  label = rng.normal(size=(b, n)).astype(np.float32)
  batch = CascadeBatch(user={}, items={}, stage=jnp.zeros((b, n), jnp.int32), label=jnp.asarray(label),
                       mask=jnp.asarray(mask))
  return jnp.asarray(rng.normal(size=(num_stages, b, n)) * 1.5, jnp.float32), batch


def _method(cls, num_stages, **options):
  ks = (5, 3, 2) if num_stages == 3 else (4, 3)
  return cls(options, stage_names=NAMES[:num_stages], ks=ks, gt_num=2)


def _truth(label, mask, gt):
  y = np.zeros(label.shape)
  for b in range(label.shape[0]):
    valid = np.flatnonzero(mask[b])
    y[b, sorted(valid, key=lambda i: (-label[b, i], i))[:gt]] = 1
  return y


def _log(x):
  return np.maximum(np.log(np.maximum(x, 1e-300)), -100.0)


def _mean(per_item, mask):
  return float(np.mean([per_item[b][mask[b]].mean() for b in range(len(mask)) if mask[b].any()]))


def _by_hand(scores, batch, ks_relax, ks_joint, temps, w, *, op="dftopk", eps=0.0, as_logit=True):
  """The DFTopK loss in float64 NumPy from the definitions, list by list."""
  scores, mask = np.asarray(scores, np.float64), np.asarray(batch.mask)
  y = _truth(np.asarray(batch.label), mask, 2)

  def output(s, k):  # a logit (dftopk; the sparse mask read as a logit) or a probability
    out = np.zeros(mask.shape)
    for b in np.flatnonzero(mask.any(-1)):
      idx = np.flatnonzero(mask[b])
      x = scores[s, b, idx]
      if op == "dftopk":
        top = np.sort(x)[::-1]
        out[b, idx] = (x - (top[k - 1] + top[k]) / 2) / temps[s]
      else:
        out[b, idx] = BRUTE[op](x, k, temps[s])
    return out

  sig = lambda z: 1 / (1 + np.exp(-z))
  relax = []
  for s, k in enumerate(ks_relax):
    o = output(s, k)
    p = sig(o) if as_logit else o
    relax.append(_mean(-y * _log(p + eps) - (1 - y) * _log(1 - p + eps), mask & (mask.sum(-1, keepdims=True) > k)))
  q = np.prod([sig(output(s, k)) if as_logit else output(s, k) for s, k in enumerate(ks_joint)], axis=0)
  joint = _mean(-y * _log(q + eps) - (1 - y) * _log(1 - q + eps), mask)
  total = sum(0.5 / w[s] ** 2 * relax[s] for s in range(len(w))) + joint + np.sum(np.log(w))
  return total, relax, joint


@pytest.mark.parametrize("num_stages", [2, 3])
@pytest.mark.parametrize("case", [
    dict(),  # the published setting: dftopk, every k = gt_num (tau lowered so the terms are not ~log 2)
    dict(joint_k="stage"),
    dict(topk_method="lapsum"),  # the reference's "lapsumjoint": eps 1e-6
    dict(topk_method="sparse_topk"),  # "googlejoint": the mask read as a logit
    dict(topk_method="sparse_topk", sparse_as_logit=False, eps=1e-6),
    dict(topk_method="threshold"),
])
def test_loss_matches_the_formula_by_hand(num_stages, case):
  scores, batch = _batch(num_stages)
  temps = (0.7, 1.3, 0.9)[:num_stages]
  method = _method(DFTopK, num_stages, temperature=temps, **case)
  w = jnp.array([2.0, 0.5, 1.5][:num_stages])
  total, aux = method.loss({"w": w}, scores, batch, rng=jax.random.key(0))
  op = case.get("topk_method", "dftopk")
  as_logit = op == "dftopk" or (op == "sparse_topk" and case.get("sparse_as_logit", True))
  eps = case.get("eps", 1e-6 if op == "lapsum" else 0.0)
  ks_joint = method.ks if case.get("joint_k") == "stage" else (2,) * num_stages
  want, relax, joint = _by_hand(scores, batch, (2,) * num_stages, ks_joint, temps, np.asarray(w), op=op,
                                eps=eps, as_logit=as_logit)
  np.testing.assert_allclose([float(aux[f"loss/relax_{n}"]) for n in method.stage_names], relax, rtol=2e-5)
  np.testing.assert_allclose(float(aux["loss/joint"]), joint, rtol=2e-5)
  np.testing.assert_allclose(float(total), want, rtol=2e-5)


def test_published_defaults():
  m = _method(DFTopK, 2)
  assert m.temperatures == (500.0, 500.0) and m.relax_k == m.joint_k == (2, 2) and m.eps == 0.0
  assert m.options["threshold_grad"] is True and m.options["weighting"] == "uncertainty"
  np.testing.assert_array_equal(m.init(jax.random.key(0))["w"], np.ones(2))
  assert _method(DFTopK, 2, topk_method="lapsum").temperatures == (5.0, 5.0)
  assert _method(DFTopK, 2, topk_method="lapsum").eps == 1e-6
  assert _method(DFTopK, 2, topk_method="sparse_topk").temperatures == (1.0, 1.0)
  assert _method(DFTopK, 2, temperature="10.0").temperatures == (10.0, 10.0)  # a command-line override
  scores, batch = _batch(2)
  total, aux = m.loss(m.init(None), scores, batch, rng=None)
  want = _by_hand(scores, batch, (2, 2), (2, 2), (500.0, 500.0), np.ones(2))[0]
  np.testing.assert_allclose(float(total), want, rtol=1e-5)


@pytest.mark.parametrize("topk_method", TOPK_OPERATORS)
def test_gradients_are_finite_padding_gets_none_and_empty_batches_are_finite(topk_method):
  scores, batch = _batch(3, seed=2)
  scores = scores.at[:, 0, 1].set(scores[:, 0, 0])  # a tie
  method = _method(DFTopK, 3, topk_method=topk_method, temperature=0.5, relax_k="stage")
  params = method.init(None)
  f = lambda p, s, b: method.loss(p, s, b, rng=None)[0]
  grad = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))  # one compile for both batches (suite time)
  value, (gp, gs) = grad(params, scores, batch)
  assert np.isfinite(value) and np.all(np.isfinite(gs)) and np.all(np.isfinite(gp["w"]))
  assert np.all(np.asarray(gs)[:, ~np.asarray(batch.mask)] == 0)
  assert np.abs(np.asarray(gs)).max() > 0
  empty = batch.replace(mask=jnp.zeros_like(batch.mask))
  value, (gp, gs) = grad(params, scores, empty)
  assert np.isfinite(value) and np.all(np.isfinite(gs)) and np.all(np.isfinite(gp["w"]))


def test_threshold_grad_keeps_the_value_and_moves_the_gradient():
  scores, batch = _batch(2, seed=3)
  f = lambda m: (lambda s: m.loss(m.init(None), s, batch, rng=None)[0])
  a, b = _method(DFTopK, 2, temperature=0.8), _method(DFTopK, 2, temperature=0.8, threshold_grad=False)
  np.testing.assert_allclose(f(a)(scores), f(b)(scores), rtol=1e-6)
  assert np.abs(np.asarray(jax.grad(f(a))(scores) - jax.grad(f(b))(scores))).max() > 1e-3
  fixed = _method(DFTopK, 2, temperature=0.8, weighting="fixed", relax_weights=(0.25, 2.0))
  total, aux = fixed.loss({}, scores, batch, rng=None)
  np.testing.assert_allclose(total, 0.25 * aux["loss/relax_retrieval"] + 2 * aux["loss/relax_prerank"]
                             + aux["loss/joint"], rtol=1e-6)


@pytest.mark.parametrize("options,message", [
    (dict(topk_method="sinkhorn"), r"config\.method\.dftopk\.topk_method: 'sinkhorn' is not one of"),
    (dict(temperature=-1.0), r"config\.method\.dftopk\.temperature must be positive"),
    (dict(temperature="hot"), r"config\.method\.dftopk\.temperature: 'hot' is not numeric"),
    (dict(relax_k="all"), r"config\.method\.dftopk\.relax_k must be 'gt_num', 'stage'"),
    (dict(joint_k=(1, 2, 3)), r"config\.method\.dftopk\.joint_k: expected one value or 2"),
    (dict(weighting="learned"), r"config\.method\.dftopk\.weighting must be"),
    (dict(eps=0.5), r"config\.method\.dftopk\.eps must be 'published' or in \[0, 0.1\)"),
    (dict(eps="tiny"), r"config\.method\.dftopk\.eps must be"),
    (dict(threshold_grad="yes"), r"config\.method\.dftopk\.threshold_grad must be True or False"),
    (dict(sparse_as_logit=1), r"config\.method\.dftopk\.sparse_as_logit must be True or False"),
    (dict(tau=1.0), r"config\.method\.dftopk: unknown option\(s\) \['tau'\]"),
])
def test_bad_options_name_the_config_key(options, message):
  c = tiny_config()
  c.method.name = "dftopk"
  c.method.dftopk = ConfigDict(options)
  with pytest.raises(ValueError, match=message):
    get_method(c)


@pytest.mark.parametrize("name,key", [("lcron", "topk_method"), ("arf_v2", "topk_method"), ("dftopk", "topk_method")])
def test_compare_style_topk_method_values_are_accepted_and_unknown_ones_rejected(name, key):
  for op in TOPK_OPERATORS + (("sort_method",) if name == "arf_v2" else ()):
    c = tiny_config()
    method, options = parse_method(f"{name}:{key}={op}:temperature=0.5")
    c.method.name = method
    c.method[method] = ConfigDict(options)
    assert get_method(c).options[key] == op
  c = tiny_config()
  c.method.name = name
  c.method[name] = ConfigDict(dict(parse_method(f"{name}:{key}=diff_sort")[1]))
  with pytest.raises(ValueError, match=rf"config\.method\.{name}\.{key}: 'diff_sort' is not"):
    get_method(c)


@pytest.mark.parametrize("op", MEMBERSHIP_OPERATORS)
def test_every_membership_operator_inside_lcron_and_arf_v2_is_its_bce_by_hand(op):
  scores, batch = _batch(2, seed=4)
  mask, y = np.asarray(batch.mask), _truth(np.asarray(batch.label), np.asarray(batch.mask), 2)

  def p(s, k, tau):  # the operator's memberships by brute force
    out = np.zeros(mask.shape)
    for b in np.flatnonzero(mask.any(-1)):
      idx = np.flatnonzero(mask[b])
      out[b, idx] = 1.0 if k >= len(idx) else BRUTE[op](np.asarray(scores[s, b, idx], np.float64), k, tau)
    return out

  bce = lambda q, where: _mean(-y * np.log(q + 1e-6) - (1 - y) * np.log(1 - q + 1e-6), where)
  lcron = _method(LCRON, 2, topk_method=op, temperature=(0.6, 1.1))
  _, aux = lcron.loss(lcron.init(None), scores, batch, rng=None)
  many = mask & (mask.sum(-1, keepdims=True) > 2)
  np.testing.assert_allclose(float(aux["loss/relax_prerank"]), bce(p(1, 2, 1.1), many), rtol=2e-5)
  np.testing.assert_allclose(float(aux["loss/joint"]), bce(p(0, 2, 0.6) * p(1, 2, 1.1), mask), rtol=2e-5)
  arf = _method(ARFv2, 2, topk_method=op, topk_temperature=0.8)  # L_relax at m_s = k_s = (4, 3)
  _, aux = arf.loss(arf.init(None), scores, batch, rng=None)
  for s, k in enumerate((4, 3)):
    want = bce(p(s, k, 0.8), mask & (mask.sum(-1, keepdims=True) > k))
    np.testing.assert_allclose(float(aux[f"loss/relax_{NAMES[s]}"]), want, rtol=2e-5)


def test_arf_v2_defaults_and_permutation_topk_methods_keep_the_published_value():
  scores, batch = _batch(2, seed=5)
  base = _method(ARFv2, 2, temperature=2.0)
  same = _method(ARFv2, 2, temperature=2.0, topk_method="neural_sort")
  value = lambda m: float(m.loss(m.init(None), scores, batch, rng=None)[0])
  np.testing.assert_allclose(value(same), value(base), rtol=1e-6)
  other = _method(ARFv2, 2, temperature=2.0, topk_method="soft_sort", topk_temperature=0.5)
  assert abs(value(other) - value(base)) > 1e-3
  assert base.options["topk_method"] == "sort_method" and base.topk_temperatures == base.temperatures


def test_trains_under_jit(tmp_path):
  c = tiny_config(3)
  c.method.name = "dftopk"
  c.method.dftopk = ConfigDict(dict(temperature=1.0))
  c.train.steps, c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 5, 1, 0, 5
  final = trainer.train_and_evaluate(c, str(tmp_path))
  assert 0 <= final["recall_e2e"] <= 1
  train = [r for r in metric_writer.read(str(tmp_path)) if r.get("split") == "train"]
  assert len(train) == 5 and all(np.isfinite(r["loss"]) for r in train)
  assert {"loss/joint", "loss/relax_rank", "weight/rank", "soft_recall/joint"} <= set(train[0])
