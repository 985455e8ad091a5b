"""cascadejax.ops: relaxed permutations and soft top-k against brute force and their limits."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cascadejax.ops import neural_sort, soft_sort, soft_topk
from cascadejax.ops.soft_topk import TOPK_OPERATORS


def _softmax(x):
  e = np.exp(x - x.max())
  return e / e.sum()


def _brute_neural_sort(s, tau):
  """The NeuralSort formula on one unpadded list, written with explicit loops (float64)."""
  n = len(s)
  p = np.zeros((n, n))
  for r in range(1, n + 1):
    logits = [((n + 1 - 2 * r) * s[j] - sum(abs(s[j] - s[k]) for k in range(n))) / tau for j in range(n)]
    p[r - 1] = _softmax(np.array(logits))
  return p


def _brute_soft_sort(s, tau):
  ordered = sorted(s, reverse=True)
  return np.stack([_softmax(np.array([-abs(o - x) / tau for x in s])) for o in ordered])


def _embed(p_valid, idx, n):
  """Places an [m, m] matrix of the valid items into the [n, n] layout (padding rows/columns 0)."""
  out = np.zeros((n, n))
  out[np.ix_(range(len(idx)), idx)] = p_valid
  return out


def _random_lists(seed, shape=(3, 6), pad=True):
  rng = np.random.default_rng(seed)
  s = rng.normal(size=shape).astype(np.float32)
  where = rng.random(shape) < 0.75 if pad else np.ones(shape, bool)
  where[..., 0] = True
  return s, where


@pytest.mark.parametrize("fn,brute", [(neural_sort, _brute_neural_sort), (soft_sort, _brute_soft_sort)])
def test_permutations_match_brute_force_with_padding(fn, brute):
  s, where = _random_lists(0)
  got = np.asarray(fn(jnp.asarray(s), temperature=0.7, where=jnp.asarray(where)))
  for b in range(s.shape[0]):
    idx = np.flatnonzero(where[b])
    want = _embed(brute(s[b, idx].astype(np.float64), 0.7), idx, s.shape[1])
    np.testing.assert_allclose(got[b], want, atol=1e-5)


@pytest.mark.parametrize("fn", [neural_sort, soft_sort])
def test_permutation_rows_sum_to_one_and_padding_is_empty(fn):
  s, where = _random_lists(1, shape=(4, 7))
  p = np.asarray(fn(jnp.asarray(s), temperature=2.0, where=jnp.asarray(where)))
  m = where.sum(-1)
  for b in range(4):
    np.testing.assert_allclose(p[b, :m[b]].sum(-1), 1.0, rtol=1e-5)
    assert np.all(p[b, m[b]:] == 0) and np.all(p[b][:, ~where[b]] == 0)
  # At a low temperature the matrix is the hard descending permutation: columns sum to 1 too.
  cold = np.asarray(fn(jnp.asarray(s), temperature=1e-3, where=jnp.asarray(where)))
  for b in range(4):
    order = np.argsort(-np.where(where[b], s[b], -np.inf), kind="stable")[:m[b]]
    np.testing.assert_allclose(cold[b, np.arange(m[b]), order], 1.0, atol=1e-4)
    np.testing.assert_allclose(cold[b][:, where[b]].sum(0), 1.0, atol=1e-4)


def _brute_threshold(s, k, tau):
  """sigmoid((s - t) / tau) with sum = k, t found by float64 bisection (independent of the op)."""
  lo, hi = s.min() - 50 * tau, s.max() + 50 * tau
  for _ in range(200):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if (1 / (1 + np.exp(-(s - mid) / tau))).sum() > k else (lo, mid)
  return 1 / (1 + np.exp(-(s - (lo + hi) / 2) / tau))


def _brute_permutation_topk(relax):
  def brute(s, k, tau):
    p = relax(s, tau)
    return p[:k].sum(0) / p.sum(0)
  return brute


def _brute_dftopk(s, k, tau):
  """sigmoid((s - theta) / tau), theta halfway between the k-th and (k+1)-th largest (float64)."""
  ordered = np.sort(s)[::-1]
  return 1 / (1 + np.exp(-(s - (ordered[k - 1] + ordered[k]) / 2) / tau))


def _laplace_cdf(z):
  return np.where(z > 0, 1 - 0.5 * np.exp(-np.abs(z)), 0.5 * np.exp(-np.abs(z)))


def _brute_lapsum(s, k, alpha):
  """F((s - t) / alpha), F the Laplace CDF, t by float64 bisection on the sum (not the op's sort)."""
  lo, hi = s.min() - 50 * alpha, s.max() + 50 * alpha
  for _ in range(200):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if _laplace_cdf((s - mid) / alpha).sum() > k else (lo, mid)
  return _laplace_cdf((s - (lo + hi) / 2) / alpha)


def isotonic_decreasing(y):
  """Pool-adjacent-violators: argmin_{v_1 >= v_2 >= ...} ||v - y||^2 (float64)."""
  blocks = []  # [sum, count]
  for value in y:
    blocks.append([value, 1])
    while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] < blocks[-1][0] / blocks[-1][1]:
      total, count = blocks.pop()
      blocks[-1][0] += total
      blocks[-1][1] += count
  return np.concatenate([np.full(c, t / c) for t, c in blocks])


def _brute_sparse_topk(s, k, l):
  """Sander et al.'s p = 2 top-k mask, as the paper computes it: (s - iso(s - l w)) / l in sorted order."""
  order = np.argsort(-s, kind="stable")
  ordered = s[order]
  w = (np.arange(len(s)) < k).astype(float)
  out = np.empty(len(s))
  out[order] = (ordered - isotonic_decreasing(ordered - l * w)) / l
  return out


BRUTE = {"neural_sort": _brute_permutation_topk(_brute_neural_sort),
         "soft_sort": _brute_permutation_topk(_brute_soft_sort),
         "threshold": _brute_threshold, "dftopk": _brute_dftopk, "lapsum": _brute_lapsum,
         "sparse_topk": _brute_sparse_topk}


def test_every_operator_has_a_brute_force():
  assert set(BRUTE) == set(TOPK_OPERATORS)


@pytest.mark.parametrize("method", TOPK_OPERATORS)
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_soft_topk_matches_brute_force(method, k):
  s, where = _random_lists(2)
  got = np.asarray(soft_topk(jnp.asarray(s), k, where=jnp.asarray(where), method=method, temperature=0.8))
  for b in range(s.shape[0]):
    idx = np.flatnonzero(where[b])
    sv = s[b, idx].astype(np.float64)
    want = np.ones(len(idx)) if k >= len(idx) else BRUTE[method](sv, k, 0.8)
    np.testing.assert_allclose(got[b, idx], want, atol=2e-5)
    assert np.all(got[b, ~where[b]] == 0)


@pytest.mark.parametrize("method", TOPK_OPERATORS)
def test_soft_topk_tends_to_hard_topk(method):
  s, where = _random_lists(3, shape=(5, 8))
  for k in range(0, 10):
    hard = np.zeros_like(where)
    for b in range(5):
      order = np.argsort(-np.where(where[b], s[b], -np.inf))
      hard[b, order[:min(k, where[b].sum())]] = True
    got = np.asarray(soft_topk(jnp.asarray(s), k, where=jnp.asarray(where), method=method,
                               temperature=1e-4))
    np.testing.assert_allclose(got, hard.astype(np.float32), atol=1e-3, err_msg=f"k={k}")


def test_threshold_sums_to_k_and_its_implicit_gradient_matches_finite_differences():
  s, where = _random_lists(4, shape=(2, 7))
  p = soft_topk(jnp.asarray(s), 3, where=jnp.asarray(where), method="threshold", temperature=0.5)
  np.testing.assert_allclose(np.asarray(p).sum(-1), np.minimum(3, where.sum(-1)), rtol=1e-5)
  jac = np.asarray(jax.jacobian(lambda x: soft_topk(x, 3, method="threshold", temperature=0.5))(
      jnp.asarray(s[0])))
  eps, num = 1e-4, np.zeros((7, 7))
  base = s[0].astype(np.float64)
  for j in range(7):
    d = np.eye(7)[j] * eps
    num[:, j] = (_brute_threshold(base + d, 3, 0.5) - _brute_threshold(base - d, 3, 0.5)) / (2 * eps)
  np.testing.assert_allclose(jac, num, atol=1e-3)


@pytest.mark.parametrize("method", TOPK_OPERATORS)
def test_gradients_are_finite_for_ties_masks_and_empty_lists(method):
  scores = jnp.array([[1.0, 1.0, 1.0, 0.0, 2.0],   # ties
                      [0.5, -0.5, 3.0, 0.0, 0.0],  # padding
                      [0.0, 0.0, 0.0, 0.0, 0.0],   # all masked
                      [9.0, -9.0, 0.0, 1e-7, 0.0]])  # k > number of valid items
  where = jnp.array([[1, 1, 1, 1, 1], [1, 1, 0, 1, 0], [0, 0, 0, 0, 0], [1, 1, 0, 0, 0]], bool)
  weights = jnp.arange(1.0, 6.0)

  def f(x):
    return (soft_topk(x, 3, where=where, method=method, temperature=0.3) * weights).sum()

  value, grad = jax.value_and_grad(f)(scores)
  p = soft_topk(scores, 3, where=where, method=method, temperature=0.3)
  assert np.isfinite(value) and np.all(np.isfinite(grad))
  assert np.all(np.asarray(grad)[~np.asarray(where)] == 0), "padding received gradient"
  assert np.all(np.asarray(p)[2] == 0)
  np.testing.assert_allclose(np.asarray(p)[3, :2], 1.0)  # k = 3 > m = 2: both selected
  np.testing.assert_allclose(np.asarray(p)[0, :3], np.asarray(p)[0, 0])  # tied items, equal values


@pytest.mark.parametrize("method", TOPK_OPERATORS)
def test_leading_dims_vmap_and_per_list_k(method):
  s, where = _random_lists(5, shape=(2, 3, 6))
  kw = dict(method=method, temperature=0.5)
  batched = soft_topk(jnp.asarray(s), 2, where=jnp.asarray(where), **kw)
  mapped = jax.vmap(jax.vmap(lambda x, w: soft_topk(x, 2, where=w, **kw)))(jnp.asarray(s), jnp.asarray(where))
  np.testing.assert_allclose(batched, mapped, atol=1e-6)
  for a, b in itertools.product(range(2), range(3)):
    one = soft_topk(jnp.asarray(s[a, b]), 2, where=jnp.asarray(where[a, b]), **kw)
    np.testing.assert_allclose(batched[a, b], one, atol=1e-6)
  ks = jnp.array([[1, 2, 3], [3, 2, 1]])
  per_list = soft_topk(jnp.asarray(s), ks, where=jnp.asarray(where), **kw)
  for a, b in itertools.product(range(2), range(3)):
    one = soft_topk(jnp.asarray(s[a, b]), int(ks[a, b]), where=jnp.asarray(where[a, b]), **kw)
    np.testing.assert_allclose(per_list[a, b], one, atol=1e-6)


def test_soft_topk_rejects_bad_arguments():
  with pytest.raises(ValueError, match="unknown method 'sinkhorn'"):
    soft_topk(jnp.zeros(3), 1, method="sinkhorn")
  with pytest.raises(ValueError, match="temperature must be positive"):
    soft_topk(jnp.zeros(3), 1, temperature=0.0)


def _adversarial_lists():
  """(name, scores, where, k, temperature): spreads, temperatures and masks the solver must survive."""
  rng = np.random.default_rng(6)
  cases = [("one item", rng.normal(size=(2, 1)), np.ones((2, 1), bool), 1, 1.0),
           ("two items", rng.normal(size=(2, 2)), np.ones((2, 2), bool), 1, 0.01),
           ("huge spread", rng.normal(size=(3, 200)) * 1e4, np.ones((3, 200), bool), 50, 1e-3),
           ("tiny temperature", rng.normal(size=(3, 200)), np.ones((3, 200), bool), 1, 1e-4),
           ("gaps of many temperatures", rng.normal(size=(3, 200)), np.ones((3, 200), bool), 1, 0.01),
           ("all tied", np.full((2, 40), 3.0), np.ones((2, 40), bool), 7, 0.1),
           ("heavy masking", rng.normal(size=(3, 2000)), rng.random((3, 2000)) < 0.005, 3, 0.5),
           ("long list", rng.normal(size=(2, 2000)), np.ones((2, 2000), bool), 500, 1.0),
           ("scores far from zero", 1e3 + rng.normal(size=(2, 40)), np.ones((2, 40), bool), 10, 0.1)]
  for name, s, where, k, tau in cases:
    where = where.copy()
    where[:, 0] = True
    yield name, s.astype(np.float32), where, k, tau


def test_threshold_sums_to_k_on_adversarial_lists_in_few_passes():
  from cascadejax.ops.soft_topk import _MAX_STEPS, _threshold_iterations  # noqa: PLC0415
  cases = list(_adversarial_lists())
  n = max(c[1].shape[-1] for c in cases)
  # Every list padded to one length and solved in one call, each row with its own k and temperature.
  s = np.concatenate([np.pad(c[1], ((0, 0), (0, n - c[1].shape[-1]))) for c in cases])
  where = np.concatenate([np.pad(c[2], ((0, 0), (0, n - c[2].shape[-1]))) for c in cases])
  k = np.concatenate([np.full((len(c[1]), 1), c[3], np.float32) for c in cases])
  tau = np.concatenate([np.full((len(c[1]), 1), c[4], np.float32) for c in cases])
  names = [c[0] for c in cases for _ in range(len(c[1]))]
  t, steps = jax.jit(_threshold_iterations)(jnp.asarray(np.where(where, s, 0)), jnp.asarray(where),
                                            jnp.asarray(k), jnp.asarray(tau))
  p = np.where(where, np.asarray(jax.nn.sigmoid((jnp.asarray(s) - t) / jnp.asarray(tau))), 0.0)
  m = where.sum(-1)
  inside = (k[:, 0] > 0) & (k[:, 0] < m)
  for row, name in enumerate(names):
    assert np.isfinite(np.asarray(t)[row, 0]), name
    if inside[row]:
      np.testing.assert_allclose(p[row].astype(np.float64).sum(), k[row, 0], rtol=1e-4, err_msg=name)
    else:  # k >= m: nothing to solve
      assert int(steps[row, 0]) == 0, name
  assert int(np.asarray(steps).max()) <= 30 < _MAX_STEPS, dict(zip(names, np.asarray(steps).ravel()))
  # The operator itself on the shortest lists (the padded call above covers the masking).
  for name, s1, w1, k1, tau1 in cases[:2]:
    p1 = np.asarray(soft_topk(jnp.asarray(s1), k1, where=jnp.asarray(w1), method="threshold", temperature=tau1))
    np.testing.assert_allclose(p1.sum(-1), np.minimum(k1, w1.sum(-1)), rtol=1e-5, err_msg=name)


def test_threshold_needs_few_passes_at_a_smooth_temperature():
  """At temperature 1 on normal scores (the benchmark's LCRON setting) Newton converges in a handful
  of passes at every n, against the 60 bisection steps it replaces."""
  from cascadejax.ops.soft_topk import _threshold_iterations  # noqa: PLC0415
  rng = np.random.default_rng(7)
  for n in (40, 1000):
    s = jnp.asarray(rng.normal(size=(8, n)).astype(np.float32))
    valid = jnp.ones((8, n), bool)
    for k in {1, n // 4, n // 2}:
      t, steps = jax.jit(_threshold_iterations)(s, valid, jnp.full((8, 1), float(k)), jnp.float32(1.0))
      assert int(steps.max()) <= 7, (n, k, np.asarray(steps).ravel())
      for b in range(2):
        want = _brute_threshold(np.asarray(s[b], np.float64), k, 1.0)
        np.testing.assert_allclose(jax.nn.sigmoid(s[b] - t[b]), want, atol=2e-6)


def test_threshold_gradient_matches_finite_differences_with_masks_and_a_sharp_temperature():
  s, where = _random_lists(8, shape=(2, 9))
  s[1] *= 20.0  # items many temperatures apart
  w = jnp.asarray(where)
  weights = jnp.linspace(-1.0, 2.0, 9)

  def f(x):
    return (soft_topk(x, jnp.array([2, 3]), where=w, method="threshold", temperature=0.3) * weights).sum()

  grad = np.asarray(jax.jit(jax.grad(f))(jnp.asarray(s)))
  eps, num = 1e-3, np.zeros_like(s, dtype=np.float64)
  for b, k in ((0, 2), (1, 3)):
    idx = np.flatnonzero(where[b])
    base = s[b, idx].astype(np.float64)
    for j in range(len(idx)):
      d = np.eye(len(idx))[j] * eps
      hi_, lo_ = _brute_threshold(base + d, k, 0.3), _brute_threshold(base - d, k, 0.3)
      num[b, idx[j]] = ((hi_ - lo_) / (2 * eps) * np.asarray(weights)[idx]).sum()
  np.testing.assert_allclose(grad, num, atol=2e-3)
  assert np.all(grad[~where] == 0)
