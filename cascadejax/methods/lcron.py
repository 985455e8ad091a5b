"""`lcron`: Learning Cascade Ranking as One Network (Wang et al., ICML 2025, arXiv 2503.09492).

Every stage scores every valid candidate of a request. For stage s, P_s is the relaxed permutation
matrix of its scores (NeuralSort by default; rows = ranks) and c_s(i) = sum_r P_s[r, i] the mass of
candidate i's column. Its soft top-k membership and the rest of its mass are

    m_s(i) = sum_{r < k} P_s[r, i] / (c_s(i) + eps_n),     r_s(i) = sum_{r >= k} P_s[r, i] / (c_s(i) + eps_n)

(`cascadejax.ops.soft_topk.split_mass`). A membership operator (`threshold`, `dftopk`, `lapsum`,
`sparse_topk`: `soft_topk.MEMBERSHIP_OPERATORS`) gives p_s directly: m_s = p_s, r_s = 1 - p_s.
The ground truth is read from the label order: y_top(i) and y_rest(i) are the shares of i's rank in
the label permutation above and below rank gt_num (`common.label_split`: 1/0 or 0/1 without ties).
With means over valid candidates, then over requests:

    L_relax,s = mean_i  -y_top log(m_s + eps) - y_rest log(r_s + eps)        (k = relax_k[s])
    L_joint   = mean_i  -y_top log(prod_s m_s + eps)
                        - clip(1 - y_top, 0, 1) log(1 - prod_s (1 - r_s) + eps)  (k = joint_k[s])
    L         = sum_s 0.5 / w_s^2 L_relax,s + L_joint + log prod_s w_s

L_joint is the negative log of a lower bound of the probability that the ground truth survives the
whole cascade; the per-stage L_relax terms tighten that bound. The w_s are learned (init 1:
uncertainty weighting, Kendall et al. 2018) or fixed (`weighting="fixed"`: L = sum_s lambda_s
L_relax,s + L_joint). Requests with no more than k valid candidates get no L_relax,s term.

Options (`config.method.lcron`); the defaults compute what the authors' code computes
(kwai/LCRON, checked against its numbers by tests/test_reference_fidelity.py):
  topk_method: "neural_sort" (the paper), "soft_sort", or a membership operator with O(n) memory:
    "threshold", "dftopk", "lapsum", "sparse_topk" (`cascadejax.ops.soft_topk.TOPK_OPERATORS`;
    DFTopK's published comparison runs dftopk at temperature 500, lapsum at 5, sparse_topk at 1).
  temperature: one float for every stage, or one per stage (published: 50).
  relax_k, joint_k: the k of each stage's membership in each term: "gt_num" (every stage at
    k = gt_num: the published code's setting for both terms, whatever k's are configured),
    "stage" (each stage's own selection size k_s), or a tuple of S ints.
  weighting: "uncertainty" (learned w_s) or "fixed" (`relax_weights`, one lambda_s per stage).
  eps: added inside every log, as in the published code.
  normaliser_grad: False (published: c_s is held constant in the gradient) or True.
  normaliser_eps: eps_n, added to c_s (published 1e-6).
  joint_negative: "rest" (published: a negative survives stage s with probability 1 - r_s) or
    "top" (with probability m_s; equal values up to eps_n, different gradients).
  tie_weighting: how tied labels below gt_num weigh in L_relax: "fraction" (shares summing to 1,
    as the published two-stage code), "count" (each tied negative weighs its tie-group size, as the
    published three-stage code, which thresholds its label matrix), or "published" (fraction for
    two stages, count for three or more).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from cascadejax.data.schema import CascadeBatch
from cascadejax.methods.base import CascadeMethod
from cascadejax.methods.common import label_split, per_stage_option, weighted_total, weighting_options
from cascadejax.ops.ranking_utils import list_mean
from cascadejax.ops.soft_sort import neural_sort, soft_sort
from cascadejax.ops.soft_topk import MEMBERSHIP_OPERATORS, TOPK_OPERATORS
from cascadejax.ops.soft_topk import soft_topk, split_mass

TIE_WEIGHTINGS = ("published", "fraction", "count")


class LCRON(CascadeMethod):
  """End-to-end cascade loss: a soft lower bound of ground-truth survival plus per-stage terms."""

  name = "lcron"
  defaults = {"topk_method": "neural_sort", "temperature": 50.0, "relax_k": "gt_num",
              "joint_k": "gt_num", "weighting": "uncertainty", "relax_weights": 1.0, "eps": 1e-6,
              "normaliser_grad": False, "normaliser_eps": 1e-6, "joint_negative": "rest",
              "tie_weighting": "published"}

  def __init__(self, options, **kwargs):
    super().__init__(options, **kwargs)
    o = self.options
    if o["topk_method"] not in TOPK_OPERATORS:
      raise ValueError(f"config.method.lcron.topk_method: {o['topk_method']!r} is not one of {TOPK_OPERATORS}")
    self.temperatures = per_stage_option(self, "temperature", float)
    if any(not t > 0 for t in self.temperatures):
      raise ValueError(f"config.method.lcron.temperature must be positive, got {o['temperature']!r}")
    self.relax_k, self.joint_k, self.relax_weights = weighting_options(self)
    for key in ("eps", "normaliser_eps"):
      if not 0 <= float(o[key]) < 0.1:
        raise ValueError(f"config.method.lcron.{key} must be in [0, 0.1), got {o[key]!r}")
    if not isinstance(o["normaliser_grad"], bool):
      raise ValueError(f"config.method.lcron.normaliser_grad must be True or False, got {o['normaliser_grad']!r}")
    if o["joint_negative"] not in ("rest", "top"):
      raise ValueError(f"config.method.lcron.joint_negative must be 'rest' or 'top', got {o['joint_negative']!r}")
    if o["tie_weighting"] not in TIE_WEIGHTINGS:
      raise ValueError(f"config.method.lcron.tie_weighting must be one of {TIE_WEIGHTINGS}, "
                       f"got {o['tie_weighting']!r}")
    ties = o["tie_weighting"]
    self.count_ties = ties == "count" or (ties == "published" and self.num_stages >= 3)

  def init(self, rng: jax.Array) -> Any:
    """`{"w": [S] ones}` with uncertainty weighting; nothing to learn with fixed weights."""
    del rng
    if self.options["weighting"] == "uncertainty":
      return {"w": jnp.ones((self.num_stages,), jnp.float32)}
    return {}

  def memberships(self, stage_scores: jax.Array, ks: Sequence[int], where: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`[S, B, N]` soft top-k_s membership m_s of every candidate at every stage, and the rest r_s."""
    o, tops, rests = self.options, [], []
    for s, k in enumerate(ks):
      if o["topk_method"] in MEMBERSHIP_OPERATORS:
        top = soft_topk(stage_scores[s], k, where=where, method=o["topk_method"], temperature=self.temperatures[s])
        rest = jnp.where(where, 1.0 - top, 0.0)
      else:
        relax = neural_sort if o["topk_method"] == "neural_sort" else soft_sort
        perm = relax(stage_scores[s], temperature=self.temperatures[s], where=where)
        top, rest = split_mass(perm, k, normaliser_grad=o["normaliser_grad"], eps=float(o["normaliser_eps"]))
      tops.append(top)
      rests.append(rest)
    return jnp.stack(tops), jnp.stack(rests)

  def loss(self, params, stage_scores: jax.Array, batch: CascadeBatch, *, rng: jax.Array):
    """The LCRON loss; aux holds L_joint, every L_relax,s and the stage weights."""
    del rng
    where, eps = batch.mask, float(self.options["eps"])
    count = where.sum(-1, keepdims=True)
    y_top, y_rest = label_split(batch.label, self.gt_num, where=where, count_ties=self.count_ties)
    top, rest = self.memberships(stage_scores, self.relax_k, where)
    top_j, rest_j = (top, rest) if self.joint_k == self.relax_k else self.memberships(stage_scores, self.joint_k, where)
    survive = jnp.prod(top_j, axis=0)
    if self.options["joint_negative"] == "rest":
      negative_survives = 1.0 - jnp.prod(1.0 - rest_j, axis=0)
    else:
      negative_survives = 1.0 - survive
    joint = list_mean(-y_top * jnp.log(survive + eps)
                      - jnp.clip(1.0 - y_top, 0.0, 1.0) * jnp.log(negative_survives + eps), where=where)
    relax = jnp.stack([
        list_mean(-y_top * jnp.log(top[s] + eps) - y_rest * jnp.log(rest[s] + eps), where=where & (count > k))
        for s, k in enumerate(self.relax_k)])
    aux = {"loss/joint": joint}
    total, terms = weighted_total(relax, joint, weighting=self.options["weighting"], params=params,
                                  relax_weights=self.relax_weights, stage_names=self.stage_names)
    aux.update(terms)
    # How much soft membership the ground truth holds: near the hard recall when the relaxation is
    # sharp, far from it when the temperature is too high for the current score scale.
    truth = y_top > 0.5
    aux["soft_recall/joint"] = list_mean(survive, where=truth)
    aux.update({f"soft_recall/{n}": list_mean(top[s], where=truth) for s, n in enumerate(self.stage_names)})
    return total, aux
