"""methods.common.label_split: the sort-based tie structure equals the pairwise-comparison formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cascadejax.methods.common import label_split, label_ties, split_ties


def _pairwise_split(labels, k, where, count_ties):
  """label_split's previous O(n^2) form: the tie structure from every pair of labels (label_ties)."""
  return split_ties(*label_ties(labels, where=where), k, count_ties=count_ties)


@pytest.mark.parametrize("count_ties", [False, True])
def test_label_split_equals_the_pairwise_formula_with_ties_and_masks(count_ties):
  rng = np.random.default_rng(0)
  sorted_split = jax.jit(lambda x, k, w: label_split(x, k, where=w, count_ties=count_ties))
  pairwise = jax.jit(lambda x, k, w: _pairwise_split(x, k, w, count_ties))
  for shape, levels in [((2, 3, 12), 4), ((1, 1), 2), ((3, 40), 40)]:
    labels = jnp.asarray(rng.integers(0, levels, size=shape).astype(np.float32) - 1.5)
    where = jnp.asarray(rng.random(shape) < 0.7)
    where = where.at[0].set(False)  # an all-padding list
    for k in (0, 3, shape[-1]):
      got = sorted_split(labels, k, where)
      want = pairwise(labels, k, where)
      for g, w in zip(got, want):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=f"{shape} k={k}")
      assert np.all(np.asarray(got[0])[~np.asarray(where)] == 0)


def test_label_split_by_hand():
  labels = jnp.array([[3.0, 1.0, 1.0, 1.0, 7.0, 0.0]])
  where = jnp.array([[True, True, True, True, True, False]])
  top, rest = label_split(labels, 3, where=where, count_ties=False)  # ranks: 7, 3, then 1 1 1 share rank 2
  np.testing.assert_allclose(top, [[1, 1 / 3, 1 / 3, 1 / 3, 1, 0]], rtol=1e-6)
  np.testing.assert_allclose(rest, [[0, 2 / 3, 2 / 3, 2 / 3, 0, 0]], rtol=1e-6)
  top, rest = label_split(labels, 3, where=where, count_ties=True)
  np.testing.assert_array_equal(top, [[1, 1, 1, 1, 1, 0]])
  np.testing.assert_array_equal(rest, [[0, 2, 2, 2, 0, 0]])
