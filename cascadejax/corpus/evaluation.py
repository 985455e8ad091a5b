"""Full-corpus evaluation: the cascade as it serves, retrieving from every item instead of the logged list.

For each test request b, stage 1 (a retrieval model scoring by an inner product: `two_tower`,
`dssm`; or `moe_nominators`, one query per item pool merged round-robin, `cascadejax.corpus.pooled`)
scores every corpus item and keeps its top k_1 (`exact_top_k`, or `approx_top_k` at a
recall target), without a `[B, num_items]` matrix. The later stages then score those k_1 items and
each keeps its top k_s of the survivors, as in the logged cascade (`ops.selection.select`). The
ground truth stays the request's logged top `gt_num` candidates by label (the items that were shown
and engaged with), found in the corpus by their key row. Per stage s:

    corpus:<stage>/recall@G@k_s   |GT ∩ survivors of stages 1..s| / |GT|
    corpus:<stage>/ndcg@k_s       DCG@k_s of the survivors ordered by stage s, gains 2^label - 1 of the
                                  logged label (0 for items that were not logged candidates of the
                                  request), over the ideal DCG@k_s of the logged labels
    corpus_recall_e2e             the last stage's recall: the cascade's end-to-end recall from the corpus

Every value is `(sum over requests, number of requests)`, summed over batches by
`metrics.MetricSums` like the logged-candidate metrics (requests without a valid candidate do not
count). The item table is computed once per evaluation by the retrieval stage's item tower, in
chunks (`item_table`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from cascadejax import models
from cascadejax.cascade import Cascade
from cascadejax.corpus.metrics import retrieval_ndcg, retrieval_recall
from cascadejax.corpus.pooled import pooled_top_k
from cascadejax.corpus.sharded import sharded_top_k
from cascadejax.corpus.topk import DEFAULT_CHUNK, approx_top_k, exact_top_k
from cascadejax.data.item_corpus import Corpus
from cascadejax.data.schema import CascadeBatch
from cascadejax.ops.ranking_utils import pow2m1_gain, valid_lists
from cascadejax.ops.selection import ground_truth, select
from cascadejax.sections import Section

TOP_K = ("exact", "approx")
NEGATIVES = ("none", "in_batch", "sampled")  # config.corpus.negatives (cascadejax.corpus.training)


@dataclasses.dataclass(frozen=True)
class CorpusSection(Section):
  """`config.corpus`: full-corpus evaluation and corpus negatives for retrieval (absent: both off).

  Attributes:
    evaluate: whether the final evaluation of `train.py` also reports the full-corpus metrics
      (`python -m cascadejax.evaluate --corpus` reports them for any finished run).
    top_k: "exact" (blocked matmul + top-k over item chunks) or "approx" (`lax.approx_max_k` per
      chunk; exact on CPU and GPU).
    recall_target: approx's recall target, in (0, 1].
    chunk_size: corpus items scored per step of the top-k scan (memory O(batch * chunk_size)).
    item_batch: corpus items per call of the item tower when the item table is computed.
    negatives: "none", "in_batch" or "sampled": the training term of `cascadejax.corpus.training`,
      added to the method's loss.
    num_negatives: corpus items sampled per step ("sampled").
    weight: the term's weight beside the method's loss.
    temperature: tau of the term's softmax.
    log_q: whether the term corrects its logits by log Q (the sampling-bias correction).
    smoothing: added to every item's candidate count before Q is normalised.
  """

  KEY = "corpus"
  evaluate: bool = False
  top_k: str = "exact"
  recall_target: float = 0.95
  chunk_size: int = DEFAULT_CHUNK
  item_batch: int = 8192
  negatives: str = "none"
  num_negatives: int = 1024
  weight: float = 1.0
  temperature: float = 1.0
  log_q: bool = True
  smoothing: float = 1.0

  def check(self) -> None:
    if self.negatives not in NEGATIVES:
      raise ValueError(f"config.corpus.negatives must be one of {NEGATIVES}, got {self.negatives!r}")
    for key in ("num_negatives",):
      if getattr(self, key) < 1:
        raise ValueError(f"config.corpus.{key} must be >= 1, got {getattr(self, key)!r}")
    for key in ("temperature",):
      if not getattr(self, key) > 0:
        raise ValueError(f"config.corpus.{key} must be positive, got {getattr(self, key)!r}")
    for key in ("weight", "smoothing"):
      if not getattr(self, key) >= 0:
        raise ValueError(f"config.corpus.{key} must be >= 0, got {getattr(self, key)!r}")
    if self.top_k not in TOP_K:
      raise ValueError(f"config.corpus.top_k must be one of {TOP_K}, got {self.top_k!r}")
    if not 0.0 < self.recall_target <= 1.0:
      raise ValueError(f"config.corpus.recall_target must be in (0, 1], got {self.recall_target!r}")
    for key in ("chunk_size", "item_batch"):
      if getattr(self, key) < 1:
        raise ValueError(f"config.corpus.{key} must be >= 1, got {getattr(self, key)!r}")


def has_pools(cascade: Cascade, stage: int = 0) -> bool:
  """Whether stage `stage` retrieves per item pool (`moe_nominators`; see `cascadejax.corpus.pooled`)."""
  spec = cascade.stages[stage]
  return hasattr(type(models.get_model(spec.model, dict(spec.model_kwargs))), "item_pools")


def item_table(cascade: Cascade, params: Any, corpus: Corpus, *, item_batch: int = 8192, stage: int = 0,
               wrap: Callable[[Callable], Callable] = lambda f: f, method: Callable = Cascade.item_vectors
               ) -> jax.Array:
  """`[M, d]`: stage `stage`'s item vectors of every corpus item, `item_batch` items per call (the
  last call padded, so the tower compiles once). `wrap` wraps the jitted tower (e.g. to run it in
  the mesh of row-sharded tables); `method=Cascade.item_pools` gives the `[M]` pools instead."""
  names = tuple(corpus.items)
  size = min(item_batch, len(corpus))

  def tower(p, cols):
    return cascade.apply({"params": p}, {f: c[None] for f, c in zip(names, cols)}, stage=stage, method=method)[0]

  vectors = wrap(jax.jit(tower))

  out = []
  for lo in range(0, len(corpus), size):
    cols = [np.asarray(corpus.items[f][lo:lo + size]) for f in names]
    n = len(cols[0])
    cols = [np.pad(c, (0, size - n)) for c in cols]  # padding row 0; those vectors are dropped
    out.append(vectors(params, cols)[:n])
  return jnp.concatenate(out)


def corpus_metrics(cascade: Cascade, params: Any, batch: CascadeBatch, table: jax.Array,
                   items: Mapping[str, jax.Array], index: jax.Array, *, key: str, gt_num: int,
                   stage_names: Sequence[str], section: CorpusSection = CorpusSection(),
                   where: jax.Array | None = None, mesh: Mesh | None = None, pools: jax.Array | None = None
                   ) -> dict[str, tuple[jax.Array, jax.Array]]:
  """The full-corpus metrics of one batch (see the module docstring), as `name -> (sum, count)`.

  Args:
    cascade: the cascade module (stage 1 must be a retrieval model, `Cascade.query_vectors`).
    params: its parameters.
    batch: a batch of requests; its logged candidates give the ground truth and the gains.
    table: `[M, d]` stage-1 vectors of the corpus items (`item_table`).
    items: item feature -> `[M]` rows of the corpus items (the later stages' input).
    index: `[V]` int32 corpus position of each key row, -1 outside the corpus (`Corpus.index`).
    key: the item feature identifying items.
    gt_num, stage_names: the ground truth's size and the stages' names.
    section: the top-k settings.
    where: optional `[M]` bool, False for rows of `table` that are padding (`pad_corpus`).
    mesh: with more than one device, `table`'s rows are split over all its axes and each device
      takes the top k_1 of its rows before one merge (`sharded_top_k`); the result is the same.
    pools: `[M]` item pools, for a first stage with one query per pool (`has_pools`): each pool
      retrieves its top k_1 and the lists merge round-robin (`cascadejax.corpus.pooled`).
  """
  variables = {"params": params}
  ks = cascade.ks
  q = cascade.apply(variables, batch.user, method=Cascade.query_vectors)
  chunk = min(section.chunk_size, table.shape[0] // (mesh.size if mesh is not None else 1))
  if mesh is not None and mesh.size > 1:
    search = functools.partial(sharded_top_k, mesh=mesh, item_axes=tuple(mesh.axis_names), chunk_size=chunk,
                               approximate=section.top_k == "approx", recall_target=section.recall_target)
  elif section.top_k == "exact":
    search = functools.partial(exact_top_k, chunk_size=chunk)
  else:
    search = functools.partial(approx_top_k, chunk_size=chunk, recall_target=section.recall_target)
  if q.ndim == 3:  # one query per item pool
    _, idx = pooled_top_k(q, table, pools, ks[0], top_k=search, where=where)
  else:
    _, idx = search(q, table, ks[0], where=where)
  got = idx >= 0
  retrieved = {f: jnp.where(got, col[jnp.maximum(idx, 0)], 0) for f, col in items.items()}
  scores = cascade.apply(variables, batch.user, retrieved).scores  # [S, B, k_1]
  alive = select(scores, ks, where=got)
  mask = batch.mask
  rows = jnp.asarray(batch.items[key])
  cand = jnp.where(mask & (rows < index.shape[0]), index[jnp.clip(rows, 0, index.shape[0] - 1)], -1)  # [B, N]
  in_corpus = mask & (cand >= 0)  # every candidate is, for the corpora `cascadejax.data.corpus` builds
  truth = ground_truth(batch.label, gt_num, where=mask) & in_corpus
  gains = pow2m1_gain(batch.label, where=mask)
  count = valid_lists(mask).sum().astype(jnp.float32)
  out = {}
  for s, (name, k) in enumerate(zip(stage_names, ks)):
    order = jax.lax.top_k(jnp.where(alive[s], scores[s], -jnp.inf), k)[1]  # survivors in stage s's order
    ranked = jnp.where(jnp.take_along_axis(alive[s], order, -1), jnp.take_along_axis(idx, order, -1), -1)
    recall = retrieval_recall(ranked, cand, where=truth, reduce_fn=None)
    ndcg = retrieval_ndcg(ranked, cand, where=in_corpus, gains=gains, topn=k, reduce_fn=None)
    out[f"corpus:{name}/recall@{gt_num}@{k}"] = (recall.sum(), count)
    out[f"corpus:{name}/ndcg@{k}"] = (ndcg.sum(), count)
  out["corpus_recall_e2e"] = out[f"corpus:{stage_names[-1]}/recall@{gt_num}@{ks[-1]}"]
  return out
