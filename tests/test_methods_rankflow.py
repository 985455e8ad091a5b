"""The `rankflow` training method: selections and targets by hand, a numpy reference, stop-gradients,
masking, config errors, and a few jitted training steps for 2 and 3 stages."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from cascadejax import metric_writer, trainer
from cascadejax.data.schema import CascadeBatch
from cascadejax.workdir import restore
from cascadejax.methods import get_method
from cascadejax.methods.rankflow import RankFlow
from tests.conftest import tiny_config

NAMES = ("retrieval", "prerank", "rank")


def _method(num_stages=2, ks=None, gt_num=2, **options):
  ks = ks or ((5, 3, 2) if num_stages == 3 else (4, 2))
  return RankFlow(options, stage_names=NAMES[:num_stages], ks=ks, gt_num=gt_num)


def _batch(num_stages=2, b=4, n=8, seed=0, empty_last=True):
  rng = np.random.default_rng(seed)
  mask = rng.random((b, n)) < 0.8
  mask[:, :4] = True
  if empty_last:
    mask[-1] = False
  batch = CascadeBatch(user={}, items={}, stage=jnp.asarray(rng.integers(0, num_stages + 1, (b, n)), jnp.int32),
                       label=jnp.asarray(rng.normal(size=(b, n)), jnp.float32), mask=jnp.asarray(mask))
  return jnp.asarray(rng.normal(size=(num_stages, b, n)) * 2, jnp.float32), batch


def _np_top(scores, k, among):
  """Indices of the k highest `scores` among the index list `among` (scores are distinct)."""
  return sorted(sorted(among, key=lambda i: -scores[i])[:k])


def _np_reference(method, scores, batch):
  """RankFlow by brute force, one request at a time in plain numpy (float64)."""
  scores, mask = np.asarray(scores, np.float64), np.asarray(batch.mask)
  label, stage = np.asarray(batch.label), np.asarray(batch.stage)
  S, B = scores.shape[:2]
  self_num, self_den = np.zeros(S), np.zeros(S)
  dist_num, dist_den = np.zeros(S), np.zeros(S)
  pair_sum, pair_cnt = np.zeros(S), np.zeros(S)
  for b in range(B):
    valid = list(np.flatnonzero(mask[b]))
    gt = set(_np_top(label[b], method.gt_num, valid))
    cand = [valid]
    for s in range(S):
      cand.append(_np_top(scores[s, b], method.ks[s], cand[s]))
    for s in range(S):
      kind = method.options["labels"]
      for i in cand[s]:
        y = {"ground_truth": i in gt, "exposed": stage[b, i] >= S, "stage": stage[b, i] > s}[kind]
        x = scores[s, b, i]
        self_num[s] += np.log1p(np.exp(x)) - x * y
        self_den[s] += 1
      if s + 1 < S:
        sel = cand[s + 1]
        for i in sel:
          dist_num[s] += (scores[s, b, i] - scores[s + 1, b, i]) ** 2
          dist_den[s] += 1
        top = _np_top(scores[s + 1, b], method.pair_k[s + 1], sel)
        bottom = [i for i in sel if i not in top]
        if top and bottom:
          diff = np.mean(scores[s, b, top]) - np.mean(scores[s, b, bottom])
          pair_sum[s] += np.log1p(np.exp(-diff))
          pair_cnt[s] += 1
  terms = {}
  for s in range(S):
    terms[f"loss/self_{NAMES[s]}"] = self_num[s] / max(self_den[s], 1)
    if s + 1 < S:
      terms[f"loss/distill_{NAMES[s]}"] = dist_num[s] / max(dist_den[s], 1)
      terms[f"loss/pair_{NAMES[s]}"] = pair_sum[s] / max(pair_cnt[s], 1)
  return terms


def test_selections_and_targets_by_hand():
  # One request of 6 slots, the last one padding; ks = (4, 2); ground truth = top 2 labels = items 1, 3.
  s0 = [3.0, 1.0, 2.0, 0.5, -1.0, 9.0]   # stage 1 keeps {0, 2, 1, 3} (item 5 is padding)
  s1 = [0.2, 0.7, 0.1, 0.4, 5.0, 9.0]    # stage 2's top 2 of those: {1, 3}; its bottom: {0, 2}
  label = [0.1, 0.9, 0.0, 0.8, 0.5, 7.0]
  batch = CascadeBatch(user={}, items={}, stage=jnp.zeros((1, 6), jnp.int32), label=jnp.asarray([label]),
                       mask=jnp.asarray([[True] * 5 + [False]]))
  scores = jnp.asarray([[s0], [s1]])
  method = _method(2, ks=(4, 2))
  cand = method.candidates(scores, batch.mask)
  np.testing.assert_array_equal(np.asarray(cand[1])[0], [1, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(np.asarray(cand[2])[0], [0, 1, 0, 1, 0, 0])
  _, aux = method.loss({}, scores, batch, rng=jax.random.key(0))

  def bce(x, y):
    return np.log1p(np.exp(x)) - x * y

  y = [0, 1, 0, 1, 0]
  want_self0 = np.mean([bce(s0[i], y[i]) for i in range(5)])  # stage 1: every valid candidate
  want_self1 = np.mean([bce(s1[i], y[i]) for i in (0, 1, 2, 3)])  # stage 2: stage 1's selection only
  want_distill = np.mean([(s0[i] - s1[i]) ** 2 for i in (0, 1, 2, 3)])  # stage 2 tutors on that selection
  want_pair = np.log1p(np.exp(-((s0[1] + s0[3]) / 2 - (s0[0] + s0[2]) / 2)))
  np.testing.assert_allclose(aux["loss/self_retrieval"], want_self0, rtol=1e-6)
  np.testing.assert_allclose(aux["loss/self_prerank"], want_self1, rtol=1e-6)
  np.testing.assert_allclose(aux["loss/distill_retrieval"], want_distill, rtol=1e-6)
  np.testing.assert_allclose(aux["loss/pair_retrieval"], want_pair, rtol=1e-6)


@pytest.mark.parametrize("num_stages", [2, 3])
@pytest.mark.parametrize("labels", ["ground_truth", "exposed", "stage"])
def test_loss_matches_the_numpy_reference(num_stages, labels):
  scores, batch = _batch(num_stages)
  weights = dict(self_weight=(0.5, 2.0, 1.0)[:num_stages], distill_weight=0.3, pair_weight=1.7)
  for pair_k in ("stage", "gt_num"):
    method = _method(num_stages, labels=labels, pair_k=pair_k, **weights)
    total, aux = jax.jit(lambda s, b, m=method: m.loss({}, s, b, rng=jax.random.key(0)))(scores, batch)
    want = _np_reference(method, scores, batch)
    assert set(aux) == set(want)
    for k, v in want.items():
      np.testing.assert_allclose(float(aux[k]), v, rtol=2e-5, atol=1e-6, err_msg=k)
    want_total = sum(weights["self_weight"][s] * want[f"loss/self_{NAMES[s]}"] for s in range(num_stages))
    want_total += sum(0.3 * want[f"loss/distill_{NAMES[s]}"] + 1.7 * want[f"loss/pair_{NAMES[s]}"]
                      for s in range(num_stages - 1))
    np.testing.assert_allclose(float(total), want_total, rtol=2e-5)


def test_default_options_follow_the_reference_setting():
  method = _method(3)
  assert method.options["labels"] == "ground_truth"
  assert method.weights == {"self": (1.0,) * 3, "distill": (1.0,) * 3, "pair": (1.0,) * 3}
  assert method.pair_k == (5, 3, 2)  # the successor's own selection size
  assert method.init(jax.random.key(0)) == {}


def test_the_tutor_gets_no_gradient_and_the_student_the_distillation_gradient():
  scores, batch = _batch(3, empty_last=False)
  method = _method(3, self_weight=0.0, pair_weight=0.0)  # distillation only
  grad = np.asarray(jax.grad(lambda s: method.loss({}, s, batch, rng=jax.random.key(0))[0])(scores))
  assert np.all(grad[2] == 0)  # the last stage is only ever a tutor here
  cand = [np.asarray(c) for c in method.candidates(scores, batch.mask)]
  s = np.asarray(scores)
  for stage in (0, 1):
    sel = cand[stage + 1]
    want = np.where(sel, 2 * (s[stage] - s[stage + 1]) / sel.sum(), 0.0)
    np.testing.assert_allclose(grad[stage], want, rtol=1e-5, atol=1e-7)


def test_selection_follows_the_current_scores_of_the_previous_stage():
  scores, batch = _batch(2, empty_last=False)
  method = _method(2, distill_weight=0.0, pair_weight=0.0)
  grad = np.asarray(jax.grad(lambda s: method.loss({}, s, batch, rng=jax.random.key(0))[0])(scores))
  chosen = np.asarray(method.candidates(scores, batch.mask)[1])
  assert np.all((grad[1] != 0) == chosen)  # stage 2 learns on stage 1's top k only
  flipped = scores.at[0].multiply(-1.0)  # reverse stage 1's ranking: stage 2 sees other candidates
  grad_flipped = np.asarray(jax.grad(lambda s: method.loss({}, s, batch, rng=jax.random.key(0))[0])(flipped))
  assert not np.array_equal(grad_flipped[1] != 0, grad[1] != 0)


def test_padding_changes_nothing_and_gets_no_gradient():
  scores, batch = _batch(3, empty_last=False)
  method = _method(3)

  def f(s, b):
    return method.loss({}, s, b, rng=jax.random.key(0))[0]

  value, grad = jax.value_and_grad(f)(scores, batch)
  pad = ~np.asarray(batch.mask)
  assert pad.any()
  noisy = batch.replace(label=jnp.where(pad, 100.0, batch.label), stage=jnp.where(pad, 3, batch.stage))
  np.testing.assert_allclose(f(jnp.where(pad, 50.0, scores), noisy), value, rtol=1e-6)
  assert np.all(np.asarray(grad)[:, pad] == 0) and np.all(np.isfinite(grad))


def test_empty_requests_are_finite_and_do_not_count():
  scores, batch = _batch(3)  # the last request has no valid candidate
  method = _method(3)
  full, _ = method.loss({}, scores, batch, rng=jax.random.key(0))
  trimmed, _ = method.loss({}, scores[:, :-1], batch.take(slice(0, -1)), rng=jax.random.key(0))
  np.testing.assert_allclose(full, trimmed, rtol=1e-6)
  empty = batch.replace(mask=jnp.zeros_like(batch.mask))
  value, grad = jax.value_and_grad(lambda s: method.loss({}, s, empty, rng=jax.random.key(0))[0])(scores)
  assert value == 0 and np.all(np.asarray(grad) == 0)


@pytest.mark.parametrize("options,message", [
    (dict(labels="clicks"), "config.method.rankflow.labels must be one of"),
    (dict(distill_weight=-1.0), "config.method.rankflow.distill_weight must be >= 0"),
    (dict(pair_weight=(1.0, 2.0, 3.0)), r"config.method.rankflow.pair_weight: expected one value or 2"),
    (dict(self_weight="high"), "config.method.rankflow.self_weight: 'high' is not numeric"),
    (dict(pair_k="all"), "config.method.rankflow.pair_k must be 'gt_num', 'stage'"),
    (dict(pair_k=(4, 0)), "config.method.rankflow.pair_k: every k must be >= 1"),
    (dict(alpha=0.0), r"config.method.rankflow: unknown option\(s\) \['alpha'\]"),
])
def test_bad_options_name_the_config_key(options, message):
  c = tiny_config()
  c.method.name = "rankflow"
  c.method.rankflow = ConfigDict(options)
  with pytest.raises(ValueError, match=message):
    get_method(c)


@pytest.mark.parametrize("num_stages", [2, 3])
def test_trains_under_jit(num_stages, tmp_path, initial_params):
  c = tiny_config(num_stages)
  c.method.name = "rankflow"
  c.train.steps, c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 6, 1, 0, 6
  final = trainer.train_and_evaluate(c, str(tmp_path))
  assert 0 <= final["recall_e2e"] <= 1
  train = [r for r in metric_writer.read(str(tmp_path)) if r.get("split") == "train"]
  assert len(train) == 6 and all(np.isfinite(r["loss"]) for r in train)
  first_stages = NAMES[:num_stages - 1]
  assert {f"loss/{t}_{n}" for t in ("self", "distill", "pair") for n in first_stages} <= set(train[0])
  assert len(initial_params) == 1  # the run's own initial parameters (no second init to compile)
  exp, state = restore(str(tmp_path))
  start = initial_params[0]
  for n in NAMES[:num_stages]:  # every stage's model learned something
    moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                         state.params["cascade"][f"stage_{n}"], start["cascade"][f"stage_{n}"])
    assert any(jax.tree.leaves(moved)), n
