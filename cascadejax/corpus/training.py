"""Retrieval trained against the corpus: in-batch or sampled negatives with the logQ correction.

The cascade methods train every stage on the logged candidates; a retrieval stage that serves from
the whole corpus also has to push down the items no production stage ever put in front of it. This
term, added to any method's loss with weight `config.corpus.weight`, trains the first stage (a
retrieval model scoring by <q, v>, `Cascade.query_vectors` / `item_vectors`; for mixture-of-experts
nominators, s(b, j) is the model's training score, the gate-weighted mixture of its nominators'
<q_be, v_j>, which for fixed pools is the own pool's nominator score it serves by) with a softmax of each
ground-truth item of a request (its top `gt_num` logged candidates by label) against negatives from
the corpus (Yi et al., RecSys 2019, "Sampling-bias-corrected neural modeling for large corpus item
recommendations"):

    z_j = <q_b, v_j> / tau - log Q(j),   l_{b,g} = -log softmax_{j in {y_bg} ∪ negatives}(z)_{y_bg}

- `negatives = "in_batch"`: the ground-truth items of every request of the (global) batch are the
  other examples' negatives; Q(j) is the item's share of the training candidates (smoothed), which
  estimates how often a batch brings it.
- `negatives = "sampled"`: `num_negatives` corpus items drawn with replacement from Q, shared by the
  whole batch (their item tower runs once per step).

Either way the positive's own logit is corrected too (eq. 3 of the paper), a negative that is the
example's positive item (an accidental hit) is dropped, and the log Q term is skipped with
`log_q=False`. `cascadejax.losses.sampled_softmax` has the loss itself.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from cascadejax.cascade import Cascade
from cascadejax.data.item_corpus import Corpus
from cascadejax.data.schema import CascadeBatch
from cascadejax.losses.sampled_softmax import in_batch_softmax_loss, sampled_softmax_loss



def device_arrays(corpus: Corpus, smoothing: float) -> dict[str, Any]:
  """What the training term reads of the corpus, as arrays to pass to the jitted step: every item
  feature's `[M]` rows, `[M]` log Q, and `[V]` the corpus position of each key row."""
  q = corpus.sampling_probability(smoothing)
  return {"items": {f: jnp.asarray(v) for f, v in corpus.items.items()},
          "log_q": jnp.asarray(np.log(q), jnp.float32), "index": jnp.asarray(corpus.index())}


def _ground_truth_slots(batch: CascadeBatch, gt_num: int) -> tuple[jax.Array, jax.Array]:
  """`[B, G]` slots of each request's top `gt_num` valid candidates by label, and whether each is one."""
  g = min(gt_num, batch.mask.shape[-1])
  label = jnp.where(batch.mask, batch.label, -jnp.inf)
  values, slots = jax.lax.top_k(label, g)
  return slots, jnp.isfinite(values)


def _shared_scores(q: jax.Array, v: jax.Array, log_gates: jax.Array | None, mix) -> jax.Array:
  """`[B, C]` score of every request for each of C items `v [C, d]`: <q_b, v_c>, or with pools
  (`q [B, E, d]`, `log_gates [C, E]`) the model's mixture of its nominators' <q_be, v_c>."""
  if log_gates is None:
    return q @ v.T
  return mix(jnp.einsum("bed,cd->bce", q, v), log_gates[None])


def loss(cascade: Cascade, variables: Mapping[str, Any], batch: CascadeBatch, arrays: Mapping[str, Any], *,
         key: str, gt_num: int, negatives: str, num_negatives: int, temperature: float, log_q: bool,
         rng: jax.Array) -> jax.Array:
  """The corpus-negatives loss of one batch (see the module docstring): the mean over the batch's
  ground-truth examples.

  Args:
    cascade: the cascade module; its first stage is trained.
    variables: its variables (`{"params": ...}` plus any collections the update path adds).
    batch: the training batch.
    arrays: `device_arrays(corpus, ...)`.
    key: the corpus's key feature.
    gt_num: the ground truth's size.
    negatives: "in_batch" or "sampled".
    num_negatives: sampled negatives per step.
    temperature: tau, dividing the scores.
    log_q: whether the logits are corrected by log Q.
    rng: the step's key (sampled negatives).
  """
  slots, real = _ground_truth_slots(batch, gt_num)  # [B, G]
  pick = lambda a: jnp.take_along_axis(a, slots, axis=-1)
  positives = {f: pick(jnp.asarray(v)) for f, v in batch.items.items()}
  index = arrays["index"]
  rows = positives[key]
  pos = jnp.where(real & (rows < index.shape[0]), index[jnp.clip(rows, 0, index.shape[0] - 1)], -1)  # corpus positions
  real = real & (pos >= 0)
  q = cascade.apply(variables, batch.user, method=Cascade.query_vectors)  # [B, d], or [B, E, d] with pools
  v = cascade.apply(variables, positives, method=Cascade.item_vectors)  # [B, G, d]
  gates = cascade.apply(variables, positives, method=Cascade.item_log_gates)  # [B, G, E], or None
  mix = lambda s, log_gate: cascade.apply(variables, s, log_gate, method=Cascade.mix_pool_scores)
  lq = arrays["log_q"]
  pos_lq = jnp.where(real, lq[jnp.maximum(pos, 0)], 0.0)
  if negatives == "in_batch":
    b, g = slots.shape
    columns = v.reshape(b * g, -1)
    scores = _shared_scores(q, columns, None if gates is None else gates.reshape(b * g, -1), mix)
    scores = jnp.repeat(scores, g, axis=0)  # [B G, B G]: example (b, g) is row b g + g'
    return in_batch_softmax_loss(scores, log_q=pos_lq.reshape(-1) if log_q else None, item_ids=pos.reshape(-1),
                                 column_where=real.reshape(-1), temperature=temperature, where=real.reshape(-1))
  sampled = jax.random.categorical(rng, lq, shape=(num_negatives,))  # with replacement, from Q
  neg_items = {f: col[sampled][None] for f, col in arrays["items"].items()}
  vn = cascade.apply(variables, neg_items, method=Cascade.item_vectors)[0]  # [K, d], once per step
  neg_gates = None if gates is None else cascade.apply(variables, neg_items, method=Cascade.item_log_gates)[0]
  if gates is None:
    pos_scores = jnp.einsum("bd,bgd->bg", q, v)
  else:
    pos_scores = mix(jnp.einsum("bed,bgd->bge", q, v), gates)
  neg_scores = jnp.broadcast_to(_shared_scores(q, vn, neg_gates, mix)[:, None, :], slots.shape + (num_negatives,))
  return sampled_softmax_loss(pos_scores, neg_scores, positive_log_q=pos_lq if log_q else None,
                              negative_log_q=lq[sampled] if log_q else None, positive_ids=pos, negative_ids=sampled,
                              temperature=temperature, where=real)
