"""Hard top-k / cascade selection against brute-force NumPy, and the pointwise losses against rax
and hand-computed NumPy (values, gradients, masking, and the `independent` method's options)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rax

from cascadejax.ops.selection import hard_topk, select
from cascadejax.data.schema import CascadeBatch
from cascadejax.methods.bce import BCE
from cascadejax.methods.independent import Independent
from cascadejax.losses.ranking import sigmoid_bce_loss


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


# ----------------------------------------------------------------------------- sigmoid_bce_loss

def _bce_inputs(seed=0, shape=(3, 6)):
  rng = np.random.default_rng(seed)
  scores = jnp.asarray(rng.normal(scale=3.0, size=shape), jnp.float32)
  labels = rng.integers(0, 2, size=shape).astype(np.float32)
  labels[0] = rng.uniform(size=shape[-1])  # soft targets in one list
  where = rng.uniform(size=shape) < 0.7
  where[1] = False  # one fully masked list
  weights = rng.uniform(0.5, 2.0, size=shape).astype(np.float32)
  return scores, jnp.asarray(labels), jnp.asarray(where), jnp.asarray(weights)


@pytest.mark.parametrize("reduce_fn", [jnp.mean, jnp.sum, None], ids=["mean", "sum", "none"])
@pytest.mark.parametrize("use_where", [False, True])
@pytest.mark.parametrize("use_weights", [False, True])
def test_sigmoid_bce_matches_rax(reduce_fn, use_where, use_weights):
  """Values and gradients (a random vector-Jacobian product) equal rax.pointwise_sigmoid_loss."""
  scores, labels, where, weights = _bce_inputs()
  kw = dict(where=where if use_where else None, weights=weights if use_weights else None, reduce_fn=reduce_fn)
  ours = lambda s: sigmoid_bce_loss(s, labels, **kw)
  ref = lambda s: rax.pointwise_sigmoid_loss(s, labels, **kw)
  v, vjp = jax.vjp(ours, scores)
  v_ref, vjp_ref = jax.vjp(ref, scores)
  np.testing.assert_allclose(v, v_ref, rtol=1e-5, atol=1e-5)
  cot = jnp.asarray(np.random.default_rng(1).normal(size=np.shape(v)), jnp.float32)
  np.testing.assert_allclose(vjp(cot)[0], vjp_ref(cot)[0], rtol=1e-5, atol=1e-5)
  if use_where and reduce_fn is None:
    np.testing.assert_array_equal(np.asarray(v)[~np.asarray(where)], 0.0)


@pytest.mark.parametrize("scores", [[0.0, 0.0, 0.0, 0.0], [-1.5, 0.3, 2.0, -0.01]], ids=["zero", "random"])
def test_sigmoid_bce_gradient_is_sigmoid_minus_label(scores):
  """d/ds BCE(s, y) = sigmoid(s) - y everywhere, including at s = 0 (e.g. zero-initialized logits)."""
  s = jnp.asarray(scores, jnp.float32)
  y = jnp.array([0.0, 1.0, 0.5, 0.0])
  g = jax.grad(lambda s: sigmoid_bce_loss(s, y, reduce_fn=jnp.sum))(s)
  np.testing.assert_allclose(g, jax.nn.sigmoid(s) - y, atol=1e-6)


def test_sigmoid_bce_all_masked_is_zero_with_finite_gradients():
  """No valid entry: loss 0 for every reduction and zero (not NaN) gradients."""
  scores, labels, _, weights = _bce_inputs()
  none = jnp.zeros(scores.shape, bool)
  for reduce_fn in (jnp.mean, jnp.sum):
    f = lambda s: sigmoid_bce_loss(s, labels, where=none, weights=weights, reduce_fn=reduce_fn)
    assert float(f(scores)) == 0.0
    g = jax.grad(f)(scores)
    assert np.isfinite(g).all() and not np.asarray(g).any()
  np.testing.assert_array_equal(sigmoid_bce_loss(scores, labels, where=none, reduce_fn=None), 0.0)


def test_sigmoid_bce_large_logits_stay_finite():
  """|s| = 100: the confident-right losses are ~0, confident-wrong ones ~100, gradients are +-1 or 0."""
  s = jnp.array([100.0, 100.0, -100.0, -100.0])
  y = jnp.array([1.0, 0.0, 1.0, 0.0])
  per = sigmoid_bce_loss(s, y, reduce_fn=None)
  np.testing.assert_allclose(per, [0.0, 100.0, 100.0, 0.0], atol=1e-6)
  g = jax.grad(lambda s: sigmoid_bce_loss(s, y, reduce_fn=jnp.sum))(s)
  np.testing.assert_allclose(g, [0.0, 1.0, -1.0, 0.0], atol=1e-6)
  np.testing.assert_allclose(sigmoid_bce_loss(s, y), rax.pointwise_sigmoid_loss(s, y), rtol=1e-6)


# ----------------------------------------------------------------------------- Independent

def np_bce(s, y):
  """Reference BCE from logits: log(1 + e^s) - s y."""
  return np.logaddexp(0.0, s) - s * y


def np_independent(stage_scores, stage, mask, train_on):
  """Per-stage mean BCE of target 1[stage > s] over valid (and, for "reached", stage >= s) items."""
  terms = []
  for s in range(stage_scores.shape[0]):
    valid = mask & (stage >= s) if train_on == "reached" else mask
    l = np_bce(stage_scores[s].astype(np.float64), (stage > s).astype(np.float64))
    terms.append(l[valid].sum() / max(valid.sum(), 1))
  return sum(terms), terms


def _cascade_batch(seed, num_stages, b=3, n=6):
  rng = np.random.default_rng(seed)
  mask = lengths_mask([n, 4, 0][:b], n)
  stage = rng.integers(0, num_stages + 1, size=(b, n)).astype(np.int32)
  stage[0, :num_stages + 1] = np.arange(num_stages + 1)  # every stage value occurs
  scores = rng.normal(scale=2.0, size=(num_stages, b, n)).astype(np.float32)
  batch = CascadeBatch(user={}, items={}, stage=jnp.asarray(stage), label=jnp.zeros((b, n), jnp.float32),
                       mask=jnp.asarray(mask))
  return jnp.asarray(scores), batch, stage, mask


@pytest.mark.parametrize("num_stages", [2, 3])
@pytest.mark.parametrize("train_on", ["all", "reached"])
def test_independent_loss_matches_numpy(num_stages, train_on):
  """Total and per-stage terms equal the hand-computed BCE sum; padded slots get zero gradient."""
  names = ("retrieval", "prerank", "rank")[:num_stages]
  ks = (4, 2, 1)[:num_stages]
  method = Independent({"train_on": train_on}, stage_names=names, ks=ks, gt_num=1)
  scores, batch, stage, mask = _cascade_batch(num_stages, num_stages)
  loss, terms = method.loss(method.init(jax.random.key(0)), scores, batch, rng=jax.random.key(0))
  want, want_terms = np_independent(np.asarray(scores), stage, mask, train_on)
  assert sorted(terms) == sorted(f"loss/{n}" for n in names)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  for name, w in zip(names, want_terms):
    np.testing.assert_allclose(terms[f"loss/{name}"], w, rtol=1e-5, atol=1e-6)
  g = np.asarray(jax.grad(lambda s: method.loss({}, s, batch, rng=jax.random.key(0))[0])(scores))
  assert np.isfinite(g).all()
  np.testing.assert_array_equal(g[:, ~mask], 0.0)
  if train_on == "reached":  # stage s never sees the items the logged cascade dropped before it
    for s in range(num_stages):
      np.testing.assert_array_equal(g[s][stage < s], 0.0)


def test_independent_train_on_changes_the_loss():
  """'reached' and 'all' differ exactly when some valid item was dropped before a later stage."""
  scores, batch, stage, mask = _cascade_batch(0, 2)
  kw = dict(stage_names=("a", "b"), ks=(3, 1), gt_num=1)
  all_ = Independent({}, **kw).loss({}, scores, batch, rng=jax.random.key(0))[1]
  reached = Independent({"train_on": "reached"}, **kw).loss({}, scores, batch, rng=jax.random.key(0))[1]
  np.testing.assert_allclose(all_["loss/a"], reached["loss/a"], rtol=1e-6)  # stage 0 sees everything
  assert (mask & (stage < 1)).any()
  assert abs(float(all_["loss/b"]) - float(reached["loss/b"])) > 1e-4


def test_independent_option_errors():
  """Unknown options and bad train_on values are rejected with messages naming the config key."""
  kw = dict(stage_names=("a", "b"), ks=(3, 1), gt_num=1)
  with pytest.raises(ValueError, match=r"config\.method\.independent") as e:
    Independent({"trian_on": "all"}, **kw)
  assert "trian_on" in str(e.value) and "train_on" in str(e.value)
  with pytest.raises(ValueError, match=r"config\.method\.independent\.train_on.*'exposed'"):
    Independent({"train_on": "exposed"}, **kw)
  assert Independent({}, **kw).options == {"train_on": "all"}


# ----------------------------------------------------------------------------- BCE

@pytest.mark.parametrize("num_stages", [2, 3])
@pytest.mark.parametrize("train_on", ["published", "all", "reached"])
def test_bce_covers_the_published_groups_and_targets_the_ground_truth(num_stages, train_on):
  """Every stage's BCE of the ground truth over its covered candidates: the first stage all of
  them, a middle stage what it saw, the last stage what it exposed ("published")."""
  names = ("retrieval", "prerank", "rank")[:num_stages]
  scores, batch, stage, mask = _cascade_batch(num_stages + 5, num_stages)
  label = np.random.default_rng(1).normal(size=mask.shape).astype(np.float32)
  batch = batch.replace(label=jnp.asarray(label))
  method = BCE({"train_on": train_on}, stage_names=names, ks=(4, 2, 1)[:num_stages], gt_num=2)
  loss, terms = method.loss({}, scores, batch, rng=jax.random.key(0))
  truth = np.zeros(mask.shape, bool)
  for b in range(mask.shape[0]):
    valid = np.flatnonzero(mask[b])
    truth[b, valid[np.argsort(-label[b, valid], kind="stable")[:2]]] = True
  published = {2: (0, 2), 3: (0, 1, 3)}[num_stages]
  total = 0.0
  for s, name in enumerate(names):
    lowest = {"published": published[s], "all": 0, "reached": s}[train_on]
    covered = mask & (stage >= lowest)
    l = np_bce(np.asarray(scores[s], np.float64), truth.astype(np.float64))
    want = l[covered].sum() / max(covered.sum(), 1)
    np.testing.assert_allclose(terms[f"loss/{name}"], want, rtol=1e-5, atol=1e-6)
    total += want
  np.testing.assert_allclose(loss, total, rtol=1e-5)
  g = np.asarray(jax.grad(lambda x: method.loss({}, x, batch, rng=jax.random.key(0))[0])(scores))
  np.testing.assert_array_equal(g[-1][stage < (num_stages if train_on == "published" else 0)], 0.0)


def test_bce_option_errors():
  kw = dict(stage_names=("a", "b"), ks=(3, 1), gt_num=1)
  with pytest.raises(ValueError, match=r"config\.method\.bce\.train_on must be one of .*'exposed'"):
    BCE({"train_on": "exposed"}, **kw)
  assert BCE({}, **kw).options == {"train_on": "published"}
