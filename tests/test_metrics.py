"""Cascade metrics against rax, brute-force NumPy, exact enumeration and Monte Carlo; `batch_metrics`'s
(sum, count) pairs and their accumulation across batches; no NaN from empty (all-masked) lists."""

import itertools
import math

import jax.numpy as jnp
import numpy as np
import pytest
import rax

from cascadejax.data.schema import CascadeBatch
from cascadejax.metrics import (MetricSums, cascade_recall, batch_metrics, ground_truth, ndcg, random_ndcg,
                                random_recall, recall_at_k)


# ----------------------------------------------------------------------------- brute-force references

def np_order(key, valid):
  """Valid indices of one list by descending key, ties towards the lower index."""
  return sorted((i for i in range(len(key)) if valid[i]), key=lambda i: (-key[i], i))


def np_topk(key, k, valid):
  out = np.zeros(len(key), bool)
  out[np_order(key, valid)[:k]] = True
  return out


def np_ndcg_list(scores, labels, valid, topn=None):
  """DCG by hand: sum over ranks r <= topn of (2^label - 1) / log2(r + 1), over the ideal DCG."""
  def dcg(order):
    return sum((2.0**labels[i] - 1) / math.log2(r + 2) for r, i in enumerate(order) if topn is None or r < topn)
  ideal = dcg(np_order(labels, valid))
  return dcg(np_order(scores, valid)) / ideal if ideal > 0 else 0.0


def np_recall_list(selected, labels, valid, gt_num):
  truth = np_topk(labels, gt_num, valid)
  return (selected & truth).sum() / max(truth.sum(), 1)


def np_cascade_list(stage_scores, ks, valid):
  """Survivors of the last stage for one list (stage s: top k_s among the survivors of stage s-1)."""
  alive = np.asarray(valid, bool)
  for sc, k in zip(stage_scores, ks):
    alive = np_topk(sc, k, alive)
  return alive


def mean_nonempty(per_list, where):
  """Mean over lists with at least one valid item (what every metric's reduce_fn=jnp.mean does)."""
  keep = np.asarray(where).any(-1)
  return np.asarray(per_list)[keep].mean() if keep.any() else 0.0


def make_lists(seed, b=4, n=7, lengths=(7, 5, 0, 2), ties=False):
  """Graded labels 0..3, padding in random slots (padding holds big labels to catch leaks)."""
  rng = np.random.default_rng(seed)
  where = np.stack([rng.permutation(np.arange(n) < m) for m in lengths[:b]])
  labels = rng.integers(0, 4, size=(b, n)).astype(np.float32)
  labels[~where] = 9.0
  scores = (rng.integers(0, 3, size=(b, n)) if ties else rng.normal(size=(b, n))).astype(np.float32)
  return scores, labels, where


# ----------------------------------------------------------------------------- ndcg

@pytest.mark.parametrize("topn", [None, 3])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ndcg_matches_rax_and_bruteforce(topn, masked, seed):
  """Tie-free scores: per-list and mean NDCG equal rax.ndcg_metric and the hand DCG."""
  scores, labels, where = make_lists(seed)
  if not masked:
    where = np.ones_like(where)
  args = (jnp.asarray(scores), jnp.asarray(labels))
  per = ndcg(*args, where=jnp.asarray(where), topn=topn, reduce_fn=None)
  np.testing.assert_allclose(per, rax.ndcg_metric(*args, where=jnp.asarray(where), topn=topn, reduce_fn=None),
                             atol=1e-5)
  np.testing.assert_allclose(ndcg(*args, where=jnp.asarray(where), topn=topn),
                             rax.ndcg_metric(*args, where=jnp.asarray(where), topn=topn), atol=1e-5)
  want = [np_ndcg_list(s, l, w, topn) for s, l, w in zip(scores, labels, where)]
  np.testing.assert_allclose(per, want, atol=1e-5)


@pytest.mark.parametrize("topn", [None, 1, 2, 4])
def test_ndcg_score_ties_break_towards_lower_index(topn):
  """With tied scores (where rax would need a tie-break key) the brute force's index order is used."""
  scores, labels, where = make_lists(3, ties=True)
  got = ndcg(jnp.asarray(scores), jnp.asarray(labels), where=jnp.asarray(where), topn=topn, reduce_fn=None)
  want = [np_ndcg_list(s, l, w, topn) for s, l, w in zip(scores, labels, where)]
  np.testing.assert_allclose(got, want, atol=1e-5)
  # explicit: equal scores, the better label sits at the higher index, so the order is the worse one
  got = ndcg(jnp.zeros(2), jnp.array([0.0, 1.0]), where=jnp.ones(2, bool))
  np.testing.assert_allclose(got, 1.0 / math.log2(3), atol=1e-6)


def test_ndcg_zero_ideal_scores_zero():
  """A list whose valid labels are all 0 has ideal DCG 0: it scores 0 (not NaN) and still counts."""
  labels = jnp.array([[0.0, 0.0, 5.0], [1.0, 0.0, 0.0]])
  where = jnp.array([[True, True, False], [True, True, True]])
  scores = jnp.array([[0.2, 0.1, 0.0], [0.3, 0.2, 0.1]])
  np.testing.assert_allclose(ndcg(scores, labels, where=where, reduce_fn=None), [0.0, 1.0])
  np.testing.assert_allclose(ndcg(scores, labels, where=where), 0.5)


# ----------------------------------------------------------------------------- recall

@pytest.mark.parametrize("gt_num,k", [(1, 1), (2, 3), (3, 2), (2, 7), (5, 4)])
def test_recall_at_k_matches_bruteforce(gt_num, k):
  """Ties in both labels and scores; empty lists are 0 per list and left out of the mean."""
  scores, labels, where = make_lists(gt_num * 10 + k, ties=True)
  labels = np.where(where, np.minimum(labels, 1.0), labels)  # labels 0/1 only: many ties in the ground truth
  per = recall_at_k(jnp.asarray(scores), jnp.asarray(labels), gt_num=gt_num, k=k, where=jnp.asarray(where),
                    reduce_fn=None)
  want = [np_recall_list(np_topk(s, k, w), l, w, gt_num) for s, l, w in zip(scores, labels, where)]
  np.testing.assert_allclose(per, want, atol=1e-6)
  got = recall_at_k(jnp.asarray(scores), jnp.asarray(labels), gt_num=gt_num, k=k, where=jnp.asarray(where))
  np.testing.assert_allclose(got, mean_nonempty(want, where), atol=1e-6)
  truth = np.asarray(ground_truth(jnp.asarray(labels), gt_num, where=jnp.asarray(where)))
  np.testing.assert_array_equal(truth, [np_topk(l, gt_num, w) for l, w in zip(labels, where)])


@pytest.mark.parametrize("ks,gt_num", [((5, 2), 2), ((6, 4, 2), 3), ((4, 4, 1), 1), ((7, 3), 4)])
def test_cascade_recall_matches_bruteforce(ks, gt_num):
  """End-to-end recall = |GT ∩ last-stage survivors| / |GT|, with padding and tied scores."""
  rng = np.random.default_rng(len(ks) * 10 + gt_num)
  _, labels, where = make_lists(gt_num)
  stage_scores = rng.integers(0, 4, size=(len(ks),) + labels.shape).astype(np.float32)
  args = (jnp.asarray(stage_scores), ks, jnp.asarray(labels))
  per = cascade_recall(*args, gt_num=gt_num, where=jnp.asarray(where), reduce_fn=None)
  want = [np_recall_list(np_cascade_list(stage_scores[:, b], ks, where[b]), labels[b], where[b], gt_num)
          for b in range(len(labels))]
  np.testing.assert_allclose(per, want, atol=1e-6)
  np.testing.assert_allclose(cascade_recall(*args, gt_num=gt_num, where=jnp.asarray(where)),
                             mean_nonempty(want, where), atol=1e-6)


# ----------------------------------------------------------------------------- empty lists

def test_all_masked_lists_are_excluded_and_never_nan():
  """A batch with one empty list: means equal the mean over the others; an all-empty batch gives 0."""
  scores, labels, where = make_lists(5, b=3, lengths=(7, 0, 4))
  stage_scores = np.stack([scores, -scores])
  for w in (where, np.zeros_like(where)):
    jw = jnp.asarray(w)
    metrics = {
        "recall_at_k": lambda r: recall_at_k(jnp.asarray(scores), jnp.asarray(labels), gt_num=2, k=3, where=jw,
                                             reduce_fn=r),
        "cascade_recall": lambda r: cascade_recall(jnp.asarray(stage_scores), (4, 2), jnp.asarray(labels),
                                                   gt_num=2, where=jw, reduce_fn=r),
        "ndcg": lambda r: ndcg(jnp.asarray(scores), jnp.asarray(labels), where=jw, topn=3, reduce_fn=r),
        "random_recall": lambda r: random_recall(3, gt_num=2, where=jw, reduce_fn=r),
        "random_ndcg": lambda r: random_ndcg(jnp.asarray(labels), where=jw, topn=3, reduce_fn=r),
    }
    for name, f in metrics.items():
      per, mean = np.asarray(f(None)), float(f(jnp.mean))
      assert np.isfinite(per).all() and np.isfinite(mean), name
      np.testing.assert_array_equal(per[~w.any(-1)], 0.0, err_msg=name)
      np.testing.assert_allclose(mean, mean_nonempty(per, w), atol=1e-6, err_msg=name)
      if w.any():
        assert mean > 0, name  # the empty list did not drag the mean down by being counted
  batch = _batch(labels, np.zeros_like(where))
  out = batch_metrics(jnp.asarray(stage_scores), batch, ks=(4, 2), gt_num=2, stage_names=("a", "b"))
  for name, (s, c) in out.items():
    assert float(s) == 0.0 and float(c) == 0.0, name
  acc = MetricSums()
  acc.add(out)
  assert all(v == 0.0 for v in acc.means().values())


# ----------------------------------------------------------------------------- random baselines

def test_random_recall_exact_and_monte_carlo():
  """Exact: the mean recall over every k-subset of the valid items. Monte Carlo: 20000 draws of random
  stage scores through cascade_recall (a random cascade keeps a uniform random subset)."""
  _, labels, where = make_lists(7, b=3, n=6, lengths=(6, 4, 2))
  gt_num, ks = 2, (4, 3)
  exact = []
  for l, w in zip(labels, where):
    valid = np.flatnonzero(w)
    subsets = itertools.combinations(valid, min(ks[-1], len(valid)))
    exact.append(np.mean([np_recall_list(np.isin(np.arange(len(l)), s), l, w, gt_num) for s in subsets]))
  got = random_recall(ks[-1], gt_num=gt_num, where=jnp.asarray(where), reduce_fn=None)
  np.testing.assert_allclose(got, exact, atol=1e-6)

  draws = 20000
  rng = np.random.default_rng(0)
  stage_scores = jnp.asarray(rng.uniform(size=(len(ks), draws) + labels.shape), jnp.float32)
  tile = lambda a: jnp.broadcast_to(jnp.asarray(a), (draws,) + a.shape)
  mc = cascade_recall(stage_scores, ks, tile(labels), gt_num=gt_num, where=tile(where), reduce_fn=None).mean(0)
  np.testing.assert_allclose(got, mc, atol=0.01)
  np.testing.assert_allclose(random_recall(ks[-1], gt_num=gt_num, where=jnp.asarray(where)), np.mean(exact),
                             atol=1e-6)


@pytest.mark.parametrize("topn", [None, 1, 2, 4])
def test_random_ndcg_is_the_exact_expectation_over_permutations(topn):
  """Average the hand NDCG over all 5! orders of the valid items (padding interleaved, high labels)."""
  labels = np.array([[3.0, 9.0, 0.0, 2.0, 9.0, 1.0, 1.0], [0.0, 2.0, 9.0, 9.0, 9.0, 9.0, 9.0]], np.float32)
  where = np.array([[1, 0, 1, 1, 0, 1, 1], [1, 1, 0, 0, 0, 0, 0]], bool)
  exact = []
  for l, w in zip(labels, where):
    valid = np.flatnonzero(w)
    vals = []
    for perm in itertools.permutations(valid):
      scores = np.zeros(len(l))
      scores[list(perm)] = np.arange(len(perm), 0, -1)  # perm[0] ranked first
      vals.append(np_ndcg_list(scores, l, w, topn))
    exact.append(np.mean(vals))
  got = random_ndcg(jnp.asarray(labels), where=jnp.asarray(where), topn=topn, reduce_fn=None)
  np.testing.assert_allclose(got, exact, atol=1e-5)
  np.testing.assert_allclose(random_ndcg(jnp.asarray(labels), where=jnp.asarray(where), topn=topn),
                             np.mean(exact), atol=1e-5)


# ----------------------------------------------------------------------------- batch_metrics / MetricSums

def _batch(labels, where):
  b, n = np.shape(labels)
  return CascadeBatch(user={}, items={}, stage=jnp.zeros((b, n), jnp.int32), label=jnp.asarray(labels),
                      mask=jnp.asarray(where))


NAMES, KS, GT = ("retrieval", "prerank", "rank"), (5, 3, 2), 2


def _eval_inputs():
  scores, labels, where = make_lists(11, b=5, n=7, lengths=(7, 6, 0, 3, 5))
  rng = np.random.default_rng(11)
  stage_scores = np.concatenate([scores[None], rng.normal(size=(2,) + scores.shape)]).astype(np.float32)
  return jnp.asarray(stage_scores), labels, where


def test_batch_metrics_names_and_values():
  """Every name present; each (sum, count) mean equals the standalone metric over non-empty lists."""
  stage_scores, labels, where = _eval_inputs()
  out = batch_metrics(stage_scores, _batch(labels, where), ks=KS, gt_num=GT, stage_names=NAMES)
  want_names = {"recall_e2e", "recall_e2e_random"}
  for name, k in zip(NAMES, KS):
    want_names |= {f"{name}/recall@{GT}@{k}", f"{name}/recall@{GT}@{k}_random", f"{name}/ndcg@{k}",
                   f"{name}/ndcg@{k}_random", f"{name}/survival"}
  assert set(out) == want_names
  assert all(float(c) == 4.0 for _, c in out.values())  # 4 non-empty lists of 5
  mean = {k: float(s) / float(c) for k, (s, c) in out.items()}
  jw, jl = jnp.asarray(where), jnp.asarray(labels)
  np.testing.assert_allclose(mean["recall_e2e"], cascade_recall(stage_scores, KS, jl, gt_num=GT, where=jw), atol=1e-6)
  np.testing.assert_allclose(mean["rank/survival"], mean["recall_e2e"], atol=1e-7)
  # the first stage's survivors are its own top-k on all candidates
  np.testing.assert_allclose(mean["retrieval/survival"], mean["retrieval/recall@2@5"], atol=1e-7)
  np.testing.assert_allclose(mean["recall_e2e_random"], random_recall(KS[-1], gt_num=GT, where=jw), atol=1e-6)
  for s, (name, k) in enumerate(zip(NAMES, KS)):
    np.testing.assert_allclose(mean[f"{name}/recall@{GT}@{k}"],
                               recall_at_k(stage_scores[s], jl, gt_num=GT, k=k, where=jw), atol=1e-6)
    np.testing.assert_allclose(mean[f"{name}/ndcg@{k}"], ndcg(stage_scores[s], jl, where=jw, topn=k), atol=1e-6)
    np.testing.assert_allclose(mean[f"{name}/ndcg@{k}_random"], random_ndcg(jl, where=jw, topn=k), atol=1e-6)
  # survival can only shrink along the cascade
  surv = [mean[f"{n}/survival"] for n in NAMES]
  assert surv[0] >= surv[1] >= surv[2]
  # recall_e2e against the hand cascade
  want = [np_recall_list(np_cascade_list(np.asarray(stage_scores)[:, b], KS, where[b]), labels[b], where[b], GT)
          for b in range(len(labels)) if where[b].any()]
  np.testing.assert_allclose(mean["recall_e2e"], np.mean(want), atol=1e-6)


@pytest.mark.parametrize("split", [1, 2, 3])
def test_metric_sums_accumulate_to_whole_batch_means(split):
  """Evaluating rows [:split] and [split:] separately (unequal halves, the empty row 2 on either side)
  and accumulating gives exactly the whole batch's means: the mean is per list, not per batch."""
  stage_scores, labels, where = _eval_inputs()
  batch = _batch(labels, where)
  kw = dict(ks=KS, gt_num=GT, stage_names=NAMES)
  whole = MetricSums()
  whole.add(batch_metrics(stage_scores, batch, **kw))
  parts = MetricSums()
  for rows in (slice(0, split), slice(split, None)):
    parts.add(batch_metrics(stage_scores[:, rows], batch.take(rows), **kw))
  w, p = whole.means(), parts.means()
  assert set(w) == set(p)
  for name in w:
    assert math.isfinite(p[name]), name
    np.testing.assert_allclose(p[name], w[name], atol=1e-6, err_msg=name)
  np.testing.assert_allclose(w["recall_e2e"], cascade_recall(stage_scores, KS, jnp.asarray(labels), gt_num=GT,
                                                             where=jnp.asarray(where)), atol=1e-6)
