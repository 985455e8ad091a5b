"""cascadejax.losses.sampled_softmax: the logQ-corrected sampled softmax and in-batch softmax against
their formulas computed by hand (NumPy loops), accidental-hit removal, masking, gradients with
duplicated negatives, and the sampling-probability estimates."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cascadejax.losses import FrequencyEstimate, in_batch_softmax_loss, log_q_from_counts, sampled_softmax_loss


def reference(pos, neg, lq_pos, lq_neg, kept, tau):
  """-log softmax of the positive among itself and the kept negatives, one example, by hand."""
  zp = pos / tau - lq_pos
  z = [n / tau - q for n, q, k in zip(neg, lq_neg, kept) if k]
  return -(zp - math.log(math.exp(zp) + sum(math.exp(v) for v in z)))


def test_hand_built_case():
  pos = np.array([2.0, -1.0], np.float32)
  neg = np.array([[1.0, 0.5, 3.0], [0.0, -2.0, 1.5]], np.float32)
  lq_pos = np.log(np.array([0.1, 0.3], np.float32))
  lq_neg = np.log(np.array([[0.2, 0.05, 0.4], [0.1, 0.1, 0.6]], np.float32))
  tau = 0.5
  got = sampled_softmax_loss(pos, neg, positive_log_q=lq_pos, negative_log_q=lq_neg, temperature=tau,
                             reduce_fn=None)
  # example 0 written out: z+ = 2/0.5 - log 0.1, z_j = s_j/0.5 - log Q_j
  z0 = [4 - math.log(0.1), 2 - math.log(0.2), 1 - math.log(0.05), 6 - math.log(0.4)]
  want0 = -(z0[0] - math.log(sum(math.exp(v) for v in z0)))
  want1 = reference(pos[1], neg[1], lq_pos[1], lq_neg[1], [True] * 3, tau)
  np.testing.assert_allclose(got, [want0, want1], rtol=1e-5)
  np.testing.assert_allclose(sampled_softmax_loss(pos, neg, positive_log_q=lq_pos, negative_log_q=lq_neg,
                                                  temperature=tau), (want0 + want1) / 2, rtol=1e-5)
  # without any correction it is the plain softmax cross-entropy of the positive
  plain = sampled_softmax_loss(pos, neg, reduce_fn=jnp.sum)
  logits = np.concatenate([pos[:, None], neg], 1).astype(np.float64)
  np.testing.assert_allclose(plain, -(logits[:, 0] - np.log(np.exp(logits).sum(1))).sum(), rtol=1e-5)


def _random_case(seed=0, shape=(2, 3), m=5, vocab=6):
  rng = np.random.default_rng(seed)
  return dict(pos=rng.normal(size=shape).astype(np.float32), neg=rng.normal(size=(*shape, m)).astype(np.float32),
              lq_pos=np.log(rng.uniform(0.01, 0.5, shape)).astype(np.float32),
              lq_neg=np.log(rng.uniform(0.01, 0.5, (*shape, m))).astype(np.float32),
              pid=rng.integers(0, vocab, shape), nid=rng.integers(0, vocab, (*shape, m)),
              nwhere=rng.random((*shape, m)) < 0.8, weights=rng.uniform(0.5, 2, shape).astype(np.float32))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_formula_with_accidental_hits_and_batch_axes(seed):
  c = _random_case(seed)
  tau = 0.7
  got = sampled_softmax_loss(c["pos"], c["neg"], positive_log_q=c["lq_pos"], negative_log_q=c["lq_neg"],
                             positive_ids=c["pid"], negative_ids=c["nid"], negative_where=c["nwhere"],
                             temperature=tau, weights=c["weights"], reduce_fn=None)
  assert got.shape == (2, 3)
  for idx in np.ndindex(2, 3):
    kept = c["nwhere"][idx] & (c["nid"][idx] != c["pid"][idx])
    want = c["weights"][idx] * reference(c["pos"][idx], c["neg"][idx], c["lq_pos"][idx], c["lq_neg"][idx], kept, tau)
    np.testing.assert_allclose(got[idx], want, rtol=1e-5, atol=1e-6)


def test_accidental_hits_are_removed():
  """A negative with the positive's id changes nothing: equal to the loss without that negative."""
  pos, neg = np.array([1.0]), np.array([[0.5, 4.0, -1.0]])
  lq = np.log(np.array([[0.2, 0.3, 0.1]]))
  with_hit = sampled_softmax_loss(pos, neg, negative_log_q=lq, positive_ids=np.array([7]),
                                  negative_ids=np.array([[3, 7, 5]]))
  without = sampled_softmax_loss(pos, neg[:, [0, 2]], negative_log_q=lq[:, [0, 2]])
  np.testing.assert_allclose(with_hit, without, rtol=1e-6)
  kept_all = sampled_softmax_loss(pos, neg, negative_log_q=lq)
  assert float(kept_all) > float(with_hit) + 1.0  # the removed hit scored high: the test can fail
  # shared negatives: ids and log Q given once as [m]
  shared = sampled_softmax_loss(np.array([1.0, 2.0]), np.stack([neg[0], neg[0]]), negative_log_q=lq[0],
                                positive_ids=np.array([7, 9]), negative_ids=np.array([3, 7, 5]), reduce_fn=None)
  np.testing.assert_allclose(shared[0], with_hit, rtol=1e-6)


def test_gradient_with_duplicated_negatives():
  """The same item drawn three times: finite gradients equal to the softmax's, each copy its share."""
  pos = jnp.asarray([0.3, -0.2])
  neg = jnp.asarray([[1.0, 1.0, 1.0, -0.5], [0.2, 0.2, 0.7, 0.7]])
  lq = jnp.log(jnp.asarray([[0.1, 0.1, 0.1, 0.2], [0.3, 0.3, 0.05, 0.05]]))
  ids = jnp.asarray([[4, 4, 4, 2], [1, 1, 6, 6]])
  tau = 0.5
  loss = lambda p, n: sampled_softmax_loss(p, n, negative_log_q=lq, positive_ids=jnp.asarray([0, 1]),
                                           negative_ids=ids, temperature=tau, reduce_fn=jnp.sum)
  gp, gn = jax.grad(loss, argnums=(0, 1))(pos, neg)
  assert np.isfinite(gp).all() and np.isfinite(gn).all()
  z = np.concatenate([np.asarray(pos)[:, None] / tau, np.asarray(neg) / tau - np.asarray(lq)], 1)
  z[1, 1:3] = -np.inf  # row 1's positive is item 1: its two copies among the negatives are hits
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  np.testing.assert_allclose(gp, (p[:, 0] - 1) / tau, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(gn, p[:, 1:] / tau, rtol=1e-5, atol=1e-6)
  assert gn[0, 0] == gn[0, 1] == gn[0, 2] and gn[1, 0] == gn[1, 1] == 0


def test_masked_examples_never_nan():
  pos = jnp.asarray([1.0, jnp.inf, 2.0])
  neg = jnp.asarray([[0.0, 1.0], [jnp.nan, jnp.inf], [0.5, 0.5]])
  lq_pos = jnp.asarray([-1.0, -jnp.inf, -2.0])
  where = jnp.asarray([True, False, True])
  nwhere = jnp.asarray([[True, True], [True, True], [False, False]])  # example 2 has no negative left
  fn = lambda p, n: sampled_softmax_loss(p, n, positive_log_q=lq_pos, where=where, negative_where=nwhere,
                                         reduce_fn=None)
  losses = fn(pos, neg)
  np.testing.assert_allclose(losses, [reference(1.0, [0.0, 1.0], -1.0, [0, 0], [True, True], 1.0), 0.0, 0.0],
                             rtol=1e-6)
  gp, gn = jax.grad(lambda p, n: fn(p, n).sum(), argnums=(0, 1))(pos, neg)
  assert np.isfinite(gp).all() and np.isfinite(gn).all()
  assert gp[1] == 0 and gp[2] == 0 and (gn[1:] == 0).all()
  mean = sampled_softmax_loss(pos, neg, positive_log_q=lq_pos, where=where, negative_where=nwhere)
  np.testing.assert_allclose(mean, losses[0] / 2, rtol=1e-6)  # mean over the 2 examples in `where`
  none = sampled_softmax_loss(pos, neg, where=jnp.zeros(3, bool))
  assert float(none) == 0.0


def test_log_q_shift_invariance_and_jit():
  c = _random_case(4)
  base = sampled_softmax_loss(c["pos"], c["neg"], positive_log_q=c["lq_pos"], negative_log_q=c["lq_neg"])
  shifted = jax.jit(lambda a, b, qp, qn: sampled_softmax_loss(a, b, positive_log_q=qp + 3.0, negative_log_q=qn + 3.0))(
      c["pos"], c["neg"], c["lq_pos"], c["lq_neg"])
  np.testing.assert_allclose(base, shifted, rtol=1e-5)


@pytest.mark.parametrize("remove_hits", [False, True])
def test_in_batch_matches_formula(remove_hits):
  """Row i against every column of the batch, each corrected by its own log Q (the paper's eq. 3);
  two rows share an item."""
  rng = np.random.default_rng(0)
  b, m = 4, 6  # two extra sampled columns beyond the batch's positives
  scores = rng.normal(size=(b, m)).astype(np.float32)
  ids = np.array([10, 11, 10, 12, 13, 11])
  lq = np.log(rng.uniform(0.05, 0.5, m)).astype(np.float32)
  column_where = np.array([True, True, True, True, True, False])
  where = np.array([True, True, True, False])
  tau = 0.8
  got = in_batch_softmax_loss(scores, log_q=lq, item_ids=ids if remove_hits else None, column_where=column_where,
                              temperature=tau, where=where, reduce_fn=None)
  for i in range(b):
    kept = [j != i and column_where[j] and (not remove_hits or ids[j] != ids[i]) for j in range(m)]
    want = reference(scores[i, i], scores[i], lq[i], lq, kept, tau) if where[i] else 0.0
    np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-6)
  # positives in other columns (e.g. this shard's rows inside an all-gathered item batch)
  cols = np.array([2, 3, 4, 5])
  shifted = in_batch_softmax_loss(np.roll(scores, 2, axis=1), log_q=np.roll(lq, 2), positive_columns=cols,
                                  item_ids=np.roll(ids, 2) if remove_hits else None,
                                  column_where=np.roll(column_where, 2), temperature=tau, where=where, reduce_fn=None)
  np.testing.assert_allclose(shifted, got, rtol=1e-5, atol=1e-6)
  grad = jax.grad(lambda s: in_batch_softmax_loss(s, log_q=lq, item_ids=ids, temperature=tau))(scores)
  assert np.isfinite(grad).all()


@pytest.mark.parametrize("call,message", [
    (lambda: sampled_softmax_loss(np.zeros(2), np.zeros((3, 4))), "negative_scores must be"),
    (lambda: sampled_softmax_loss(np.zeros(2), np.zeros(2)), "negative_scores must be"),
    (lambda: sampled_softmax_loss(np.zeros(2), np.zeros((2, 4)), negative_log_q=np.zeros(3)), "does not broadcast"),
    (lambda: sampled_softmax_loss(np.zeros(2), np.zeros((2, 4)), temperature=0.0), "temperature"),
    (lambda: in_batch_softmax_loss(np.zeros(3)), "scores must be"),
    (lambda: in_batch_softmax_loss(np.zeros((3, 2))), "fewer columns"),
    (lambda: in_batch_softmax_loss(np.zeros((2, 3)), log_q=np.zeros(2)), "log_q must be"),
    (lambda: in_batch_softmax_loss(np.zeros((2, 3)), positive_columns=np.zeros(3, int)), "positive_columns"),
    (lambda: log_q_from_counts(np.zeros((2, 2))), "counts must be"),
    (lambda: FrequencyEstimate.init(0, initial_gap=1.0), "num_buckets"),
    (lambda: FrequencyEstimate.init(4, initial_gap=0.0), "initial_gap"),
])
def test_bad_input_raises(call, message):
  with pytest.raises(ValueError, match=message):
    call()


def test_log_q_from_counts():
  lq = log_q_from_counts(np.array([3, 0, 1]), smoothing=1.0)
  np.testing.assert_allclose(np.exp(lq), [4 / 7, 1 / 7, 2 / 7], rtol=1e-6)
  np.testing.assert_allclose(np.exp(log_q_from_counts(np.array([3, 1]), smoothing=0.0)), [0.75, 0.25], rtol=1e-6)


def test_streaming_frequency_estimate():
  """Item 0 in every batch (twice), item 1 every 4th step, item 2 never: the gaps approach 1 and 4."""
  est = FrequencyEstimate.init(8, initial_gap=10.0)
  update = jax.jit(lambda e, ids, step, where: e.update(ids, step, alpha=0.1, where=where))
  for step in range(1, 401):
    ids = np.array([0, 0, 1 if step % 4 == 0 else 5, 9])  # id 9 hashes to bucket 1 but is masked
    est = update(est, ids, step, np.array([True, True, step % 4 == 0, False]))
  np.testing.assert_allclose(est.gap[:2], [1.0, 4.0], rtol=1e-3)
  assert est.gap[2] == 10.0 and est.last_step[0] == 400 and est.last_step[1] == 400
  np.testing.assert_allclose(est.log_q(np.array([0, 1, 9])), -np.log([1.0, 4.0, 4.0]), rtol=1e-3, atol=1e-6)
