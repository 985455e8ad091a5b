"""DFTopK, LapSum and sparse top-k: float64 gradients against finite differences of their brute
forces, DFTopK's threshold gradient and selection, traced k, and the sparse operator against the
Dykstra iterations the DFTopK reference runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cascadejax.ops import dftopk, dftopk_logits, soft_topk
from cascadejax.ops.dftopk import boundary_indices
from tests.test_ops_soft_topk import BRUTE, isotonic_decreasing

NEW = ("dftopk", "lapsum", "sparse_topk")


def _lists(seed, shape=(3, 7)):
  rng = np.random.default_rng(seed)
  s = rng.normal(size=shape) * 1.5
  where = rng.random(shape) < 0.8
  where[..., :5] = True
  return s, where


@pytest.mark.parametrize("method", NEW + ("threshold",))
@pytest.mark.parametrize("k", [1, 3])
def test_float64_jacobian_matches_finite_differences_of_the_brute_force(method, k):
  s, where = _lists(1)
  tau = 0.7
  with jax.enable_x64(True):
    fn = lambda v, w: soft_topk(v, k, where=w, method=method, temperature=tau)
    jacobian, forward = jax.jit(jax.jacobian(fn)), jax.jit(fn)  # one compile for every list (suite time)
    for b in range(s.shape[0]):
      x, w = jnp.asarray(s[b], jnp.float64), jnp.asarray(where[b])
      jac = np.asarray(jacobian(x, w))
      value = np.asarray(forward(x, w))
      assert jac.dtype == np.float64 and value.dtype == np.float64
      idx = np.flatnonzero(where[b])
      np.testing.assert_allclose(value[idx], BRUTE[method](s[b, idx], k, tau), atol=1e-10)
      num, eps = np.zeros((len(idx), len(idx))), 1e-6
      for c in range(len(idx)):
        d = np.eye(len(idx))[c] * eps
        num[:, c] = (BRUTE[method](s[b, idx] + d, k, tau) - BRUTE[method](s[b, idx] - d, k, tau)) / (2 * eps)
      np.testing.assert_allclose(jac[np.ix_(idx, idx)], num, atol=1e-6, err_msg=f"list {b}")
      pad = np.flatnonzero(~where[b])
      assert np.all(jac[:, pad] == 0) and np.all(jac[pad] == 0)


def test_dftopk_gradient_goes_through_the_threshold_unless_held():
  x = jnp.array([3.0, 1.0, 2.0, -1.0, 0.5])  # k = 2: boundary items 2 (x = 2) and 1 (x = 1)
  tau = 0.5
  # Jitted: one compile each instead of an eager dispatch per operation (suite time).
  full = np.asarray(jax.jit(jax.jacobian(lambda v: dftopk(v, 2, temperature=tau)))(x))
  held = np.asarray(jax.jit(jax.jacobian(lambda v: dftopk(v, 2, temperature=tau, threshold_grad=False)))(x))
  p = np.asarray(jax.jit(lambda v: dftopk(v, 2, temperature=tau))(x))
  slope = p * (1 - p) / tau
  dtheta = np.array([0, 0.5, 0.5, 0, 0])  # theta = (x_2 + x_1) / 2 here
  np.testing.assert_allclose(full, slope[:, None] * (np.eye(5) - dtheta[None, :]), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(held, np.diag(slope), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(p, 1 / (1 + np.exp(-(np.asarray(x) - 1.5) / tau)), rtol=1e-6)


def test_dftopk_logits_mark_the_degenerate_cases():
  x = jnp.array([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
  where = jnp.array([[True, True, False, True], [True, True, True, True]])
  z = np.asarray(dftopk_logits(x, jnp.array([3, 0]), where=where))
  assert np.all(z[0, [0, 1, 3]] == np.inf) and z[0, 2] == -np.inf  # k >= m; padding
  assert np.all(z[1] == -np.inf)  # k <= 0
  g = jax.grad(lambda v: jax.nn.sigmoid(dftopk_logits(v, jnp.array([3, 0]), where=where)).sum())(x)
  assert np.all(np.asarray(g) == 0)
  with pytest.raises(ValueError, match="temperature must be positive"):
    dftopk_logits(x, 1, temperature=-1.0)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_radix_selection_finds_the_boundary_with_ties_negatives_and_padding(dtype):
  rng = np.random.default_rng(5)
  rows, masks, ks = [], [], []  # every (list, k) pair of 30 random lists, searched in one batched call
  for trial in range(30):
    n = 8
    s = np.round(rng.normal(size=n) * 2) / 2  # many ties, negatives, zeros
    if trial % 3 == 0:
      s[rng.integers(0, n)] = -0.0
    valid = rng.random(n) < 0.8
    valid[:3] = True
    for k in range(1, int(valid.sum())):
      rows.append(s)
      masks.append(valid)
      ks.append(k)
  s, valid, ks = np.stack(rows), np.stack(masks), np.array(ks)
  with jax.enable_x64(dtype == jnp.float64):
    i_k, i_k1 = (np.asarray(a).reshape(-1) for a in boundary_indices(jnp.asarray(s, dtype), jnp.asarray(ks)[:, None],
                                                                     jnp.asarray(valid)))
  for r, k in enumerate(ks):
    ordered = np.sort(s[r][valid[r]])[::-1]
    assert valid[r, i_k[r]] and valid[r, i_k1[r]] and i_k[r] != i_k1[r]
    assert s[r, i_k[r]] == ordered[k - 1] and s[r, i_k1[r]] == ordered[k], (s[r], valid[r], k)


def test_the_blocked_cpu_selection_equals_the_whole_batch_one(monkeypatch):
  import sys  # noqa: PLC0415  (cascadejax.ops.dftopk the attribute is the function)
  module = sys.modules["cascadejax.ops.dftopk"]
  s, where = _lists(6, shape=(2, 5, 8))
  s[0, 1, 2] = s[0, 1, 3]  # a tie
  ks = jnp.array([[1, 2, 3, 4, 5], [5, 4, 3, 2, 1]])
  run = lambda: np.asarray(jax.jit(lambda x: dftopk(x, ks, where=jnp.asarray(where), temperature=0.4))(
      jnp.asarray(s, jnp.float32)))
  whole = run()
  monkeypatch.setattr(module, "_CPU_BLOCK_ABOVE", 0)
  monkeypatch.setattr(module, "_CPU_BLOCK_SIZE", 24)  # 3 rows a block: 10 rows = 3 blocks and a remainder
  blocked = run()
  np.testing.assert_array_equal(blocked, whole)
  mapped = jax.vmap(lambda x, w, k: dftopk(x, k, where=w, temperature=0.4))(
      jnp.asarray(s, jnp.float32), jnp.asarray(where), ks)
  np.testing.assert_allclose(mapped, whole, atol=1e-7)
  for a in range(2):
    for b in range(5):
      idx = np.flatnonzero(where[a, b])
      if int(ks[a, b]) < len(idx):
        np.testing.assert_allclose(whole[a, b, idx], BRUTE["dftopk"](s[a, b, idx], int(ks[a, b]), 0.4), atol=1e-6)


def test_traced_k_under_jit_and_per_list_k_equal_static_k():
  s, where = _lists(2, shape=(4, 7))
  ks = jnp.array([1, 2, 4, 9])
  for method in NEW:
    traced = jax.jit(lambda x, k, m=method: soft_topk(x, k, where=jnp.asarray(where), method=m, temperature=0.3))
    got = np.asarray(traced(jnp.asarray(s, jnp.float32), ks))
    for b in range(4):
      one = soft_topk(jnp.asarray(s[b], jnp.float32), int(ks[b]), where=jnp.asarray(where[b]), method=method,
                      temperature=0.3)
      np.testing.assert_allclose(got[b], one, atol=1e-6, err_msg=method)


def test_sum_to_k_and_sparsity():
  s, where = _lists(3, shape=(5, 8))
  m = where.sum(-1)
  for method in ("lapsum", "sparse_topk"):
    p = np.asarray(soft_topk(jnp.asarray(s, jnp.float32), 3, where=jnp.asarray(where), method=method,
                             temperature=0.4))
    np.testing.assert_allclose(p.sum(-1), np.minimum(3, m), rtol=1e-5)
  sparse = np.asarray(soft_topk(jnp.asarray(s, jnp.float32), 3, where=jnp.asarray(where), method="sparse_topk",
                                temperature=0.4))
  assert np.mean((sparse == 0) | (sparse == 1)) > 0.5  # most items exactly in or out
  # A cold LapSum (exponents of hundreds) stays finite and hard.
  cold = np.asarray(soft_topk(jnp.asarray(s * 100, jnp.float32), 3, where=jnp.asarray(where), method="lapsum",
                              temperature=0.01))
  assert np.all(np.isfinite(cold)) and np.allclose(cold.sum(-1), np.minimum(3, m), atol=1e-3)


def _dykstra_isotonic(y, cycles):
  """Decreasing isotonic regression by Dykstra's alternating projections onto the even and odd pairs
  (Sander et al.'s GPU solver), the iterations the DFTopK reference unrolls."""
  y = np.asarray(y, float)
  odd = len(y) % 2 == 1
  if not odd:  # pad to odd length with a value below every other: the padding never binds
    y = np.append(y, y.min() - 1)

  def project(v, start):
    v = v.copy()
    for i in range(start, len(v) - 1, 2):
      if v[i] < v[i + 1]:
        v[i] = v[i + 1] = (v[i] + v[i + 1]) / 2
    return v

  x, p, q = y.copy(), np.zeros_like(y), np.zeros_like(y)
  for _ in range(cycles):
    z = project(x + p, 0)
    p = x + p - z
    x = project(z + q, 1)
    q = z + q - x
  return x if odd else x[:-1]


def test_sparse_topk_is_the_limit_of_the_reference_dykstra_iterations():
  rng = np.random.default_rng(7)
  for n, k in ((8, 2), (8, 5), (7, 3)):
    s = np.sort(rng.normal(size=n))[::-1]
    w = (np.arange(n) < k).astype(float)
    np.testing.assert_allclose(_dykstra_isotonic(s - w, 250), isotonic_decreasing(s - w), atol=1e-8)
    ours = np.asarray(soft_topk(jnp.asarray(s, jnp.float32), k, method="sparse_topk", temperature=1.0))
    np.testing.assert_allclose(ours, s - isotonic_decreasing(s - w), atol=1e-5)
