"""Hard top-k and cascade selection (`cascadejax.ops.selection`) against brute-force NumPy."""

import jax.numpy as jnp
import numpy as np
import pytest

from cascadejax.ops.selection import hard_topk, select


# ----------------------------------------------------------------------------- brute-force references

def np_topk(scores, k, where):
  """Per list: the valid indices sorted by (-score, index), first k of them."""
  scores, where = np.asarray(scores), np.asarray(where, bool)
  out = np.zeros(scores.shape, bool)
  for idx in np.ndindex(scores.shape[:-1]):
    valid = [i for i in range(scores.shape[-1]) if where[idx][i]]
    for i in sorted(valid, key=lambda i: (-scores[idx][i], i))[:k]:
      out[idx + (i,)] = True
  return out


def np_select(stage_scores, ks, where):
  """The cascade by hand: stage s keeps its top k_s among the survivors of stage s-1."""
  alive, out = np.asarray(where, bool), []
  for scores, k in zip(stage_scores, ks):
    alive = np_topk(scores, k, alive)
    out.append(alive)
  return np.stack(out)


def lengths_mask(lengths, n):
  """`[B, n]` mask whose row b has its first lengths[b] slots valid."""
  return np.arange(n)[None, :] < np.asarray(lengths)[:, None]


# ----------------------------------------------------------------------------- hard_topk

def test_hard_topk_explicit_ties():
  """Equal scores are taken in index order; masked entries are skipped even when they score highest."""
  s = jnp.array([1.0, 3.0, 3.0, 2.0, 3.0, 0.0])
  np.testing.assert_array_equal(hard_topk(s, 2), [0, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(hard_topk(s, 3), [0, 1, 1, 0, 1, 0])
  np.testing.assert_array_equal(hard_topk(s, 4), [0, 1, 1, 1, 1, 0])
  where = jnp.array([True, False, True, True, True, True])
  np.testing.assert_array_equal(hard_topk(s, 2, where=where), [0, 0, 1, 0, 1, 0])
  np.testing.assert_array_equal(hard_topk(s, 3, where=where), [0, 0, 1, 1, 1, 0])
  # all tied: the lowest valid indices win
  np.testing.assert_array_equal(hard_topk(jnp.zeros(5), 2, where=jnp.array([0, 1, 0, 1, 1], bool)), [0, 1, 0, 1, 0])


@pytest.mark.parametrize("k", [0, 1, 3, 5, 8, 11])
def test_hard_topk_matches_bruteforce(k):
  """Integer scores in 0..3 (many ties), random masks incl. an all-masked and a 1-valid list, k up to > n."""
  rng = np.random.RandomState(k)
  scores = rng.randint(0, 4, size=(2, 3, 8)).astype(np.float32)
  where = rng.rand(2, 3, 8) < 0.7
  where[0, 0] = False
  where[1, 2] = np.arange(8) == 5
  got = np.asarray(hard_topk(jnp.asarray(scores), k, where=jnp.asarray(where)))
  np.testing.assert_array_equal(got, np_topk(scores, k, where))
  np.testing.assert_array_equal(got.sum(-1), np.minimum(k, where.sum(-1)))  # short lists: all valid ones
  assert not (got & ~where).any()
  # where=None means every entry is valid
  np.testing.assert_array_equal(hard_topk(jnp.asarray(scores), k), np_topk(scores, k, np.ones_like(where)))


def test_hard_topk_valid_minus_inf_score_is_still_selected():
  """A list with fewer valid entries than k selects all of them (docstring), whatever their score.

  A valid entry scoring -inf ties with the -inf used for masked entries; the masked one at a lower
  index must not take its place.
  """
  got = hard_topk(jnp.array([-jnp.inf, -jnp.inf, 0.5]), 2, where=jnp.array([False, True, True]))
  np.testing.assert_array_equal(got, [False, True, True])
  got = hard_topk(jnp.array([-jnp.inf, -jnp.inf]), 1, where=jnp.array([False, True]))
  np.testing.assert_array_equal(got, [False, True])


# ----------------------------------------------------------------------------- select

@pytest.mark.parametrize("ks", [(5, 2), (6, 3, 1), (4, 4, 2), (9, 7)])
@pytest.mark.parametrize("seed", [0, 1])
def test_select_matches_bruteforce_cascade(ks, seed):
  """Random scores, padded lists (8, 5, 2 and 0 valid slots): equal to the hand cascade, nested, right sizes."""
  rng = np.random.default_rng(seed)
  n = 8
  where = lengths_mask([8, 5, 2, 0], n)
  where = np.stack([rng.permutation(row) for row in where])  # padding anywhere, not only at the end
  scores = rng.normal(size=(len(ks), 4, n)).astype(np.float32)
  scores[..., 1] = scores[..., 2]  # a tie inside each list
  got = np.asarray(select(jnp.asarray(scores), ks, where=jnp.asarray(where)))
  assert got.shape == (len(ks), 4, n)
  np.testing.assert_array_equal(got, np_select(scores, ks, where))
  assert not (got[0] & ~where).any()
  for s in range(1, len(ks)):
    assert not (got[s] & ~got[s - 1]).any(), "survivors of stage s must have survived stage s-1"
  for s, k in enumerate(ks):
    np.testing.assert_array_equal(got[s].sum(-1), np.minimum(k, where.sum(-1)))
  # a Python list of per-stage arrays is accepted too
  np.testing.assert_array_equal(select([jnp.asarray(x) for x in scores], ks, where=jnp.asarray(where)), got)


def test_select_rejects_stage_count_mismatch():
  """Two stages of scores with three ks is an error, not a silent truncation."""
  with pytest.raises(ValueError):
    select(jnp.zeros((2, 1, 4)), (3, 2, 1), where=jnp.ones((1, 4), bool))
