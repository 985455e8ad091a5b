"""Re-ranking operators against brute-force references, and the evaluation hook."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cascadejax import metrics, rerank
from cascadejax.ops.selection import hard_topk
from cascadejax.data.schema import CascadeBatch
from cascadejax.evaluate import rerank_metrics
from cascadejax.experiment import Experiment
from tests.conftest import tiny_config


def random_lists(seed, shape=(2, 3), n=7, ties=True):
  rng = np.random.default_rng(seed)
  rel = rng.normal(size=shape + (n,)).astype(np.float32)
  if ties:
    rel = np.round(rel, 0) + 0.0  # plenty of exact ties (+ 0.0 turns -0.0, which top_k orders below 0.0, into 0.0)
  where = rng.random(shape + (n,)) < 0.8
  return rel, where


# ---------------------------------------------------------------- MMR and top-k

def test_mmr_with_lambda_one_is_plain_top_k():
  rel, where = random_lists(0)
  sim = np.random.default_rng(1).random(rel.shape + (rel.shape[-1],)).astype(np.float32)
  for k in (1, 4, 7):
    order, valid = rerank.mmr(rel, sim, k, lambda_=1.0, where=where)
    t_order, t_valid = rerank.top_k(rel, k, where=where)
    np.testing.assert_array_equal(valid, t_valid)
    np.testing.assert_array_equal(np.where(valid, order, -1), np.where(t_valid, t_order, -1))
    # The same set as the cascade's hard top-k, shown in decreasing relevance, ties to the lower slot.
    chosen = np.zeros(rel.shape, bool)
    for idx in np.ndindex(rel.shape[:-1]):
      chosen[idx][np.asarray(order[idx])[np.asarray(valid[idx])]] = True
    np.testing.assert_array_equal(chosen, hard_topk(jnp.asarray(rel), k, where=jnp.asarray(where)))
    for idx in np.ndindex(rel.shape[:-1]):
      ref = sorted(np.flatnonzero(where[idx]), key=lambda i: (-rel[idx][i], i))[:k]
      np.testing.assert_array_equal(np.asarray(order[idx])[np.asarray(valid[idx])], ref)


def mmr_reference(rel, sim, where, k, lam):
  shown = []
  for _ in range(k):
    best, best_v = None, -np.inf
    for i in np.flatnonzero(where):
      if i in shown:
        continue
      v = lam * rel[i] - (1 - lam) * (max(sim[i, j] for j in shown) if shown else 0.0)
      if v > best_v:
        best, best_v = i, v
    if best is None:
      break
    shown.append(best)
  return shown


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.7])
def test_mmr_matches_reference(lam):
  rel, where = random_lists(2, ties=False)
  rng = np.random.default_rng(3)
  cats = rng.integers(0, 3, rel.shape)
  sim = np.asarray(rerank.equal_similarity(jnp.asarray(cats)))
  order, valid = rerank.mmr(jax.nn.sigmoid(rel), sim, 5, lambda_=lam, where=where)
  prob = np.asarray(jax.nn.sigmoid(rel))
  for idx in np.ndindex(rel.shape[:-1]):
    want = mmr_reference(prob[idx], sim[idx], where[idx], 5, lam)
    np.testing.assert_array_equal(np.asarray(order[idx])[np.asarray(valid[idx])], want)
  if lam == 0.0:  # pure diversity: no category repeats while an unseen one is available
    for idx in np.ndindex(rel.shape[:-1]):
      shown = np.asarray(order[idx])[np.asarray(valid[idx])]
      n_cats = len(set(cats[idx][where[idx]]))
      assert len(set(cats[idx][shown[:n_cats]])) == min(n_cats, len(shown))


# ---------------------------------------------------------------- DPP

def greedy_det_reference(kernel, where, k):
  """Greedy MAP by explicit determinants: position p takes argmax_i det(L[Y + i])."""
  shown = []
  for _ in range(k):
    options = [i for i in np.flatnonzero(where) if i not in shown]
    if not options:
      break
    dets = [np.linalg.det(kernel[np.ix_(shown + [i], shown + [i])].astype(np.float64)) for i in options]
    shown.append(options[int(np.argmax(dets))])
  return shown


def test_dpp_fast_greedy_equals_explicit_determinant_greedy():
  rng = np.random.default_rng(4)
  for trial in range(6):
    n, k = 6, 4
    v = rng.normal(size=(n, 5))
    kernel = (v @ v.T + 0.1 * np.eye(n)).astype(np.float32)
    where = rng.random(n) < 0.9
    order, valid = rerank.dpp_greedy(kernel, k, where=where)
    want = greedy_det_reference(kernel, where, k)
    np.testing.assert_array_equal(np.asarray(order)[np.asarray(valid)], want)
    assert valid.sum() == min(k, where.sum())


def test_dpp_greedy_equals_brute_force_map_on_category_kernels():
  # L = Diag(q) (C + jitter I) Diag(q), C = "same category": log det splits over categories into
  # concave per-category terms, where the greedy is exact. Check against all k-subsets.
  rng = np.random.default_rng(5)
  for trial in range(8):
    n, k = 7, int(rng.integers(2, 5))
    rel = rng.normal(size=n).astype(np.float32)
    cats = rng.integers(0, 3, n)
    where = np.ones(n, bool)
    where[rng.integers(0, n)] = False
    kernel = np.asarray(rerank.dpp_kernel(jnp.asarray(rel), rerank.equal_similarity(jnp.asarray(cats)),
                                          theta=0.6, jitter=0.05), np.float64)
    order, valid = rerank.dpp_greedy(jnp.asarray(kernel, jnp.float32), k, where=where)
    best = max(itertools.combinations(np.flatnonzero(where), k),
               key=lambda s: np.linalg.det(kernel[np.ix_(s, s)]))
    assert set(np.asarray(order)[np.asarray(valid)]) == set(best)


def test_dpp_kernel_theta_trades_relevance_for_diversity():
  rel = jnp.array([3.0, 2.9, 2.8, 0.0, -1.0])
  cats = jnp.array([1, 1, 1, 2, 3])
  sim = rerank.equal_similarity(cats)
  where = jnp.ones(5, bool)
  relevant, _ = rerank.dpp_greedy(rerank.dpp_kernel(rel, sim, theta=0.99), 3, where=where)
  diverse, _ = rerank.dpp_greedy(rerank.dpp_kernel(rel, sim, theta=0.1), 3, where=where)
  assert list(relevant) == [0, 1, 2] and list(diverse) == [0, 3, 4]


def test_dpp_stops_on_singular_sets_and_fills_by_quality():
  # Rank-1 similarity: after one item every d_i^2 is 0; the rest follow by L_ii = q_i^2.
  rel = jnp.array([0.5, 2.0, 1.0, 1.5])
  kernel = rerank.dpp_kernel(rel, jnp.ones((4, 4)), theta=0.5, jitter=0.0)
  order, valid = rerank.dpp_greedy(kernel, 4, where=jnp.ones(4, bool))
  assert list(order) == [1, 3, 2, 0] and valid.all() and np.isfinite(np.asarray(kernel)).all()


# ---------------------------------------------------------------- creator cap

def test_creator_cap_reference_and_fill():
  rel, where = random_lists(6, shape=(4,), n=8, ties=False)
  creators = np.random.default_rng(7).integers(1, 3, rel.shape)
  for fill in (False, True):
    order, valid = rerank.creator_cap(rel, creators, 5, max_per_creator=2, where=where, fill=fill)
    for b in range(4):
      ranked = sorted(np.flatnonzero(where[b]), key=lambda i: -rel[b][i])
      within, counts = [], {}
      for i in ranked:
        if counts.get(creators[b][i], 0) < 2:
          within.append(i)
          counts[creators[b][i]] = counts.get(creators[b][i], 0) + 1
      want = (within + [i for i in ranked if i not in within])[:5] if fill else within[:5]
      np.testing.assert_array_equal(np.asarray(order[b])[np.asarray(valid[b])], want)


# ---------------------------------------------------------------- shown-list metrics

def test_shown_list_metrics_by_hand():
  labels = jnp.array([[3.0, 0.0, 2.0, 1.0, 0.5]])
  batch = CascadeBatch(user={}, items={"category": jnp.array([[1, 1, 2, 2, 3]])}, stage=jnp.zeros((1, 5), jnp.int32),
                       label=labels, mask=jnp.array([[True, True, True, True, False]]))
  order, valid = jnp.array([[2, 1, 0]]), jnp.array([[True, True, False]])
  out = metrics.shown_list_metrics(order, valid, batch, gt_num=2, diversity_features=("category",), prefix="x")
  value = {k: float(s / c) for k, (s, c) in out.items()}
  gains = 2.0 ** np.array([3.0, 0.0, 2.0, 1.0]) - 1
  ideal = gains[0] + gains[2] / np.log2(3) + gains[3] / np.log2(4)
  assert value["x/recall@2@3"] == pytest.approx(0.5)   # GT {0, 2}; only slot 2 is shown
  assert value["x/ndcg@3"] == pytest.approx((gains[2] + gains[1] / np.log2(3)) / ideal)
  assert value["x/distinct_category@3"] == 2 and value["x/size"] == 2


# ---------------------------------------------------------------- options and the evaluation hook

@pytest.mark.parametrize("section,match", [
    ({"method": "nope"}, r"config\.rerank\.method"), ({"k": 9}, r"config\.rerank\.k=9"),
    ({"bogus": 1}, r"config\.rerank: unknown option"), ({"feature": "color"}, r"config\.rerank\.feature"),
    ({"dpp_theta": 1.0}, r"config\.rerank\.dpp_theta"), ({"mmr_lambda": -0.1}, r"config\.rerank\.mmr_lambda")])
def test_options_name_the_bad_key(section, match):
  with pytest.raises(ValueError, match=match):
    rerank.options(section, last_k=4, item_features=("category", "creator"))


def test_evaluation_hook_on_a_tiny_cascade():
  exp = Experiment.build(tiny_config())
  params = exp.init_state().params["cascade"]
  base = exp.evaluate(params)
  k = exp.cascade.ks[-1]
  out = rerank_metrics(exp, params, overrides={"method": "dpp", "dpp_theta": 0.3, "similarity": "embedding"})
  # Showing all k_S survivors is exactly the cascade's end-to-end selection, re-ordered or not.
  assert out[f"shown/recall@2@{k}"] == pytest.approx(base["recall_e2e"])
  assert out[f"rerank/recall@2@{k}"] == pytest.approx(base["recall_e2e"])
  assert out["rerank/size"] == out["shown/size"] == pytest.approx(k)
  assert out["rerank/distinct_category@2"] == pytest.approx(out["shown/distinct_category@2"])
  assert np.isfinite(list(out.values())).all()


def test_apply_dispatches_on_options():
  scores = jnp.array([[4.0, 3.0, 2.0, 1.0, 0.0]])
  items = {"category": jnp.array([[1, 1, 2, 2, 3]]), "creator": jnp.array([[5, 5, 5, 6, 6]])}
  where = jnp.array([[True, True, True, True, False]])
  shown = lambda **o: list(np.asarray(rerank.apply(rerank.options(o, last_k=4, item_features=tuple(items)),
                                                   scores, items, where)[0][0]))
  assert shown(method="none") == [0, 1, 2, 3]
  assert shown(method="creator_cap", max_per_creator=1, fill=True) == [0, 3, 1, 2]
  assert shown(method="mmr", mmr_lambda=0.2, k=3) == [0, 2, 1]
  assert shown(method="dpp", dpp_theta=0.1, k=2) == [0, 2]
