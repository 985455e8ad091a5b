"""`icc`: the gated ensemble score and its pairwise loss by brute force, the cutoff's gradient,
the hard-gate limit, masking, training under jit and config errors."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from cascadejax import metric_writer, trainer
from cascadejax.data.schema import CascadeBatch
from cascadejax.methods import get_method
from cascadejax.methods.icc import ICC
from tests.conftest import tiny_config

NAMES = ("retrieval", "prerank", "rank")
KS = {2: (4, 2), 3: (5, 3, 2)}


# The paper's form (Gallagher et al.): stop-gradient cut-offs at each stage's own k, an ungated last
# stage, unit weights, RankNet. The defaults (the LCRON authors' baseline) are tested by hand below
# and against their numbers in tests/test_reference_fidelity.py.
PAPER = dict(cutoff="kth", cutoff_k="stage", gate_last=False, stage_weights=1.0, pair_loss="ranknet",
             temperature=0.4)


def _method(num_stages=2, published=False, **options):
  options = options if published else {**PAPER, **options}
  return ICC(options, stage_names=NAMES[:num_stages], ks=KS[num_stages], gt_num=2)


def _batch(num_stages=2, b=3, n=8, seed=0, empty_last=False):
  rng = np.random.default_rng(seed)
  mask = rng.random((b, n)) < 0.8
  mask[:, :3] = True
  mask[1, 3:] = False   # a list with fewer valid candidates than the first cutoff
  if empty_last:
    mask[-1] = False
  batch = CascadeBatch(user={}, items={}, stage=jnp.zeros((b, n), jnp.int32),
                       label=jnp.asarray(rng.integers(0, 4, (b, n)), jnp.float32), mask=jnp.asarray(mask))
  scores = jnp.asarray(rng.normal(size=(num_stages, b, n)), jnp.float32)
  return scores, batch


def _np_kappa(scores, mask, k, midpoint=False):
  """Per list: the k-th largest valid score (the lowest if fewer), or the k/k+1 midpoint."""
  out = np.zeros(scores.shape[0])
  for b in range(scores.shape[0]):
    valid = np.sort(scores[b][mask[b]])[::-1]
    if len(valid) == 0:
      continue
    kth = valid[min(k, len(valid)) - 1]
    out[b] = 0.5 * (kth + valid[k]) if midpoint and len(valid) > k else kth
  return out[:, None]


def _np_ensemble(scores, mask, ks, temps, weights, score_type="independent", gate_last=False, midpoint=False):
  """F(i) = sum_j w_j (1 - I_j) prod_{l<j} I_l e_j, written out stage by stage."""
  num = scores.shape[0]
  gates = []
  for j in range(num):
    if j == num - 1 and not gate_last:
      gates.append(np.zeros_like(scores[j]))
    else:
      kappa = _np_kappa(scores[j], mask, ks[j], midpoint)
      gate = 1.0 / (1.0 + np.exp(-(scores[j] - kappa) / temps[j]))
      if midpoint:   # lists with at most k valid candidates pass whole
        gate = np.where(mask.sum(-1, keepdims=True) > ks[j], gate, 1.0)
      gates.append(gate)
  exit_score = {"independent": scores, "full": np.cumsum(scores, 0),
                "weak": np.maximum.accumulate(scores, 0)}[score_type]
  total = np.zeros_like(scores[0])
  for j in range(num):
    before = np.prod(gates[:j], axis=0) if j else np.ones_like(scores[0])
    leave = before * gates[j] if (gate_last and j == num - 1) else before * (1.0 - gates[j])
    total += weights[j] * leave * exit_score[j]
  return total


def _np_ranknet(scores, labels, mask):
  total, pairs = 0.0, 0
  for b in range(scores.shape[0]):
    for i, j in itertools.permutations(np.flatnonzero(mask[b]), 2):
      if labels[b, i] > labels[b, j]:
        total += np.log1p(np.exp(-(scores[b, i] - scores[b, j])))
        pairs += 1
  return total / max(pairs, 1)


@pytest.mark.parametrize("num_stages", [2, 3])
@pytest.mark.parametrize("score_type", ["independent", "full", "weak"])
def test_ensemble_and_loss_match_brute_force(num_stages, score_type):
  scores, batch = _batch(num_stages, empty_last=True)
  temps, weights = (0.3, 0.7, 1.1)[:num_stages], (1.0, 2.0, 4.0)[:num_stages]
  method = _method(num_stages, score_type=score_type, temperature=temps, stage_weights=weights)
  s, mask = np.asarray(scores, np.float64), np.asarray(batch.mask)
  want = _np_ensemble(s, mask, KS[num_stages], temps, weights, score_type)
  got, _ = method.ensemble(scores, batch.mask)
  np.testing.assert_allclose(np.where(mask, got, 0), np.where(mask, want, 0), rtol=1e-5, atol=1e-6)
  total, aux = method.loss({}, scores, batch, rng=jax.random.key(0))
  np.testing.assert_allclose(float(total), _np_ranknet(want, np.asarray(batch.label), mask), rtol=1e-5)
  assert aux["loss/ensemble"] == total


@pytest.mark.parametrize("options", [dict(gate_last=True), dict(cutoff="midpoint"),
                                     dict(cutoff_k="gt_num"), dict(cutoff_k=(3, 1, 2))])
def test_cutoff_options_match_brute_force(options):
  scores, batch = _batch(3, seed=3)
  method = _method(3, temperature=0.5, **options)
  ks = {"gt_num": (2, 2, 2), (3, 1, 2): (3, 1, 2)}.get(options.get("cutoff_k"), KS[3])
  want = _np_ensemble(np.asarray(scores, np.float64), np.asarray(batch.mask), ks, (0.5,) * 3, (1.0,) * 3,
                      gate_last=options.get("gate_last", False), midpoint=options.get("cutoff") == "midpoint")
  got, _ = method.ensemble(scores, batch.mask)
  mask = np.asarray(batch.mask)
  np.testing.assert_allclose(np.where(mask, got, 0), np.where(mask, want, 0), rtol=1e-5, atol=1e-6)


def test_exit_probabilities_sum_to_one_and_hard_gates_give_the_exit_stage_score():
  scores, batch = _batch(3, seed=4)
  method = _method(3, temperature=1e-4, cutoff="midpoint")
  ones = jnp.ones_like(scores)
  # With every e_j = 1 and w_j = 1, F is the sum of the exit probabilities.
  np.testing.assert_allclose(_method(3, temperature=0.7).ensemble(ones, batch.mask)[0], 1.0, rtol=1e-6)
  got, _ = method.ensemble(scores, batch.mask)
  s, mask = np.asarray(scores), np.asarray(batch.mask)
  for b, i in zip(*np.nonzero(mask)):
    # Hard gates: each stage tests its own top k among all valid candidates; i exits at the first
    # stage whose test it fails (the last stage otherwise) and keeps that stage's score.
    exit_stage = 2
    for j in range(2):
      if (s[j, b][mask[b]] > s[j, b, i]).sum() >= KS[3][j]:
        exit_stage = j
        break
    np.testing.assert_allclose(got[b, i], s[exit_stage, b, i], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cutoff", ["kth", "kth_grad"])
def test_cutoff_gradient(cutoff):
  scores, batch = _batch(2, seed=5)
  method = _method(2, cutoff=cutoff, temperature=0.5)
  mask, k = np.asarray(batch.mask), KS[2][0]
  # The list position of each list's k-th (or last) valid retrieval score, found outside JAX.
  pos = np.zeros((scores.shape[1], 1), np.int32)
  for b in range(scores.shape[1]):
    valid = np.flatnonzero(mask[b])
    order = valid[np.argsort(-np.asarray(scores[0, b])[valid], kind="stable")]
    pos[b] = order[min(k, len(valid)) - 1]

  def reference(s):
    kappa = jnp.take_along_axis(s[0], jnp.asarray(pos), axis=1)
    if cutoff == "kth":
      kappa = jax.lax.stop_gradient(kappa)
    gate = jax.nn.sigmoid((s[0] - kappa) / 0.5)
    f = (1 - gate) * s[0] + gate * s[1]
    pair = (batch.label[:, :, None] > batch.label[:, None, :]) & batch.mask[:, :, None] & batch.mask[:, None, :]
    losses = jax.nn.softplus(-(f[:, :, None] - f[:, None, :]))
    return jnp.sum(jnp.where(pair, losses, 0.0)) / pair.sum()

  got = jax.grad(lambda s: method.loss({}, s, batch, rng=jax.random.key(0))[0])(scores)
  want = jax.grad(reference)(scores)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  other = "kth_grad" if cutoff == "kth" else "kth"
  differs = jax.grad(lambda s: _method(2, cutoff=other, temperature=0.5).loss({}, s, batch,
                                                                             rng=jax.random.key(0))[0])(scores)
  assert np.abs(np.asarray(differs - got)).max() > 1e-4   # the cutoff's own gradient is not negligible


@pytest.mark.parametrize("pair_loss", ["ranknet", "lambdarank", "lambdaloss", "hinge"])
def test_padding_gets_no_gradient_and_empty_lists_are_finite(pair_loss):
  scores, batch = _batch(3, seed=6)
  method = _method(3, pair_loss=pair_loss, cutoff="kth_grad", gate_last=True)

  def f(s, b):
    return method.loss({}, s, b, rng=jax.random.key(0))[0]

  value, grad = jax.value_and_grad(f)(scores, batch)
  pad = ~np.asarray(batch.mask)
  noisy = batch.replace(label=jnp.where(pad, 9.0, batch.label))
  np.testing.assert_allclose(f(jnp.where(pad, 50.0, scores), noisy), value, rtol=1e-6)
  assert np.all(np.asarray(grad)[:, pad] == 0) and np.all(np.isfinite(grad))
  assert np.abs(np.asarray(grad)[:, ~pad]).sum() > 0
  empty = batch.replace(mask=jnp.zeros_like(batch.mask))
  value, grad = jax.value_and_grad(f)(scores, empty)
  aux = method.loss({}, scores, empty, rng=jax.random.key(0))[1]
  assert value == 0 and np.all(np.asarray(grad) == 0)
  assert all(np.isfinite(v) for v in aux.values())


def _np_slot_pair_bce(scores, labels, mask):
  """Every slot pair p < q: softplus(s_p - s_q) - (s_p - s_q) [y_p > y_q], per list / n^2, mean over lists."""
  per_list = []
  for b in range(scores.shape[0]):
    valid = np.flatnonzero(mask[b])
    if not len(valid):
      continue
    total = 0.0
    for p, q in itertools.combinations(valid, 2):
      x = scores[b, p] - scores[b, q]
      total += np.logaddexp(0.0, x) - x * float(labels[b, p] > labels[b, q])
    per_list.append(total / len(valid) ** 2)
  return float(np.mean(per_list))


@pytest.mark.parametrize("num_stages", [2, 3])
def test_published_defaults_by_hand(num_stages):
  ks = {2: (30, 20), 3: (40, 30, 20)}[num_stages]
  method = ICC({}, stage_names=NAMES[:num_stages], ks=ks, gt_num=10)
  assert method.cutoff_k == {2: (30, 30), 3: (40, 30, 30)}[num_stages]   # the last gate reuses k_{S-1}
  assert method.stage_weights == {2: (1.0, 1.0), 3: (1.0, 2.0, 4.0)}[num_stages]
  assert method.temperatures == (1e-3,) * num_stages
  scores, batch = _batch(num_stages, empty_last=True, seed=8)   # integer labels: ties
  method = _method(num_stages, published=True, temperature=0.3)
  s, mask = np.asarray(scores, np.float64), np.asarray(batch.mask)
  cut = KS[num_stages][:-1] + KS[num_stages][-2:-1]
  want = _np_ensemble(s, mask, cut, (0.3,) * num_stages, method.stage_weights, gate_last=True)
  total, _ = method.loss({}, scores, batch, rng=jax.random.key(0))
  np.testing.assert_allclose(float(total), _np_slot_pair_bce(want, np.asarray(batch.label), mask), rtol=1e-5)
  # Tied pairs count in slot order: reversing the slots changes the loss, not so without ties.
  flip = lambda a: a[..., ::-1]
  flipped = method.loss({}, flip(scores), jax.tree.map(flip, batch), rng=jax.random.key(0))[0]
  assert abs(float(flipped) - float(total)) > 1e-4
  distinct = batch.replace(label=jnp.broadcast_to(jnp.arange(8.0), batch.label.shape))
  a = method.loss({}, scores, distinct, rng=jax.random.key(0))[0]
  b = method.loss({}, flip(scores), jax.tree.map(flip, distinct), rng=jax.random.key(0))[0]
  np.testing.assert_allclose(float(a), float(b), rtol=1e-5)


def test_ranking_the_labels_first_lowers_the_loss():
  _, batch = _batch(3, seed=7)
  method = _method(3)
  aligned = jnp.broadcast_to(batch.label * 2.0, (3,) + batch.label.shape)
  good = method.loss({}, aligned, batch, rng=jax.random.key(0))
  bad = method.loss({}, -aligned, batch, rng=jax.random.key(0))
  assert good[0] < 0.5 * bad[0]
  assert good[1]["soft_recall/retrieval"] > bad[1]["soft_recall/retrieval"]


@pytest.mark.parametrize("num_stages", [2, 3])
def test_trains_under_jit(num_stages, tmp_path):
  c = tiny_config(num_stages)
  c.method.name = "icc"
  c.train.steps, c.train.log_every, c.train.eval_every = 6, 1, 0
  final = trainer.train_and_evaluate(c, str(tmp_path))
  assert 0 <= final["recall_e2e"] <= 1
  train = [r for r in metric_writer.read(str(tmp_path)) if r.get("split") == "train"]
  assert len(train) == 6 and all(np.isfinite(r["loss"]) for r in train)
  assert {"loss/ensemble"} | {f"soft_recall/{n}" for n in NAMES[:num_stages - 1]} <= set(train[0])


@pytest.mark.parametrize("options,message", [
    (dict(temperature=0.0), "config.method.icc.temperature must be positive"),
    (dict(temperature=(1.0, 1.0, 1.0)), r"config.method.icc.temperature: expected one value or 2"),
    (dict(stage_weights="heavy"), r"config.method.icc.stage_weights: 'heavy' is not numeric"),
    (dict(score_type="sum"), "config.method.icc.score_type must be one of"),
    (dict(cutoff="learned"), "config.method.icc.cutoff must be one of"),
    (dict(pair_loss="softmax"), "config.method.icc.pair_loss must be one of"),
    (dict(cutoff_k="all"), "config.method.icc.cutoff_k must be 'gt_num', 'stage' or 2 ints"),
    (dict(cutoff_k=(3, 2, 1)), r"config.method.icc.cutoff_k: expected one value or 2"),
    (dict(cutoff_k=(3, 1.5)), r"config.method.icc.cutoff_k: expected integers"),
    (dict(cutoff_k=(2, 0)), "config.method.icc.cutoff_k: every k must be >= 1"),
    (dict(gate_last="yes"), "config.method.icc.gate_last must be True or False"),
    (dict(topn=0), "config.method.icc.topn must be None or an int >= 1"),
    (dict(sigma=0.1), r"config.method.icc: unknown option\(s\) \['sigma'\]"),
])
def test_bad_options_name_the_config_key(options, message):
  c = tiny_config()
  c.method.name = "icc"
  c.method.icc = ConfigDict(options)
  with pytest.raises(ValueError, match=message):
    get_method(c)
