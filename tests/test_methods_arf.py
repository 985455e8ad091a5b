"""The `arf` and `arf_v2` training methods: a two-item case by hand, a brute-force NeuralSort reference,
the weighting, masking, config errors, and a few jitted training steps for 2 and 3 stages."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from cascadejax import metric_writer, trainer
from cascadejax.data.schema import CascadeBatch
from cascadejax.workdir import restore
from cascadejax.methods import get_method
from cascadejax.methods.arf import ARF, ARFv2
from cascadejax.methods.common import label_permutation, label_split
from cascadejax.ops import soft_topk
from cascadejax.ops.soft_topk import split_mass
from tests.conftest import tiny_config

NAMES = ("retrieval", "prerank", "rank")
EPS = 1e-6


def _method(cls, num_stages=2, gt_num=2, **options):
  ks = (5, 3, 2) if num_stages == 3 else (4, 3)
  return cls(options, stage_names=NAMES[:num_stages], ks=ks, gt_num=gt_num)


def _batch(num_stages=2, b=4, n=7, seed=0, empty_last=True):
  rng = np.random.default_rng(seed)
  mask = rng.random((b, n)) < 0.8
  mask[:, :5] = True
  if empty_last:
    mask[-1] = False
  batch = CascadeBatch(user={}, items={}, stage=jnp.zeros((b, n), jnp.int32),
                       label=jnp.asarray(rng.normal(size=(b, n)), jnp.float32), mask=jnp.asarray(mask))
  return jnp.asarray(rng.normal(size=(num_stages, b, n)), jnp.float32), batch


def _np_neural_sort(s, tau):
  """NeuralSort of one list of valid scores, entry by entry from its definition (float64)."""
  m = len(s)
  P = np.zeros((m, m))
  for r in range(1, m + 1):
    logits = np.array([((m + 1 - 2 * r) * s[j] - sum(abs(s[j] - s[k]) for k in range(m))) / tau
                       for j in range(m)])
    e = np.exp(logits - logits.max())
    P[r - 1] = e / e.sum()
  return P


def _np_reference(method, scores, batch, w):
  """(total, relax[S], global[S]) of ARF / ARF-v2 by brute force, request by request."""
  scores, mask, label = np.asarray(scores, np.float64), np.asarray(batch.mask), np.asarray(batch.label)
  S = scores.shape[0]
  g = method.options["global_size"]
  relax, glob = np.zeros(S), np.zeros(S)
  for s in range(S):
    relax_lists, glob_lists = [], []
    for b in range(mask.shape[0]):
      valid = np.flatnonzero(mask[b])
      if not len(valid):
        continue
      order = sorted(range(len(valid)), key=lambda i: (-label[b, valid[i]], i))  # positions in `valid`
      gt = set(order[:method.gt_num])
      P = _np_neural_sort(scores[s, b, valid], method.temperatures[s])
      m = method.support_m[s]
      if len(valid) > m:
        q = P[:m].sum(0)
        if method.down_term:
          c = P.sum(0) + method.options["normaliser_eps"]
          p, rest = q / c, P[m:].sum(0) / c
          per_item = [-np.log(p[i] + EPS) if i in gt else -np.log(rest[i] + EPS) for i in range(len(valid))]
        else:
          q = q / m if method.options["top_mass"] == "mean" else q
          per_item = [-np.log(q[i] + EPS) if i in gt else 0.0 for i in range(len(valid))]
        relax_lists.append(np.mean(per_item))
      rows = len(valid) if g == "all" else min(g, len(valid))
      per_list = np.mean([-np.log(P[r, order[r]] + EPS) for r in range(rows)])
      glob_lists.append(per_list / (len(valid) if method.options["global_normaliser"] == "list_size" else 1))
    relax[s] = np.mean(relax_lists) if relax_lists else 0.0
    glob[s] = np.mean(glob_lists)
  if w is None:
    return relax.sum() + np.dot(method.global_weights, glob), relax, glob
  return np.sum(relax + 0.5 / np.square(w) * glob + np.log(w)), relax, glob


@pytest.mark.parametrize("cls", [ARF, ARFv2])
def test_two_items_by_hand(cls):
  # n = 2, temperature t: NeuralSort is [[sig(d), sig(-d)], [sig(-d), sig(d)]] with d = (a - b) / t.
  a, b, t = 2.0, 0.5, 1.5
  sig = 1 / (1 + np.exp(-(a - b) / t))
  batch = CascadeBatch(user={}, items={}, stage=jnp.zeros((1, 2), jnp.int32), label=jnp.asarray([[1.0, 0.0]]),
                       mask=jnp.ones((1, 2), bool))
  method = _method(cls, 2, gt_num=1, temperature=t, support_m=1)
  scores = jnp.asarray([[[a, b]], [[b, a]]])  # stage 1 ranks the ground truth first, stage 2 last
  total, aux = method.loss(method.init(jax.random.key(0)), scores, batch, rng=jax.random.key(0))
  # The label order is (item 0, item 1): the permutation cross-entropy is -log P[0, 0] - log P[1, 1],
  # divided by n^2 = 4 (the published normaliser).
  np.testing.assert_allclose(aux["loss/global_retrieval"], -np.log(sig + EPS) / 2, rtol=1e-5)
  np.testing.assert_allclose(aux["loss/global_prerank"], -np.log(1 - sig + EPS) / 2, rtol=1e-5)
  if cls is ARF:  # only the ground truth (item 0) counts: -log(mass of item 0 in row 0), / 2 items
    want = [-np.log(sig + EPS) / 2, -np.log(1 - sig + EPS) / 2]
  else:  # p = (sig, 1 - sig) up to the column sums (both 1 here): BCE over both items
    want = [-np.log(sig + EPS), -np.log(1 - sig + EPS)]
  np.testing.assert_allclose([aux["loss/relax_retrieval"], aux["loss/relax_prerank"]], want, rtol=1e-5)
  # w = 1: every stage adds relax + global / 2.
  np.testing.assert_allclose(total, sum(want) - 0.25 * np.log(sig * (1 - sig)), rtol=1e-4)
  np.testing.assert_allclose([aux["loss/retrieval"], aux["loss/prerank"]],
                             [want[0] - 0.25 * np.log(sig), want[1] - 0.25 * np.log(1 - sig)], rtol=1e-4)


@pytest.mark.parametrize("cls", [ARF, ARFv2])
@pytest.mark.parametrize("num_stages", [2, 3])
def test_loss_matches_the_brute_force_reference(cls, num_stages):
  scores, batch = _batch(num_stages)
  temps = (0.7, 2.0, 1.3)[:num_stages]
  old = dict(global_normaliser="rows", **(dict(normaliser_eps=0.0) if cls is ARFv2 else dict(top_mass="sum")))
  options = [dict(temperature=temps), dict(temperature=temps, support_m="gt_num", global_size=3),
             dict(temperature=temps, weighting="fixed", global_weights=(0.5, 2.0, 1.0)[:num_stages]),
             dict(temperature=temps, **old)]
  for opts in options:
    method = _method(cls, num_stages, **opts)
    w = None if opts.get("weighting") == "fixed" else np.array([1.5, 0.8, 1.2][:num_stages])
    params = {} if w is None else {"w": jnp.asarray(w, jnp.float32)}
    total, aux = jax.jit(lambda p, s, b, m=method: m.loss(p, s, b, rng=jax.random.key(0)))(params, scores, batch)
    want_total, relax, glob = _np_reference(method, scores, batch, w)
    got_relax = [float(aux[f"loss/relax_{n}"]) for n in method.stage_names]
    got_glob = [float(aux[f"loss/global_{n}"]) for n in method.stage_names]
    np.testing.assert_allclose(got_relax, relax, rtol=1e-4, err_msg=str(opts))
    np.testing.assert_allclose(got_glob, glob, rtol=1e-4, err_msg=str(opts))
    np.testing.assert_allclose(float(total), want_total, rtol=1e-4, err_msg=str(opts))


def test_defaults_are_the_published_baseline_setting():
  for cls in (ARF, ARFv2):
    method = _method(cls, 3)
    assert method.temperatures == (200.0,) * 3  # LCRON's ARF scripts: NeuralSort, tau = 200
    assert method.support_m == (5, 3, 2)  # m_s = each stage's own selection size
    assert method.options["global_size"] == "all" and method.options["weighting"] == "uncertainty"
    np.testing.assert_array_equal(method.init(jax.random.key(0))["w"], np.ones(3))
  assert not ARF.down_term and ARFv2.down_term


def test_split_mass_is_the_neural_sort_soft_topk_and_its_gradient_option():
  scores, batch = _batch(2)
  from cascadejax.ops import neural_sort
  for s, m in enumerate((3, 2)):
    perm = neural_sort(scores[s], temperature=0.9, where=batch.mask)
    want = soft_topk(scores[s], m, where=batch.mask, method="neural_sort", temperature=0.9)
    p, p_out = split_mass(perm, m)
    np.testing.assert_allclose(p_out, np.where(batch.mask, 1 - want, 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p, want, rtol=1e-6, atol=1e-7)
  # A held normaliser changes the gradient, not the value (up to eps).
  f = lambda x, grad: split_mass(neural_sort(x, temperature=0.9, where=batch.mask), 3, normaliser_grad=grad)[0][0, 0]
  np.testing.assert_allclose(f(scores[0], False), f(scores[0], True), rtol=1e-6)
  g_held, g_full = (jax.grad(f)(scores[0], flag) for flag in (False, True))
  assert np.abs(np.asarray(g_held - g_full)).max() > 1e-3


def test_label_permutation_spreads_ties_and_label_split_shares_or_counts_them():
  label = jnp.asarray([[0.3, 0.9, 0.3, 5.0, 0.1]])
  where = jnp.asarray([[True, True, True, False, True]])
  np.testing.assert_allclose(label_permutation(label, where=where)[0], [
      [0, 1, 0, 0, 0], [0.5, 0, 0.5, 0, 0], [0.5, 0, 0.5, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]])
  top, rest = label_split(label, 2, where=where, count_ties=False)   # the tie straddles rank 2
  np.testing.assert_allclose(top[0], [0.5, 1, 0.5, 0, 0])
  np.testing.assert_allclose(rest[0], [0.5, 0, 0.5, 0, 1])
  top, rest = label_split(label, 1, where=where, count_ties=True)   # thresholded: each tie weighs 2
  np.testing.assert_allclose(top[0], [0, 1, 0, 0, 0])
  np.testing.assert_allclose(rest[0], [2, 0, 2, 0, 1])


@pytest.mark.parametrize("cls", [ARF, ARFv2])
def test_padding_changes_nothing_and_gets_no_gradient(cls):
  scores, batch = _batch(3, empty_last=False)
  method = _method(cls, 3, temperature=1.0)
  params = {"w": jnp.asarray([1.5, 0.8, 1.2])}

  def f(s, b):
    return method.loss(params, s, b, rng=jax.random.key(0))[0]

  value, grad = jax.value_and_grad(f)(scores, batch)
  pad = ~np.asarray(batch.mask)
  assert pad.any()
  noisy = batch.replace(label=jnp.where(pad, 100.0, batch.label))
  np.testing.assert_allclose(f(jnp.where(pad, 50.0, scores), noisy), value, rtol=1e-6)
  assert np.all(np.asarray(grad)[:, pad] == 0) and np.all(np.isfinite(grad))


@pytest.mark.parametrize("cls", [ARF, ARFv2])
def test_empty_and_short_requests(cls):
  scores, batch = _batch(2)  # the last request has no valid candidate
  method = _method(cls, 2, temperature=1.0)
  params = method.init(jax.random.key(0))
  full, _ = method.loss(params, scores, batch, rng=jax.random.key(0))
  trimmed, _ = method.loss(params, scores[:, :-1], batch.take(slice(0, -1)), rng=jax.random.key(0))
  np.testing.assert_allclose(full, trimmed, rtol=1e-6)
  empty = batch.replace(mask=jnp.zeros_like(batch.mask))
  value, grads = jax.value_and_grad(lambda p, s: method.loss(p, s, empty, rng=jax.random.key(0))[0],
                                    argnums=(0, 1))(params, scores)
  assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  # A request with no more than m_s candidates has nothing to select: no L_relax,s at all.
  short = batch.replace(mask=jnp.zeros_like(batch.mask).at[:, :4].set(True))  # 4 <= m_retrieval = 4
  _, aux = method.loss(params, scores, short, rng=jax.random.key(0))
  assert aux["loss/relax_retrieval"] == 0 and aux["loss/relax_prerank"] > 0


@pytest.mark.parametrize("cls", [ARF, ARFv2])
def test_scores_in_label_order_have_the_lower_loss(cls):
  _, batch = _batch(3, empty_last=False)
  # arf_v2 at m_s = k_s > gt_num would also punish the non-ground-truth items that must fill the
  # rest of a perfect top m_s (its down term); at m_s = gt_num a perfect order is its optimum.
  method = _method(cls, 3, temperature=0.5, support_m="stage" if cls is ARF else "gt_num")
  params = method.init(jax.random.key(0))
  aligned = jnp.broadcast_to(batch.label * 3, (3,) + batch.label.shape)
  good = method.loss(params, aligned, batch, rng=jax.random.key(0))[1]
  bad = method.loss(params, -aligned, batch, rng=jax.random.key(0))[1]
  for n in NAMES:
    assert good[f"loss/relax_{n}"] < 0.5 * bad[f"loss/relax_{n}"], n
    assert good[f"loss/global_{n}"] < 0.5 * bad[f"loss/global_{n}"], n


@pytest.mark.parametrize("name", ["arf", "arf_v2"])
@pytest.mark.parametrize("options,message", [
    (dict(sort_method="sinkhorn"), "sort_method: 'sinkhorn' is not one of"),
    (dict(temperature=(1.0, -1.0)), "temperature must be positive"),
    (dict(support_m="all"), "support_m must be 'gt_num', 'stage'"),
    (dict(support_m=(3, 2, 1)), "support_m: expected one value or 2"),
    (dict(global_size=0), "global_size must be 'all' or an int >= 1"),
    (dict(global_size="top"), "global_size must be 'all' or an int >= 1"),
    (dict(weighting="learned"), "weighting must be 'uncertainty' or 'fixed'"),
    (dict(global_weights=(1.0, "x")), "global_weights: .* is not numeric"),
    (dict(eps=0.0), r"eps must be in \(0, 0.1\)"),
    (dict(global_normaliser="n"), "global_normaliser must be 'list_size' or 'rows'"),
    (dict(tau=1.0), r"unknown option\(s\) \['tau'\]"),
])
def test_bad_options_name_the_config_key(name, options, message):
  c = tiny_config()
  c.method.name = name
  c.method[name] = ConfigDict(options)
  with pytest.raises(ValueError, match=rf"config\.method\.{name}(\.|: )" + message):
    get_method(c)


# Each method at one depth: the two share every code path but L_relax (suite time).
@pytest.mark.parametrize("name,num_stages", [("arf", 2), ("arf_v2", 3)])
def test_trains_under_jit(name, num_stages, tmp_path, initial_params):
  c = tiny_config(num_stages)
  c.method.name = name
  c.train.steps, c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 6, 1, 0, 6
  final = trainer.train_and_evaluate(c, str(tmp_path))
  assert 0 <= final["recall_e2e"] <= 1
  train = [r for r in metric_writer.read(str(tmp_path)) if r.get("split") == "train"]
  assert len(train) == 6 and all(np.isfinite(r["loss"]) for r in train)
  stages = NAMES[:num_stages]
  logged = {f"{t}{n}" for t in ("loss/relax_", "loss/global_", "weight/", "soft_recall/") for n in stages}
  assert logged <= set(train[0])
  assert len(initial_params) == 1  # the run's own initial parameters (no second init to compile)
  exp, state = restore(str(tmp_path))
  start = initial_params[0]
  for n in NAMES[:num_stages]:  # every stage's model learned something
    moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                         state.params["cascade"][f"stage_{n}"], start["cascade"][f"stage_{n}"])
    assert any(jax.tree.leaves(moved)), n
  w = np.asarray(state.params["method"]["w"])
  assert w.shape == (num_stages,) and np.all(w != 1.0)  # the stage weights are learned with the models
