"""cascadejax.corpus.training: the corpus-negatives term of the retrieval stage, against NumPy, inside training."""

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict

from cascadejax import configuration, data as data_lib, metric_writer, trainer
from cascadejax.corpus import training
from cascadejax.experiment import Experiment
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def setup():
  exp = Experiment.build(tiny_config())
  params = exp.init_state().params["cascade"]
  corpus = data_lib.corpus(exp.config.data, exp.data)
  batch = exp.data.splits["train"].take(slice(0, 6))
  return exp, params, corpus, batch


def _lse(x):
  return np.log(np.exp(x - x.max()).sum()) + x.max()


def _moe(pools, mixture):
  """tiny_config with 3 mixture-of-experts nominators at retrieval."""
  c = tiny_config()
  c.cascade.retrieval = ConfigDict(dict(model="moe_nominators", k=c.cascade.retrieval.k, model_kwargs=ConfigDict(
      dict(num_experts=3, pools=pools, mixture=mixture, hidden=(8,), out_dim=4))))
  return c


@pytest.fixture(scope="module", params=[("learned", "logit"), ("category", "prob")], ids=lambda p: "-".join(p))
def moe_setup(request):
  exp = Experiment.build(_moe(*request.param))
  params = exp.init_state().params["cascade"]
  return exp, params, data_lib.corpus(exp.config.data, exp.data), exp.data.splits["train"].take(slice(0, 6))


def _towers(exp, params, items):
  """Each item's vector `[..., d]` and, for nominators, its gate `[..., E]` (None otherwise), NumPy."""
  apply = lambda method: exp.cascade.apply({"params": params}, items, method=method)
  gates = apply("item_log_gates")
  return np.asarray(apply("item_vectors"), np.float64), None if gates is None else np.exp(np.asarray(gates, np.float64))


def _score(exp, q_b, v, g):
  """The retrieval stage's training score of one (request, item) pair, from its towers' outputs:
  <q_b, v>, or with nominators sum_e g_e <q_be, v> ("logit") or logit(sum_e g_e sigmoid(<q_be, v>))."""
  if g is None:
    return q_b @ v
  s = q_b @ v
  if dict(exp.cascade.stages[0].model_kwargs).get("mixture", "logit") == "logit":
    return g @ s
  p = g @ (1 / (1 + np.exp(-s)))
  return np.log(p) - np.log1p(-p)


def _by_hand(exp, params, corpus, batch, negatives, rng, k, tau, log_q):
  """The term in NumPy from the towers' outputs, pair by pair: the ground truth's softmax over its
  negatives."""
  arrays = training.device_arrays(corpus, 1.0)
  lq = np.asarray(arrays["log_q"], np.float64)
  index = corpus.index()
  q = np.asarray(exp.cascade.apply({"params": params}, batch.user, method="query_vectors"), np.float64)
  v, g = _towers(exp, params, batch.items)
  score = lambda b, b2, n2: _score(exp, q[b], v[b2, n2], None if g is None else g[b2, n2])
  examples = []  # (request, candidate slot, corpus position)
  for b in range(batch.batch_size):
    valid = np.flatnonzero(np.asarray(batch.mask[b]))
    for n in valid[np.argsort(-np.asarray(batch.label[b])[valid], kind="stable")][:2]:
      examples.append((b, n, index[np.asarray(batch.items["item_id"])[b, n]]))
  corr = lq if log_q else np.zeros_like(lq)
  losses = []
  if negatives == "in_batch":
    for b, n, j in examples:
      z = [score(b, b2, n2) / tau - corr[j2] for b2, n2, j2 in examples if j2 != j or (b2, n2) == (b, n)]
      losses.append(_lse(np.array(z)) - (score(b, b, n) / tau - corr[j]))
  else:
    sampled = np.asarray(jax.random.categorical(rng, arrays["log_q"], shape=(k,)))
    vn, gn = _towers(exp, params, {f: c[sampled][None] for f, c in corpus.items.items()})
    for b, n, j in examples:
      zp = score(b, b, n) / tau - corr[j]
      zn = [_score(exp, q[b], vn[0, i], None if gn is None else gn[0, i]) / tau - corr[s]
            for i, s in enumerate(sampled) if s != j]
      losses.append(_lse(np.array([zp, *zn])) - zp)
  return np.mean(losses)


@pytest.mark.parametrize("negatives,log_q", [("in_batch", True), ("in_batch", False), ("sampled", True), ("sampled", False)])
def test_the_term_equals_its_formula(setup, negatives, log_q):
  exp, params, corpus, batch = setup
  rng = jax.random.PRNGKey(3)
  got = training.loss(exp.cascade, {"params": params}, batch, training.device_arrays(corpus, 1.0), key="item_id",
                      gt_num=2, negatives=negatives, num_negatives=16, temperature=0.5, log_q=log_q, rng=rng)
  want = _by_hand(exp, params, corpus, batch, negatives, rng, 16, 0.5, log_q)
  np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("negatives", ["in_batch", "sampled"])
def test_nominators_are_trained_by_their_mixture_of_pool_scores(moe_setup, negatives):
  """Mixture-of-experts nominators: every corpus item scored by the model's training score (the gate
  mixture of its nominators' inner products; the own pool's nominator for fixed pools), and the
  gradient reaches the nominators' user towers (and a learned gate)."""
  exp, params, corpus, batch = moe_setup
  rng, arrays = jax.random.PRNGKey(3), training.device_arrays(corpus, 1.0)
  f = lambda p: training.loss(exp.cascade, {"params": p}, batch, arrays, key="item_id", gt_num=2, negatives=negatives,
                              num_negatives=16, temperature=0.5, log_q=True, rng=rng)
  got, grads = jax.jit(jax.value_and_grad(f))(params)
  np.testing.assert_allclose(got, _by_hand(exp, params, corpus, batch, negatives, rng, 16, 0.5, True), rtol=1e-5)
  stage = grads["stage_retrieval"]
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  assert np.abs(np.asarray(stage["user_out"]["kernel"])).sum() > 0
  if "gate_out" in stage:
    assert np.abs(np.asarray(stage["gate_out"]["kernel"])).sum() > 0


def test_sampled_negatives_train_the_item_rows_no_batch_holds(setup):
  """The sampled items' tower runs inside the loss: their embedding rows get gradient even when no
  candidate of the batch is one of them."""
  exp, params, corpus, batch = setup
  arrays = training.device_arrays(corpus, 1.0)
  rng = jax.random.PRNGKey(0)

  def f(p):
    return training.loss(exp.cascade, {"params": p}, batch, arrays, key="item_id", gt_num=2, negatives="sampled",
                         num_negatives=32, temperature=1.0, log_q=True, rng=rng)

  grads = jax.grad(f)(params)
  table = np.asarray(grads["embedding_retrieval"]["item_id"])
  sampled = set(np.asarray(jax.random.categorical(rng, arrays["log_q"], shape=(32,))).tolist())
  in_batch = set(np.unique(np.asarray(batch.items["item_id"])).tolist()) | set(
      np.unique(np.asarray(batch.user["history"])).tolist())  # the history shares the item table
  only_sampled = [int(corpus.items["item_id"][s]) for s in sampled if int(corpus.items["item_id"][s]) not in in_batch]
  assert only_sampled and all(np.abs(table[r]).sum() > 0 for r in only_sampled)
  never = sorted(set(range(1, table.shape[0])) - in_batch - {int(corpus.items["item_id"][s]) for s in sampled})
  assert never and all(np.abs(table[r]).sum() == 0 for r in never)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("retrieval", ["two_tower", "moe_nominators"])
def test_training_with_corpus_negatives_logs_the_term(tmp_path, retrieval):
  c = tiny_config() if retrieval == "two_tower" else _moe("category", "logit")
  c.corpus = ConfigDict(dict(negatives="sampled", num_negatives=8, weight=0.5, evaluate=True))
  c.train.steps, c.train.eval_every, c.train.log_every = 4, 0, 2
  trainer.train_and_evaluate(c, str(tmp_path))
  reports = metric_writer.read(str(tmp_path))
  train = [r for r in reports if r.get("split") == "train"]
  assert train and all(np.isfinite(r["loss/corpus"]) and r["loss/corpus"] > 0 for r in train)
  assert "corpus_recall_e2e" in reports[-1]


def test_an_unknown_kind_of_negatives_is_named():
  bad = tiny_config()
  bad.corpus = ConfigDict(dict(negatives="hard"))
  with pytest.raises(ValueError, match=r"config.corpus.negatives must be one of \('none', 'in_batch', 'sampled'\)"):
    configuration.validate(bad)
