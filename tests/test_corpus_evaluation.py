"""cascadejax.corpus.evaluation: the cascade evaluated from the whole corpus equals a brute-force NumPy cascade."""

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict

from cascadejax import configuration, data as data_lib, metric_writer, trainer
from cascadejax.experiment import Experiment
from tests.conftest import tiny_config


def _brute_force(exp, params, corpus, split="test"):
  """Per request: score every corpus item with stage 1 as one candidate list (the model's own call),
  keep the top k_1 (stable: lower corpus index first on ties), let each later stage keep its top k_s,
  then recall and NDCG of the logged ground truth, all in NumPy."""
  batch = exp.data.splits[split]
  ks, gt_num, names = exp.cascade.ks, exp.sections.cascade.gt_num, exp.stage_names
  m = len(corpus)
  all_items = {f: np.asarray(v)[None] for f, v in corpus.items.items()}
  index = corpus.index()
  apply = jax.jit(lambda p, u, it: exp.cascade.apply({"params": p}, u, it).scores)  # one compile per list length
  sums = {}
  for b in range(batch.batch_size):
    user = {k: np.asarray(v)[b:b + 1] for k, v in batch.user.items()}
    mask = np.asarray(batch.mask[b])
    label = np.asarray(batch.label[b], np.float64)
    s0 = np.asarray(apply(params, user, all_items)[0, 0], np.float64)
    alive = [np.lexsort((np.arange(m), -s0))[:ks[0]]]  # corpus positions, best first
    stage_scores = [s0[alive[0]]]
    for s in range(1, len(ks)):
      prev = alive[-1]
      scores = np.asarray(apply(params, user, {f: v[:, prev] for f, v in all_items.items()})[s, 0], np.float64)
      order = np.lexsort((np.arange(len(prev)), -scores))[:ks[s]]
      alive.append(prev[order])
      stage_scores.append(scores[order])
    valid = np.flatnonzero(mask)
    gt = valid[np.lexsort((valid, -label[valid]))[:gt_num]]
    gt_items = set(index[np.asarray(batch.items[corpus.key][b])[gt]])
    gain_of = {index[np.asarray(batch.items[corpus.key][b])[i]]: 2.0 ** label[i] - 1 for i in valid}
    ideal_gains = np.sort([2.0 ** label[i] - 1 for i in valid])[::-1]
    for s, (name, k) in enumerate(zip(names, ks)):
      recall = len(gt_items & set(alive[s])) / len(gt_items)
      order = alive[s][np.argsort(-stage_scores[s], kind="stable")] if s == 0 else alive[s]
      disc = 1.0 / np.log2(np.arange(2, k + 2))
      dcg = sum(gain_of.get(j, 0.0) * d for j, d in zip(order[:k], disc))
      ideal = (ideal_gains[:k] * disc[:len(ideal_gains[:k])]).sum()
      for key, v in ((f"corpus:{name}/recall@{gt_num}@{k}", recall), (f"corpus:{name}/ndcg@{k}", dcg / ideal if ideal > 0 else 0.0)):
        sums[key] = sums.get(key, 0.0) + v
  out = {k: v / batch.batch_size for k, v in sums.items()}
  out["corpus_recall_e2e"] = out[f"corpus:{names[-1]}/recall@{gt_num}@{ks[-1]}"]
  return out


MOE = ConfigDict(dict(num_experts=3, pools="learned", hidden=(8,), out_dim=4))


def _moe(c):
  c.cascade.retrieval.model, c.cascade.retrieval.model_kwargs = "moe_nominators", MOE
  return c


@pytest.mark.parametrize("num_stages,top_k,moe", [(2, "exact", False), (3, "exact", False), (2, "approx", False),
                                                  (2, "exact", True)])
def test_full_corpus_metrics_equal_a_brute_force_cascade(num_stages, top_k, moe):
  """With `moe_nominators` the brute force is the model's own serving order (round-robin over its
  pools) over the whole corpus as one candidate list."""
  c = _moe(tiny_config(num_stages)) if moe else tiny_config(num_stages)
  c.corpus = ConfigDict(dict(top_k=top_k, chunk_size=16, item_batch=24))  # several chunks and tower calls
  exp = Experiment.build(c)
  params = exp.init_state().params["cascade"]
  corpus = data_lib.corpus(c.data, exp.data)
  got = exp.evaluate_corpus(params, "test")
  want = _brute_force(exp, params, corpus)
  assert set(got) == set(want)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
  assert 0.0 < got["corpus_recall_e2e"] < 1.0  # neither trivial case


def test_train_reports_corpus_metrics_and_non_retrieval_models_are_refused(tmp_path):
  c = tiny_config()
  c.corpus = ConfigDict(dict(evaluate=True))
  c.train.steps, c.train.eval_every = 4, 0
  trainer.train_and_evaluate(c, str(tmp_path))
  final = [r for r in metric_writer.read(str(tmp_path)) if r.get("final")][-1]
  assert 0.0 <= final["corpus_recall_e2e"] <= 1.0 and "corpus:prerank/ndcg@2" in final
  rows = [line.split()[0] for line in metric_writer.table(final).splitlines()]
  assert "corpus:retrieval" in rows and "corpus:prerank" in rows and "corpus_recall_e2e" in rows
  bad = tiny_config()
  bad.corpus = ConfigDict(dict(evaluate=True))
  bad.cascade.retrieval.model, bad.cascade.retrieval.model_kwargs = "mlp", ConfigDict(dict(hidden=(8,)))
  with pytest.raises(ValueError, match=r"config.corpus.evaluate retrieves from the corpus with the first stage, but "
                                       r"config.cascade.retrieval.model='mlp' is not one of \('two_tower', 'dssm', "
                                       r"'moe_nominators'\)"):
    configuration.validate(bad)
  bad.corpus = ConfigDict(dict(top_k="nearest"))
  with pytest.raises(ValueError, match=r"config.corpus.top_k must be one of \('exact', 'approx'\)"):
    configuration.validate(bad)


@pytest.mark.parametrize("model,kwargs", [("two_tower", dict(hidden=(8,), out_dim=4)),
                                          ("dssm", dict(hidden=(8,), out_dim=4, score="cosine", temperature=0.05)),
                                          ("dssm", dict(hidden=(8,), out_dim=4, score="dot"))])
def test_query_and_item_vectors_give_the_stage_scores(model, kwargs):
  """<query_vectors, item_vectors> is what the stage scores a candidate list with, for any list."""
  c = tiny_config()
  c.cascade.retrieval.model, c.cascade.retrieval.model_kwargs = model, ConfigDict(kwargs)
  exp = Experiment.build(c)
  params = {"params": exp.init_state().params["cascade"]}
  batch = exp.data.splits["test"].take(slice(0, 5))
  want = exp.cascade.apply(params, batch.user, batch.items).scores[0]
  q = exp.cascade.apply(params, batch.user, method="query_vectors")
  v = exp.cascade.apply(params, batch.items, method="item_vectors")
  np.testing.assert_allclose(np.einsum("bd,bnd->bn", q, v), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("moe", [False, True])
def test_export_load_retrieve_equals_in_process_retrieval(tmp_path, moe):
  """The index and query tower written by the export retrieve what the in-process cascade retrieves,
  and `cascade()` runs the later stages on it as the full-corpus evaluation does."""
  import jax.numpy as jnp  # noqa: PLC0415

  from cascadejax import export  # noqa: PLC0415
  from cascadejax.corpus.evaluation import item_table  # noqa: PLC0415
  from cascadejax.cascade import Cascade  # noqa: PLC0415
  from cascadejax.corpus.pooled import pooled_top_k  # noqa: PLC0415
  from cascadejax.corpus.topk import exact_top_k  # noqa: PLC0415
  from cascadejax.ops.selection import select  # noqa: PLC0415

  c = _moe(tiny_config()) if moe else tiny_config()
  exp = Experiment.build(c)
  params = exp.init_state().params["cascade"]
  corpus = data_lib.corpus(c.data, exp.data)
  manifest = export.export_cascade(exp.cascade, params, str(tmp_path), gt_num=2, corpus=corpus)
  assert manifest["index"]["size"] == len(corpus) == 60 and manifest["index"]["dim"] == 4
  vectors = np.load(tmp_path / "index" / "vectors.npy")
  assert vectors.dtype == np.float32 and vectors.shape == (60, 4)
  served = export.load(str(tmp_path))
  batch = exp.data.splits["test"].take(slice(0, 7))
  scores, idx, items = served.retrieve(batch.user, 4)
  table = item_table(exp.cascade, params, corpus)
  q = exp.cascade.apply({"params": params}, batch.user, method="query_vectors")
  if moe:
    pools = item_table(exp.cascade, params, corpus, method=Cascade.item_pools)
    assert manifest["index"]["pools"] == "index/pools.npy" and len(set(np.asarray(pools).tolist())) > 1
    want_scores, want_idx = pooled_top_k(q, table, pools, 4, top_k=exact_top_k)
  else:
    want_scores, want_idx = exact_top_k(q, table, 4)
  np.testing.assert_array_equal(idx, want_idx)
  np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(items["category"], corpus.items["category"][idx])
  out = served.cascade(batch.user)
  retrieved = {f: jnp.asarray(v[idx]) for f, v in corpus.items.items()}
  in_process = exp.cascade.apply({"params": params}, batch.user, retrieved).scores
  np.testing.assert_allclose(out["scores"], in_process, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(out["alive"], select(in_process, exp.cascade.ks, where=jnp.asarray(idx >= 0)))
  assert out["alive"][-1].sum(-1).tolist() == [2] * 7
  plain = export.export_cascade(exp.cascade, params, str(tmp_path / "plain"), gt_num=2)
  assert plain["index"] is None
  with pytest.raises(ValueError, match="holds no retrieval index"):
    export.load(str(tmp_path / "plain")).retrieve(batch.user, 4)
