"""The `independent` and `bce` methods (`cascadejax.methods.independent`, `cascadejax.methods.bce`)
against NumPy, with their options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cascadejax.data.schema import CascadeBatch
from cascadejax.methods.bce import BCE
from cascadejax.methods.independent import Independent
from tests.test_ops_selection import lengths_mask


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
