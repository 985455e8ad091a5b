"""Ranking losses against hand-computed values, brute-force NumPy references (double loops over
pairs, float64) and rax (values and gradients to 1e-5, with masks, weights and ties); invariance to
item order; zero, finite results on masked lists. The pair kernel's paths and memory are in
tests/test_ops_lambdarank.py."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rax

from cascadejax import losses
from cascadejax.ops.lambdarank import PairSpec, count_label_pairs, tiled_pairwise_loss

RTOL, ATOL = 1e-5, 1e-6


# ----------------------------------------------------------------------------- brute-force references

def np_ranks(scores, valid):
  """1-based ranks: valid items first, by descending score, ties by index."""
  order = sorted(range(len(scores)), key=lambda i: (not valid[i], -scores[i], i))
  ranks = np.empty(len(scores), int)
  ranks[order] = np.arange(1, len(scores) + 1)
  return ranks


def disc(r):
  return 1.0 / math.log2(1.0 + r)


def np_pairwise(scores, labels, where, weights, pair_weight, pair_loss):
  """(sum, number of pairs, per-item sums) of w_i * pair_weight(i, j, ...) * pair_loss(s_i - s_j)."""
  scores, labels = np.asarray(scores, np.float64), np.asarray(labels, np.float64)
  where = np.ones(scores.shape, bool) if where is None else np.asarray(where, bool)
  weights = np.ones(scores.shape) if weights is None else np.asarray(weights, np.float64)
  per_item, total, count = np.zeros(scores.shape), 0.0, 0
  for idx in np.ndindex(scores.shape[:-1]):
    s, y, v, w = scores[idx], labels[idx], where[idx], weights[idx]
    ranks = np_ranks(s, v)
    for i in range(len(s)):
      for j in range(len(s)):
        if v[i] and v[j] and y[i] > y[j]:
          term = w[i] * pair_weight(y, v, w, ranks, i, j) * pair_loss(s[i] - s[j])
          per_item[idx + (i,)] += term
          total += term
          count += 1
  return total, count, per_item


def np_gains(y, v, w, topn, normalize):
  gains = (2.0 ** y - 1.0) * w
  if normalize:
    best = sorted(gains[v], reverse=True)[:topn]
    idcg = sum(g * disc(r + 1) for r, g in enumerate(best))
    gains = gains / (idcg if idcg != 0 else 1.0)
  return gains


def lambdarank_weight(topn, normalize):
  def weight(y, v, w, ranks, i, j):
    g = np_gains(y, v, w, topn, normalize)
    d = lambda r: disc(r) if topn is None or r <= topn else 0.0
    return len(y) * abs(g[i] - g[j]) * abs(d(ranks[i]) - d(ranks[j]))
  return weight


def ndcg2_weight(topn, normalize, mu=None):
  def weight(y, v, w, ranks, i, j):
    g = np_gains(y, v, w, topn, normalize)
    gap = abs(ranks[i] - ranks[j])
    delta = abs(disc(gap) - disc(gap + 1))
    worst = max(ranks[i], ranks[j])
    kappa = 1.0 / (1.0 - disc(worst)) if topn is not None and worst > topn else 1.0
    lam = len(y) * abs(g[i] - g[j]) * delta * kappa
    return lam if mu is None else mu * lam + lambdarank_weight(topn, normalize)(y, v, w, ranks, i, j)
  return weight


logistic = lambda t: math.log1p(math.exp(-t))
hinge = lambda m: (lambda t: max(0.0, m - t))
unit = lambda *args: 1.0


def inputs(seed=0, shape=(2, 3, 7), ties=True):
  """Scores with ties, graded labels with ties, a mask with an all-masked and a one-valid list, weights."""
  rng = np.random.default_rng(seed)
  scores = rng.normal(size=shape).astype(np.float32)
  labels = rng.integers(0, 4, size=shape).astype(np.float32)
  where = rng.random(shape) < 0.75
  where[0, 0] = False
  where[1, 2] = np.arange(shape[-1]) == 3
  if ties and shape[-1] >= 6:
    scores[..., 1] = scores[..., 4]
    scores[0, 1, 2] = scores[0, 1, 5]
  weights = rng.uniform(0.5, 2.0, size=shape).astype(np.float32)
  return tuple(map(jnp.asarray, (scores, labels, where, weights)))


# ----------------------------------------------------------------------------- hand-checked values

def test_hand_computed_values():
  """Three items, scores (2, 0, 1), labels (1, 0, 2): every loss written out by hand."""
  s, y = jnp.array([2.0, 0.0, 1.0]), jnp.array([1.0, 0.0, 2.0])
  got = jax.jit(lambda s, y: {
      "ranknet": losses.ranknet_loss(s, y), "hinge": losses.hinge_loss(s, y),
      "hinge 2.5": losses.hinge_loss(s, y, margin=2.5), "bpr": losses.bpr_loss(s, y),
      "lambdarank": losses.lambdarank_loss(s, y), "mse": losses.mse_loss(s, y),
      "softmax": losses.softmax_loss(jnp.log(jnp.array([1.0, 2.0, 3.0])), jnp.array([0.0, 1.0, 2.0]))})(s, y)
  sp = lambda t: math.log1p(math.exp(-t))   # log(1 + exp(-t))
  # pairs with y_i > y_j: (2, 0), (2, 1), (0, 1)
  np.testing.assert_allclose(got["ranknet"], (sp(-1) + sp(1) + sp(2)) / 3, rtol=RTOL)
  np.testing.assert_allclose(got["hinge"], (2.0 + 0.0 + 0.0) / 3, rtol=RTOL)
  np.testing.assert_allclose(got["hinge 2.5"], (3.5 + 1.5 + 0.5) / 3, rtol=RTOL)
  # BPR: positives {0, 2} against the negative {1}
  np.testing.assert_allclose(got["bpr"], (sp(2) + sp(1)) / 2, rtol=RTOL)
  # LambdaRank: ranks (1, 3, 2); gains (1, 0, 3); maxDCG = 3 + 1 / log2(3); n = 3
  idcg = 3.0 + 1.0 / math.log2(3)
  d = {0: 1.0, 1: 0.5, 2: 1.0 / math.log2(3)}
  want = 3 * (2 / idcg * abs(d[2] - d[0]) * sp(-1) + 3 / idcg * abs(d[2] - d[1]) * sp(1)
              + 1 / idcg * abs(d[0] - d[1]) * sp(2)) / 3
  np.testing.assert_allclose(got["lambdarank"], want, rtol=RTOL)
  # softmax: p = (1, 2, 3) / 6 for scores log(1, 2, 3); targets (0, 1, 2): log 3 + 2 log 2
  np.testing.assert_allclose(got["softmax"], math.log(12.0), rtol=RTOL)
  np.testing.assert_allclose(got["mse"], (1 + 0 + 1) / 3, rtol=RTOL)


# ----------------------------------------------------------------------------- brute force

BRUTE = {
    "ranknet": (losses.ranknet_loss, unit, logistic, False),
    "bpr": (losses.bpr_loss, unit, logistic, True),
    "hinge": (functools.partial(losses.hinge_loss, margin=0.7), unit, hinge(0.7), False),
    "lambdarank": (losses.lambdarank_loss, lambdarank_weight(None, True), logistic, False),
    "lambdarank@2": (functools.partial(losses.lambdarank_loss, topn=2), lambdarank_weight(2, True), logistic, False),
    "lambdarank@5 dcg": (functools.partial(losses.lambdarank_loss, topn=5, normalize=False),
                         lambdarank_weight(5, False), logistic, False),
    "ndcg2": (functools.partial(losses.lambdaloss, scheme="ndcg2"), ndcg2_weight(None, True), logistic, False),
    "ndcg2++@3": (functools.partial(losses.lambdaloss, topn=3, mu=4.0), ndcg2_weight(3, True, mu=4.0), logistic, False),
}


@pytest.fixture(scope="module")
def brute_results():
  """Every BRUTE loss reduced by mean and None, in one compiled function."""
  s, y, where, w = inputs(seed=1)
  run = jax.jit(lambda s, y, where, w: {
      name: tuple(fn(s, y, where=where, weights=w, reduce_fn=r) for r in (jnp.mean, None))
      for name, (fn, *_) in BRUTE.items()})
  return (s, y, where, w), run(s, y, where, w)


@pytest.mark.parametrize("name", sorted(BRUTE))
def test_pairwise_losses_match_bruteforce(name, brute_results):
  """Mean and per-item losses equal a double loop over the pairs (float64), with masks and weights."""
  (s, y, where, w), results = brute_results
  _, pair_weight, pair_loss, binary = BRUTE[name]
  ref_y = (np.asarray(y) > 0).astype(float) if binary else y
  total, count, per_item = np_pairwise(s, ref_y, where, w, pair_weight, pair_loss)
  mean, unreduced = results[name]
  np.testing.assert_allclose(mean, total / count, rtol=RTOL)
  np.testing.assert_allclose(unreduced, per_item, rtol=RTOL, atol=ATOL)


def test_count_label_pairs_matches_bruteforce():
  s, y, where, _ = inputs(seed=2)
  want = np.zeros(y.shape[:-1], int)
  for idx in np.ndindex(want.shape):
    v, lab = np.asarray(where[idx]), np.asarray(y[idx])
    want[idx] = sum(v[i] and v[j] and lab[i] > lab[j] for i in range(y.shape[-1]) for j in range(y.shape[-1]))
  np.testing.assert_array_equal(count_label_pairs(y, where=where), want)
  assert int(count_label_pairs(jnp.array([3.0, 1.0, 1.0, 0.0]))) == 5


# ----------------------------------------------------------------------------- rax as oracle

def _dcg_plus_dcg2(topn, normalize, mu):
  def weight(scores, labels, **kw):
    return (rax.dcg_lambdaweight(scores, labels, topn=topn, normalize=normalize, **kw)
            + mu * rax.dcg2_lambdaweight(scores, labels, topn=topn, normalize=normalize, **kw))
  return weight


def _lw(fn, **kw):
  return functools.partial(rax.pairwise_logistic_loss, lambdaweight_fn=functools.partial(fn, **kw))


RAX = {
    "sigmoid_bce": (losses.sigmoid_bce_loss, rax.pointwise_sigmoid_loss, "unit"),
    "mse": (losses.mse_loss, rax.pointwise_mse_loss, None),
    "softmax": (losses.softmax_loss, rax.softmax_loss, None),
    "softmax normalized": (functools.partial(losses.softmax_loss, normalize_labels=True),
                           functools.partial(rax.softmax_loss, label_fn=rax.utils.normalize_probabilities), "positive"),
    "ranknet": (losses.ranknet_loss, rax.pairwise_logistic_loss, None),
    "bpr": (losses.bpr_loss, rax.pairwise_logistic_loss, "binary"),
    "hinge": (losses.hinge_loss, rax.pairwise_hinge_loss, None),
    "lambdarank ndcg": (losses.lambdarank_loss, _lw(rax.dcg_lambdaweight, normalize=True), None),
    "lambdarank dcg": (functools.partial(losses.lambdarank_loss, normalize=False), _lw(rax.dcg_lambdaweight), None),
    "lambdarank ndcg@2": (functools.partial(losses.lambdarank_loss, topn=2),
                          _lw(rax.dcg_lambdaweight, normalize=True, topn=2), None),
    "lambdarank dcg@5": (functools.partial(losses.lambdarank_loss, topn=5, normalize=False),
                         _lw(rax.dcg_lambdaweight, topn=5), None),
    "ndcg2": (functools.partial(losses.lambdaloss, scheme="ndcg2"), _lw(rax.dcg2_lambdaweight, normalize=True), None),
    "ndcg2 dcg@3": (functools.partial(losses.lambdaloss, scheme="ndcg2", topn=3, normalize=False),
                    _lw(rax.dcg2_lambdaweight, topn=3), None),
    "ndcg2++": (losses.lambdaloss, functools.partial(
        rax.pairwise_logistic_loss, lambdaweight_fn=_dcg_plus_dcg2(None, True, 10.0)), None),
    "ndcg2++@4 mu=3": (functools.partial(losses.lambdaloss, topn=4, mu=3.0), functools.partial(
        rax.pairwise_logistic_loss, lambdaweight_fn=_dcg_plus_dcg2(4, True, 3.0)), None),
}


def _rax_labels(y, kind):
  if kind == "unit":
    return y / 3.0
  if kind == "positive":   # every list gets a positive label: rax's normalisation of all-zero lists differs
    return y.at[..., 3].set(1.0)
  return y


UNMASKED = ["sigmoid_bce", "softmax", "ranknet", "lambdarank ndcg@2", "ndcg2++"]   # also without where/weights


def _value_and_grads(fns, s, y, where, w, labels_for=lambda name, y: y):
  """{name: [(value, grad) with where and weights, (value, grad) without them if in UNMASKED]}, one compile."""
  def run(s, y, where, w):
    out = {}
    for name, fn in fns.items():
      yy = labels_for(name, y)
      out[name] = [jax.value_and_grad(lambda s: fn(s, yy, where=where, weights=w))(s)]
      if name in UNMASKED:
        out[name].append(jax.value_and_grad(lambda s: fn(s, yy))(s))
    return out
  return jax.jit(run)(s, y, where, w)


@pytest.fixture(scope="module")
def rax_results():
  s, y, where, w = inputs(seed=3, shape=(2, 3, 8))
  ours = _value_and_grads({k: v[0] for k, v in RAX.items()}, s, y, where, w,
                          lambda name, y: _rax_labels(y, RAX[name][2]))
  rax_y = lambda name, y: ((y > 0).astype(jnp.float32) if RAX[name][2] == "binary"
                           else _rax_labels(y, RAX[name][2]))
  theirs = _value_and_grads({k: v[1] for k, v in RAX.items()}, s, y, where, w, rax_y)
  return ours, theirs


@pytest.mark.parametrize("name", sorted(RAX))
def test_matches_rax_values_and_gradients(name, rax_results):
  """Value and gradient equal rax's with masks (incl. an all-masked list), weights and tied scores/labels
  (and, for UNMASKED, without mask and weights)."""
  ours, theirs = rax_results
  for got, want in zip(ours[name], theirs[name]):
    np.testing.assert_allclose(got[0], want[0], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got[1], want[1], rtol=RTOL, atol=ATOL)
    assert np.abs(np.asarray(want[1])).max() > 1e-3   # a real comparison, not zeros against zeros


UNREDUCED = ["ranknet", "hinge", "lambdarank ndcg@2", "ndcg2++@4 mu=3", "softmax"]


@pytest.fixture(scope="module")
def unreduced_results():
  """For UNREDUCED: (ours, rax) sums, unreduced outputs, and value and gradient of the unreduced output
  under an uneven cotangent (rax's pair output summed per better-labelled item)."""
  s, y, where, w = inputs(seed=4)
  n = s.shape[-1]
  ct = jnp.asarray(np.random.default_rng(0).uniform(0.0, 2.0, size=s.shape), jnp.float32)

  def run(which):
    def f(s):
      out = {}
      for name in UNREDUCED:
        fn, pairwise = RAX[name][which], name != "softmax"
        rows = (lambda o: o.reshape(o.shape[:-1] + (n, n)).sum(-1)) if pairwise and which else (lambda o: o)
        c = ct[..., 0] if name == "softmax" else ct
        unreduced = lambda s: rows(fn(s, y, where=where, weights=w, reduce_fn=None))
        out[name] = (fn(s, y, where=where, weights=w, reduce_fn=jnp.sum), unreduced(s),
                     jax.value_and_grad(lambda s: (unreduced(s) * c).sum())(s))
      return out
    return jax.jit(f)(s)

  return run(0), run(1)


@pytest.mark.parametrize("name", UNREDUCED)
def test_matches_rax_sum_and_unreduced(name, unreduced_results):
  """reduce_fn=jnp.sum equals rax's; reduce_fn=None equals rax's per-pair output summed per better item,
  and so does its gradient under an uneven cotangent (the per-item backward pass)."""
  ours, theirs = unreduced_results
  got, want = ours[name], theirs[name]
  np.testing.assert_allclose(got[0], want[0], rtol=RTOL)
  np.testing.assert_allclose(got[1], want[1], rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(got[2][0], want[2][0], rtol=RTOL)
  np.testing.assert_allclose(got[2][1], want[2][1], rtol=RTOL, atol=ATOL)
  assert np.abs(np.asarray(want[2][1])).max() > 1e-3


# ----------------------------------------------------------------------------- invariances, masks

ALL = {
    "sigmoid_bce": lambda s, y, **kw: losses.sigmoid_bce_loss(s, y / 3.0, **kw),
    "mse": losses.mse_loss, "softmax": losses.softmax_loss, "ranknet": losses.ranknet_loss,
    "bpr": losses.bpr_loss, "hinge": losses.hinge_loss, "lambdarank": losses.lambdarank_loss,
    "lambdarank@2": functools.partial(losses.lambdarank_loss, topn=2),
    "lambdaloss": losses.lambdaloss, "lambdaloss@3": functools.partial(losses.lambdaloss, topn=3),
}


@jax.jit
def all_losses(s, y, where, w):
  """{name: (value, grad)} of the mean loss for every loss in ALL; one compilation per input shape."""
  return {name: jax.value_and_grad(lambda s: fn(s, y, where=where, weights=w))(s) for name, fn in ALL.items()}


def test_invariant_to_item_order():
  """Permuting the items (scores, labels, mask, weights together) permutes the gradient, keeps the loss."""
  s, y, where, w = inputs(seed=5, ties=False)
  perm = np.random.default_rng(6).permutation(s.shape[-1])
  base = all_losses(s, y, where, w)
  permuted = all_losses(s[..., perm], y[..., perm], where[..., perm], w[..., perm])
  for name in ALL:
    np.testing.assert_allclose(permuted[name][0], base[name][0], rtol=RTOL, err_msg=name)
    np.testing.assert_allclose(permuted[name][1], base[name][1][..., perm], rtol=RTOL, atol=ATOL, err_msg=name)
    assert np.abs(np.asarray(base[name][1])).max() > 1e-3


def test_masked_lists_are_zero_and_gradients_finite():
  """All-masked batches give exactly 0 and zero gradients; extreme and tied scores give finite gradients;
  padding never forms pairs (its scores and labels do not matter)."""
  s, y, where, w = inputs(seed=7)
  none = jnp.zeros_like(where)
  for name, (loss, grad) in all_losses(s, y, none, w).items():
    assert float(loss) == 0.0 and not np.asarray(grad).any(), name
  extreme = jnp.where(jnp.arange(s.shape[-1]) % 2 == 0, 1e4, -1e4) * jnp.ones_like(s)
  for scores in (extreme, jnp.zeros_like(s), s):
    for name, (loss, grad) in all_losses(scores, y, where, w).items():
      assert np.isfinite(loss) and np.isfinite(np.asarray(grad)).all(), name
      assert not np.asarray(grad)[~np.asarray(where)].any(), name
  clean = all_losses(s, y, where, w)
  junk = all_losses(jnp.where(where, s, 1e3), jnp.where(where, y, 3.0), where, w)
  for name in ALL:
    np.testing.assert_allclose(junk[name][0], clean[name][0], rtol=RTOL, err_msg=name)


def test_bad_arguments_are_refused():
  s, y, _, _ = inputs()
  with pytest.raises(ValueError, match="reduce_fn"):
    losses.lambdarank_loss(s, y, reduce_fn=jnp.max)
  with pytest.raises(ValueError, match="scheme"):
    losses.lambdaloss(s, y, scheme="ndcg1")
  with pytest.raises(ValueError, match="gains"):
    tiled_pairwise_loss(s, y, spec=PairSpec(lambdarank=1.0))
