"""`rankflow`: each stage trained on the flow of candidates its predecessor passes on, tutored by its
successor (Qin et al., *RankFlow: Joint Optimization of Multi-Stage Cascade Ranking Systems as
Flows*, SIGIR 2022).

RankFlow fits every stage to its own data distribution: stage s sees the candidates that stages
1..s-1 select, not every logged candidate, and its supervision comes from the logs and from the
stage after it. In one jitted step the selection is the cascade's *current* hard top-k, taken on
stop-gradient scores. With A_1 = the valid candidates of a request and, for s = 1..S,

    A_{s+1} = top-k_s of A_s by sg(score_s)                (what stage s passes on)
    T_s     = top-pair_k[s+1] of A_{s+1} by sg(score_{s+1}),  B_s = A_{s+1} \\ T_s

the loss is

    L_self,s    = mean_{i in A_s}      BCE(sigmoid(score_s(i)), y_s(i))
    L_distill,s = mean_{i in A_{s+1}}  (score_s(i) - sg(score_{s+1}(i)))^2                  (s < S)
    L_pair,s    = mean_requests  -log sigmoid(mean_{T_s} score_s - mean_{B_s} score_s)       (s < S)
    L           = sum_s  a_s L_self,s + b_s L_distill,s + c_s L_pair,s

L_distill and L_pair are the "tutor" terms: the later, stronger stage's scores (distillation) and its
top/bottom split (pairwise) of what stage s selected supervise stage s, under stop_gradient, so a
stage never learns to please its predecessor. L_self and L_distill average over candidate entries
(as `independent` does); L_pair averages over the requests where both T_s and B_s are non-empty.

Options (`config.method.rankflow`):
  labels: the y_s of L_self: "ground_truth" (the top `gt_num` labels, every stage; what LCRON's
    RankFlow baseline trains on), "exposed" (logged final exposure, stage reached = S: the paper's
    impression labels), or "stage" (logged survival of stage s, as `independent`).
  self_weight, distill_weight, pair_weight: a_s, b_s, c_s (one float or one per stage; the last
    stage has no successor, so its distill and pair entries are unused). pair_weight also takes
    "published" (the default): 0 in a two-stage cascade, where the LCRON authors' code sets its
    alpha = 0 (total = L_self + (1 - alpha) L_distill + alpha L_pair), and 1 otherwise, where their
    three-stage code weighs all seven terms 1. L_pair is computed and logged either way.
  pair_k: the size of T_s, given per stage and read at the successor s+1: "stage" (k_{s+1}, the
    successor's own selection), "gt_num", or S ints.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cascadejax.data.schema import CascadeBatch
from cascadejax.methods.base import CascadeMethod
from cascadejax.methods.common import per_stage_option, stage_ks_option
from cascadejax.losses.ranking import mse_loss, sigmoid_bce_loss
from cascadejax.ops.ranking_utils import item_mean, safe_reduce
from cascadejax.ops.selection import ground_truth, hard_topk

LABELS = ("ground_truth", "exposed", "stage")


def pair_loss(scores: jax.Array, top: jax.Array, bottom: jax.Array) -> jax.Array:
  """`-log sigmoid(mean of scores over top - mean over bottom)`, averaged over usable lists.

  Args:
    scores: `[..., n]` scores of the stage being trained.
    top, bottom: `[..., n]` bool, disjoint groups of each list.

  Returns:
    A scalar: the mean over the lists where both groups are non-empty (0 if there are none).
  """
  usable = top.any(-1) & bottom.any(-1)
  per_list = -jax.nn.log_sigmoid(item_mean(scores, where=top) - item_mean(scores, where=bottom))
  return safe_reduce(per_list, where=usable)


class RankFlow(CascadeMethod):
  """Stage-specific training data from the current cascade, plus distillation from the next stage."""

  name = "rankflow"
  defaults = {"labels": "ground_truth", "self_weight": 1.0, "distill_weight": 1.0, "pair_weight": "published",
              "pair_k": "stage"}

  def __init__(self, options, **kwargs):
    super().__init__(options, **kwargs)
    if self.options["labels"] not in LABELS:
      raise ValueError(f"config.method.rankflow.labels must be one of {LABELS}, got {self.options['labels']!r}")
    self.weights = {}
    for term in ("self", "distill", "pair"):
      key = f"{term}_weight"
      if term == "pair" and self.options[key] == "published":
        self.weights[term] = (0.0 if self.num_stages == 2 else 1.0,) * self.num_stages
      else:
        self.weights[term] = per_stage_option(self, key, float)
      if any(not w >= 0 for w in self.weights[term]):  # also rejects NaN
        raise ValueError(f"config.method.rankflow.{key} must be >= 0, got {self.options[key]!r}")
    self.pair_k = stage_ks_option(self, "pair_k")

  def labels(self, batch: CascadeBatch, stage: int) -> jax.Array:
    """`[B, N]` bool targets y_s of stage `stage` (0-based) for L_self."""
    kind = self.options["labels"]
    if kind == "ground_truth":
      return ground_truth(batch.label, self.gt_num, where=batch.mask)
    if kind == "exposed":
      return batch.stage >= self.num_stages
    return batch.stage > stage

  def candidates(self, stage_scores: jax.Array, where: jax.Array) -> list[jax.Array]:
    """`[A_1, ..., A_{S+1}]` (0-based: `out[s]` = what stage s sees), each `[B, N]` bool.

    `out[0]` is every valid candidate; `out[s + 1]` is stage s's hard top-k_s of `out[s]`, on
    stop-gradient scores.
    """
    scores = jax.lax.stop_gradient(stage_scores)
    out = [where]
    for s, k in enumerate(self.ks):
      out.append(hard_topk(scores[s], k, where=out[-1]))
    return out

  def loss(self, params, stage_scores: jax.Array, batch: CascadeBatch, *, rng: jax.Array):
    """The RankFlow loss; aux holds every stage's L_self, L_distill and L_pair."""
    del params, rng
    cand = self.candidates(stage_scores, batch.mask)
    teacher = jax.lax.stop_gradient(stage_scores)
    terms, total = {}, jnp.zeros((), stage_scores.dtype)
    for s, name in enumerate(self.stage_names):
      own = sigmoid_bce_loss(stage_scores[s], self.labels(batch, s), where=cand[s])
      terms[f"loss/self_{name}"] = own
      total += self.weights["self"][s] * own
      if s + 1 == self.num_stages:
        break
      selected = cand[s + 1]
      distill = mse_loss(stage_scores[s], teacher[s + 1], where=selected)
      top = cand[s + 2] if self.pair_k[s + 1] == self.ks[s + 1] else hard_topk(
          teacher[s + 1], self.pair_k[s + 1], where=selected)
      pair = pair_loss(stage_scores[s], top, selected & ~top)
      terms[f"loss/distill_{name}"], terms[f"loss/pair_{name}"] = distill, pair
      total += self.weights["distill"][s] * distill + self.weights["pair"][s] * pair
    return total, terms
