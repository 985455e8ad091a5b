"""`icc`: joint cascade training through soft cutoff indicators (Gallagher et al., WSDM 2019).

Gallagher, Chen, Blanco and Culpepper (*Joint Optimization of Cascade Ranking Models*, WSDM 2019,
doi:10.1145/3289600.3290986) write the whole cascade's output ranking as one differentiable score.
Stage j of S keeps its top k_j; its hard survival test 1[f_j(i) >= kappa_j] becomes the indicator

    I_j(i) = sigmoid((f_j(i) - kappa_j) / tau_j)
    kappa_j = the k_j-th largest score of stage j among the request's valid candidates

In the paper the last stage only ranks (I_S = 0); the LCRON authors' baseline, the default here
(`gate_last`), gates it too. The probability that candidate i leaves the cascade at stage j
(passes stages 1..j-1, is cut by stage j; the last stage's "cut" is the final ranking) is

    g_j(i) = (1 - I_j(i)) prod_{l<j} I_l(i)     for j < S
    g_S(i) = prod_{l<S} I_l(i)     (paper: sum_j g_j = 1)    or    prod_{l<=S} I_l(i)   (gate_last)

The cascade's score of i is the score of the stage it leaves at, in expectation:

    F(i) = sum_j w_j g_j(i) e_j(i)
    e_j  = f_j                  score_type "independent" (the exit stage's own score)
           sum_{l<=j} f_l       score_type "full"        (later stages add to earlier scores)
           max_{l<=j} f_l       score_type "weak"

and every stage is trained at once by a pairwise loss of F against the graded `label` order (by
default the LCRON authors' BCE over every slot pair, `slot_pair_bce`; RankNet in the paper's
neural form). A stage's gradient thus flows through its own score where it decides an item's exit,
and through its indicator into the weights of every later stage.

Options (`config.method.icc`); the defaults compute what the LCRON authors' PyTorch baseline
computes (kwai/LCRON, checked by tests/test_reference_fidelity.py), which differs from the paper's
own LambdaMART cascades in several places:
  temperature: tau, one float or one per stage (default 1e-3, the LCRON authors': nearly hard
    gates; Gallagher et al.'s published "independent-logistic" setting is 0.4, their "full" 0.5).
  score_type: "independent" (default), "full" or "weak": the paper's three cascade scores.
  stage_weights: w_j, one float or one per stage, or "published" (default: the LCRON authors'
    multipliers, 1, 1 for two stages and 1, 2, 4, ... for three or more; 1 is the paper's F).
  cutoff: how kappa_j is taken: "kth_grad" (default: the k_j-th largest score, with its gradient,
    as in the LCRON authors' baseline), "kth" (the same value under stop_gradient, as the paper's
    gradient treats it: constant within a step) or "midpoint" (halfway between the k_j-th and
    (k_j + 1)-th scores, stop_gradient, so the k_j-th item's gate is above 1/2 and the next
    one's below). With "kth"/"kth_grad" a list with at most k_j valid candidates uses its lowest
    score (as the authors' code does: that item's gate is 1/2); with "midpoint" it passes whole.
    Every cut-off is taken over all valid candidates of the request, not only those that passed
    the earlier gates.
  cutoff_k: k_j of each gate: "published" (default: each stage's own selection size, except that
    the last gate reuses the one before it, k_{S-1}, as the LCRON authors' code reads the previous
    stage's k there), "stage" (each stage's own k), "gt_num", or S ints (one int for every stage).
  gate_last: True (default, as the LCRON authors' baseline: the last stage is gated too, so its
    term is w_S prod_{l<=S} I_l f_S and a candidate failing the last gate scores about 0) or False
    (the paper: I_S = 0, the last stage only ranks).
  pair_loss: "pairwise_bce" (default, the LCRON authors': for every pair of slots p < q, the
    logistic loss of F(p) - F(q) with target 1[label_p > label_q], so a tied pair pushes the
    earlier slot down; the sum is divided by n^2 per list: `slot_pair_bce`), "ranknet" (mean over
    the pairs label_i > label_j), "lambdarank" (the objective of the paper's LambdaMART cascades),
    "lambdaloss" (NDCG-Loss2++) or "hinge"; `topn` is the NDCG cutoff of the lambda losses.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cascadejax.data.schema import CascadeBatch
from cascadejax.methods.base import CascadeMethod
from cascadejax.methods.common import per_stage_option, stage_ks_option
from cascadejax.losses.pairwise import hinge_loss, lambdaloss, lambdarank_loss, ranknet_loss
from cascadejax.ops.ranking_utils import safe_reduce, valid_lists
from cascadejax.ops.selection import ground_truth

SCORE_TYPES = ("independent", "full", "weak")
CUTOFFS = ("kth", "kth_grad", "midpoint")
PAIR_LOSSES = ("pairwise_bce", "ranknet", "lambdarank", "lambdaloss", "hinge")


def slot_pair_bce(scores: jax.Array, labels: jax.Array, *, where: jax.Array) -> jax.Array:
  """Logistic loss on every pair of valid slots p < q, tied pairs included, per list / n^2.

      L_list = (1 / n^2) sum_{p < q} softplus(s_p - s_q) - (s_p - s_q) 1[y_p > y_q]

  A strictly ordered pair costs softplus(s_worse - s_better) whichever slot comes first; a tied
  pair costs softplus(s_p - s_q), pushing the earlier slot down, so the loss depends on the slot
  order inside groups of tied labels. n is the list's number of valid slots. O(n^2) memory per list.

  Args:
    scores: `[..., n]` scores.
    labels: `[..., n]` graded labels.
    where: `[..., n]` bool, the valid slots.

  Returns:
    A scalar: the mean over lists with a valid slot (0 if none has).
  """
  n = scores.shape[-1]
  gap = scores[..., :, None] - scores[..., None, :]
  better = labels[..., :, None] > labels[..., None, :]
  pairs = jnp.triu(jnp.ones((n, n), bool), 1) & where[..., :, None] & where[..., None, :]
  per_list = jnp.where(pairs, jax.nn.softplus(jnp.where(better, -gap, gap)), 0.0).sum((-2, -1))
  m = where.sum(-1)
  per_list = per_list / jnp.maximum(m * m, 1).astype(per_list.dtype)
  return safe_reduce(per_list, where=valid_lists(where))


def kth_score(scores: jax.Array, k: int, *, where: jax.Array, midpoint: bool = False) -> jax.Array:
  """`[..., 1]` the k-th largest valid score of each list (its lowest valid one if it has <= k).

  With `midpoint`, the mean of the k-th and (k+1)-th largest when the list has more than k valid
  scores. Lists without valid scores get 0. Gradients flow to the chosen scores only.
  """
  n = scores.shape[-1]
  depth = min(k + 1, n)
  top = jax.lax.top_k(jnp.where(where, scores, -jnp.inf), depth)[0]
  count = where.sum(-1, keepdims=True)
  pick = lambda r: jnp.take_along_axis(top, jnp.clip(r, 0, depth - 1), axis=-1)
  kth = pick(jnp.minimum(count, k) - 1)
  if midpoint:
    kth = jnp.where(count > k, 0.5 * (kth + pick(jnp.full_like(count, k))), kth)
  return jnp.where(count > 0, kth, 0.0)


class ICC(CascadeMethod):
  """The cascade's expected exit-stage score, trained end to end with a pairwise loss."""

  name = "icc"
  defaults = {"temperature": 1e-3, "score_type": "independent", "stage_weights": "published",
              "cutoff": "kth_grad", "cutoff_k": "published", "gate_last": True, "pair_loss": "pairwise_bce",
              "topn": None}

  def __init__(self, options, **kwargs):
    super().__init__(options, **kwargs)
    o = self.options
    self.temperatures = per_stage_option(self, "temperature", float)
    if any(not t > 0 for t in self.temperatures):
      raise ValueError(f"config.method.icc.temperature must be positive, got {o['temperature']!r}")
    if o["stage_weights"] == "published":
      self.stage_weights = (1.0, 1.0) if self.num_stages == 2 else tuple(2.0 ** j for j in range(self.num_stages))
    else:
      self.stage_weights = per_stage_option(self, "stage_weights", float)
    for key, allowed in (("score_type", SCORE_TYPES), ("cutoff", CUTOFFS), ("pair_loss", PAIR_LOSSES)):
      if o[key] not in allowed:
        raise ValueError(f"config.method.icc.{key} must be one of {allowed}, got {o[key]!r}")
    if o["cutoff_k"] == "published":
      self.cutoff_k = self.ks[:-1] + self.ks[-2:-1] if self.num_stages > 1 else self.ks
    else:
      self.cutoff_k = stage_ks_option(self, "cutoff_k")
    if not isinstance(o["gate_last"], bool):
      raise ValueError(f"config.method.icc.gate_last must be True or False, got {o['gate_last']!r}")
    topn = o["topn"]
    if topn is not None and (isinstance(topn, bool) or not isinstance(topn, int) or topn < 1):
      raise ValueError(f"config.method.icc.topn must be None or an int >= 1, got {topn!r}")

  def gates(self, stage_scores: jax.Array, where: jax.Array) -> jax.Array:
    """`[S, B, N]` the indicators I_j (the last one 0 unless `gate_last`)."""
    cutoff = self.options["cutoff"]
    out = []
    for j in range(self.num_stages):
      if j == self.num_stages - 1 and not self.options["gate_last"]:
        out.append(jnp.zeros_like(stage_scores[j]))
        continue
      k = self.cutoff_k[j]
      kappa = kth_score(stage_scores[j], k, where=where, midpoint=cutoff == "midpoint")
      if cutoff != "kth_grad":
        kappa = jax.lax.stop_gradient(kappa)
      gate = jax.nn.sigmoid((stage_scores[j] - kappa) / self.temperatures[j])
      if cutoff == "midpoint":   # a list with at most k candidates passes whole
        gate = jnp.where(where.sum(-1, keepdims=True) > k, gate, 1.0)
      out.append(gate)
    return jnp.stack(out)

  def ensemble(self, stage_scores: jax.Array, where: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The cascade score F `[B, N]` and the gates `[S, B, N]`."""
    gates = self.gates(stage_scores, where)
    score_type = self.options["score_type"]
    if score_type == "full":
      exit_scores = jnp.cumsum(stage_scores, axis=0)
    elif score_type == "weak":
      exit_scores = jax.lax.cummax(stage_scores, axis=0)
    else:
      exit_scores = stage_scores
    passed = jnp.cumprod(gates, axis=0)   # prod_{l<=j} I_l
    before = jnp.concatenate([jnp.ones_like(passed[:1]), passed[:-1]])   # prod_{l<j} I_l
    exits = before * (1.0 - gates)
    if self.options["gate_last"]:   # the last stage ranks only what passes its own gate too
      exits = exits.at[-1].set(passed[-1])
    w = jnp.asarray(self.stage_weights, stage_scores.dtype)[:, None, None]
    return jnp.sum(w * exits * exit_scores, axis=0), gates

  def loss(self, params, stage_scores: jax.Array, batch: CascadeBatch, *, rng: jax.Array):
    """Pairwise loss of the cascade score against `label`; aux holds gate and soft-recall diagnostics."""
    del params, rng
    where = batch.mask
    score, gates = self.ensemble(stage_scores, where)
    kind, topn = self.options["pair_loss"], self.options["topn"]
    if kind == "pairwise_bce":
      total = slot_pair_bce(score, batch.label, where=where)
    elif kind == "ranknet":
      total = ranknet_loss(score, batch.label, where=where)
    elif kind == "lambdarank":
      total = lambdarank_loss(score, batch.label, where=where, topn=topn)
    elif kind == "lambdaloss":
      total = lambdaloss(score, batch.label, where=where, topn=topn)
    else:
      total = hinge_loss(score, batch.label, where=where)
    aux = {"loss/ensemble": total}
    # How much of the ground truth the soft gates let through, stage by stage (cf. hard recall).
    truth = ground_truth(batch.label, self.gt_num, where=where)
    passed = jax.lax.stop_gradient(jnp.cumprod(gates, axis=0))
    gated = self.num_stages if self.options["gate_last"] else self.num_stages - 1
    for j in range(gated):
      aux[f"soft_recall/{self.stage_names[j]}"] = safe_reduce(passed[j], where=truth)
    return total, aux
