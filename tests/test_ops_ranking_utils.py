"""The shared ranking utilities (`cascadejax.ops.ranking_utils`) against rax and float64 brute force:
masks (`where`), all-masked lists, ties, cut-offs and arbitrary batch dims."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rax

from cascadejax.ops import ranking_utils as ru


def make(seed, shape=(2, 3, 6), *, negative=False):
  """Scores with ties, graded labels and a mask with one all-masked and one full list."""
  rng = np.random.default_rng(seed)
  scores = rng.integers(-3, 3, shape).astype(np.float32) / 2   # coarse: many tied scores
  labels = rng.integers(0, 4, shape).astype(np.float32) - (1.5 if negative else 0.0)
  where = rng.random(shape) < 0.7
  where.reshape(-1, shape[-1])[0] = False
  where.reshape(-1, shape[-1])[1] = True
  return scores, labels, where


def rows(*arrays):
  """The lists of `[..., n]` arrays, one row at a time."""
  return zip(*(a.reshape(-1, a.shape[-1]) for a in arrays))


def np_order(key, valid):
  """Valid indices by descending key, ties towards the lower index."""
  return sorted((i for i in range(len(key)) if valid[i]), key=lambda i: (-key[i], i))


def np_dcg(order, gains, topn):
  return sum(gains[i] / math.log2(r + 2) for r, i in enumerate(order) if topn is None or r < topn)


# ------------------------------------------------------------------------- gains and discounts

def test_gain_and_discounts_against_float64():
  labels = jnp.asarray([[0.0, 1.0, 2.5, 3.0, -1.0]])
  np.testing.assert_allclose(ru.pow2m1_gain(labels), 2.0 ** np.asarray(labels, np.float64) - 1, rtol=1e-6)
  where = jnp.asarray([[True, False, True, True, False]])
  np.testing.assert_allclose(ru.pow2m1_gain(labels, where=where), [[0.0, 0.0, 2.0**2.5 - 1, 7.0, 0.0]], rtol=1e-6)
  # integer labels give float gains
  assert ru.pow2m1_gain(jnp.asarray([0, 3])).dtype == jnp.float32
  np.testing.assert_allclose(ru.log2_discount(jnp.arange(1.0, 9.0)), 1 / np.log2(np.arange(2.0, 10.0)), rtol=1e-6)
  np.testing.assert_allclose(ru.position_discounts(8), [1 / math.log2(r + 1) for r in range(1, 9)], rtol=1e-6)
  np.testing.assert_allclose(ru.position_discounts(5, topn=2), [1.0, 1 / math.log2(3), 0, 0, 0], rtol=1e-6)
  assert ru.position_discounts(4, dtype=jnp.int32).dtype == jnp.float32


# ---------------------------------------------------------------------------------------- DCG

@pytest.mark.parametrize("topn", [None, 1, 3, 10])
def test_dcg_matches_rax_and_brute_force(topn):
  scores, labels, where = make(0)
  gains = ru.pow2m1_gain(jnp.asarray(labels))
  got = ru.dcg(jnp.asarray(scores), gains, where=jnp.asarray(where), topn=topn)
  assert got.shape == scores.shape[:-1]
  want = rax.dcg_metric(jnp.asarray(scores), jnp.asarray(labels), where=jnp.asarray(where), topn=topn,
                        reduce_fn=None)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  brute = [np_dcg(np_order(s, v), 2.0**y - 1, topn) for s, y, v in rows(scores, labels, where)]
  np.testing.assert_allclose(np.asarray(got).reshape(-1), brute, rtol=1e-6)
  assert float(got.reshape(-1)[0]) == 0.0   # the all-masked list
  # no mask: every item counts
  np.testing.assert_allclose(ru.dcg(jnp.asarray(scores), gains, topn=topn),
                             rax.dcg_metric(jnp.asarray(scores), jnp.asarray(labels), topn=topn, reduce_fn=None),
                             rtol=1e-6)


def test_dcg_breaks_score_ties_towards_the_lower_index_and_ignores_padding():
  gains = jnp.asarray([1.0, 4.0, 0.0, 9.0])
  scores = jnp.asarray([0.5, 0.5, 0.7, 9.0])    # item 3 is padding despite its score
  where = jnp.asarray([True, True, True, False])
  # order: item 2, then the tie 0 before 1
  np.testing.assert_allclose(ru.dcg(scores, gains, where=where), 0.0 + 1.0 / math.log2(3) + 4.0 / 2.0, rtol=1e-6)
  # NaN gains on padding never reach the result
  nan_pad = gains.at[3].set(jnp.nan)
  assert np.isfinite(float(ru.dcg(scores, nan_pad, where=where)))
  assert np.isfinite(float(ru.ideal_dcg(nan_pad, where=where)))


@pytest.mark.parametrize("topn", [None, 2])
@pytest.mark.parametrize("negative", [False, True])
def test_ideal_dcg_matches_rax_and_brute_force(topn, negative):
  _, labels, where = make(1, negative=negative)
  gains = ru.pow2m1_gain(jnp.asarray(labels))
  got = ru.ideal_dcg(gains, where=jnp.asarray(where), topn=topn)
  want = rax.dcg_metric(jnp.asarray(labels), jnp.asarray(labels), where=jnp.asarray(where), topn=topn,
                        reduce_fn=None)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  brute = [np_dcg(np_order(g, v), g, topn) for g, v in rows(2.0**labels.astype(np.float64) - 1, where)]
  np.testing.assert_allclose(np.asarray(got).reshape(-1), brute, rtol=1e-6, atol=1e-7)


def test_ranked_dcg_sums_gains_in_the_given_order():
  ranked = jnp.asarray([[3.0, 1.0, 7.0, 2.0], [5.0, 5.0, 5.0, 5.0]])
  where = jnp.asarray([[True, True, False, True], [False, False, False, False]])
  d = [1 / math.log2(r + 2) for r in range(4)]
  np.testing.assert_allclose(ru.ranked_dcg(ranked, where=where), [3 * d[0] + d[1] + 2 * d[3], 0.0], rtol=1e-6)
  np.testing.assert_allclose(ru.ranked_dcg(ranked, topn=2), [3 * d[0] + d[1], 5 * (d[0] + d[1])], rtol=1e-6)


def test_normalize_by_ideal_dcg():
  gains = jnp.asarray([[1.0, 3.0, 0.0], [0.0, 0.0, 0.0], [-0.5, -0.25, 0.0]])
  where = jnp.asarray([[True, True, False], [True, True, True], [True, True, True]])
  best = np.asarray(ru.ideal_dcg(gains, where=where))
  np.testing.assert_allclose(best[0], 3.0 + 1 / math.log2(3), rtol=1e-6)
  assert best[2] < 0
  got = ru.normalize_by_ideal_dcg(gains, where=where)
  np.testing.assert_allclose(got[0], gains[0] / best[0], rtol=1e-6)
  np.testing.assert_array_equal(got[1], 0.0)               # maxDCG 0: unchanged
  np.testing.assert_allclose(got[2], gains[2] / best[2], rtol=1e-6)   # divided by the negative maxDCG
  positive = ru.normalize_by_ideal_dcg(gains, where=where, positive_only=True)
  np.testing.assert_array_equal(positive[2], gains[2])     # ... unless only positive ones divide
  np.testing.assert_allclose(positive[0], got[0], rtol=0)
  # NDCG of the ideal order is 1
  np.testing.assert_allclose(ru.dcg(gains[:1], got[:1], where=where[:1]), [1.0], rtol=1e-6)


# ---------------------------------------------------------------------------------------- means

@pytest.mark.parametrize("reduce_fn", [jnp.mean, jnp.sum, None])
def test_safe_reduce_matches_rax(reduce_fn):
  values, _, where = make(2)
  got = ru.safe_reduce(jnp.asarray(values), where=jnp.asarray(where), reduce_fn=reduce_fn)
  want = rax.utils.safe_reduce(jnp.asarray(values), where=jnp.asarray(where), reduce_fn=reduce_fn)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  if reduce_fn is jnp.mean:
    np.testing.assert_allclose(got, values[where].mean(), rtol=1e-6)
    np.testing.assert_allclose(ru.safe_reduce(jnp.asarray(values)), values.mean(), rtol=1e-6)


def test_safe_reduce_of_nothing_is_zero_with_a_zero_gradient():
  values, where = jnp.asarray([[1.0, jnp.inf]]), jnp.zeros((1, 2), bool)
  for reduce_fn in (jnp.mean, jnp.sum):
    assert float(ru.safe_reduce(values, where=where, reduce_fn=reduce_fn)) == 0.0
  grad = jax.grad(lambda v: ru.safe_reduce(v, where=where))(values)
  np.testing.assert_array_equal(grad, 0.0)
  np.testing.assert_array_equal(ru.safe_reduce(values, where=where, reduce_fn=None), 0.0)


def test_item_mean_list_mean_and_masks_against_brute_force():
  values, _, where = make(3, shape=(2, 2, 5))
  per_list = [v[w].mean() if w.any() else 0.0 for v, w in rows(values, where)]
  np.testing.assert_allclose(np.asarray(ru.item_mean(jnp.asarray(values), where=jnp.asarray(where))).reshape(-1),
                             per_list, rtol=1e-6)
  lists = where.reshape(-1, 5).any(-1)
  np.testing.assert_array_equal(np.asarray(ru.valid_lists(jnp.asarray(where))).reshape(-1), lists)
  np.testing.assert_allclose(ru.list_mean(jnp.asarray(values), where=jnp.asarray(where)),
                             np.asarray(per_list)[lists].mean(), rtol=1e-6)
  # all-masked everywhere: 0, with a zero (not NaN) gradient
  none = jnp.zeros(where.shape, bool)
  assert float(ru.list_mean(jnp.asarray(values), where=none)) == 0.0
  np.testing.assert_array_equal(jax.grad(lambda v: ru.list_mean(v, where=none))(jnp.asarray(values)), 0.0)
  # the mean of lists, not of items: a long list does not outweigh a short one
  v, w = jnp.asarray([[1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 0.0]]), jnp.asarray([[1, 1, 1, 1], [1, 0, 0, 0]], bool)
  np.testing.assert_allclose(ru.list_mean(v, where=w), 2.0)
  np.testing.assert_allclose(ru.safe_reduce(v, where=w), 7.0 / 5.0)


def test_valid_mask_broadcasts_or_keeps_everything():
  np.testing.assert_array_equal(ru.valid_mask(None, (2, 3)), np.ones((2, 3), bool))
  np.testing.assert_array_equal(ru.valid_mask(jnp.asarray([True, False, True]), (2, 3)),
                                [[True, False, True]] * 2)


def test_utilities_under_jit_and_vmap():
  scores, labels, where = (jnp.asarray(a) for a in make(4, shape=(3, 6)))
  gains = ru.pow2m1_gain(labels)
  direct = ru.dcg(scores, gains, where=where, topn=3)
  mapped = jax.jit(jax.vmap(lambda s, g, w: ru.dcg(s, g, where=w, topn=3)))(scores, gains, where)
  np.testing.assert_allclose(mapped, direct, rtol=1e-6)
  np.testing.assert_allclose(jax.vmap(lambda v, w: ru.item_mean(v, where=w))(scores, where),
                             ru.item_mean(scores, where=where), rtol=1e-6)
