"""`dftopk`: cascade training with a differentiable top-k operator, as the DFTopK paper trains it.

Zhu, Zhang, Wang et al., *Differentiable Fast Top-K Selection for Large-Scale Recommendation*,
arXiv 2510.11472, 2025 (code: zhangzhen97/DFTOPK, `torch/deep_components/loss/two_stage/
topk_loss.py`, `compute_cascade_topk_metrics`, version "dftopkjoint"). Every stage s scores every
valid candidate of a request; y(i) = 1 for the request's top `gt_num` labels (hard, ties towards the
lower index: `ops.selection.ground_truth`). With DFTopK's logits z_s = (x_s - theta_s) / tau,
theta_s halfway between the k_s-th and (k_s+1)-th scores of stage s (`ops.dftopk`), and means
over the valid candidates, then over requests:

    L_s     = mean_i  BCE_logits(z_s(i), y(i))  = mean_i -y log sigmoid(z_s) - (1 - y) log sigmoid(-z_s)
    L_joint = mean_i  BCE(q(i), y(i)),           q = prod_s sigmoid(z_s)
    L       = sum_s 0.5 / w_s^2 L_s + L_joint + sum_s log w_s

with w_s learned (init 1; uncertainty weighting, Kendall et al. 2018, as LCRON) or fixed
(`weighting="fixed"`: L = sum_s lambda_s L_s + L_joint). Every log is floored at -100, as torch's
BCELoss does. Requests with no more than k_s valid candidates get no L_s term (stage s selects all
of them; the reference's lists always hold 40 candidates, more than k). The reference has two stages (retrieval and pre-rank, k = gt_num = 10 for both and
both terms, tau = 500); three or more stages multiply every stage's sigmoid into q and add one
weighted L_s per stage.

The same training runs with the other operators of `ops.soft_topk` (`topk_method`), as the
reference's "googlejoint" and "lapsumjoint" versions do: p_s = soft_topk(x_s, k_s) replaces
sigmoid(z_s), and L_s = mean_i -y log(p_s + eps) - (1 - y) log(1 - p_s + eps).

Options (`config.method.dftopk`); the defaults compute the reference's computation:
  topk_method: "dftopk" (the paper) or any of `ops.soft_topk.TOPK_OPERATORS`.
  temperature: "published" (dftopk 500, the reference's command line; lapsum 5 and sparse_topk 1,
    its comparison's settings; neural_sort and soft_sort 50 and threshold 1, which it does not run
    here), one float, or one per stage.
  relax_k, joint_k: the k of each stage's operator in L_s and in L_joint: "gt_num" (published),
    "stage" (each stage's own k_s) or S ints.
  weighting, relax_weights: "uncertainty" (learned w_s) or "fixed" (one lambda_s per stage).
  eps: "published" (1e-6 for lapsum, as its reference branch; 0 otherwise: the logs are floored)
    or a float in [0, 0.1); added inside the logs of probabilities (not to DFTopK's logit form).
  threshold_grad: True (published: the gradient flows through theta) or False (theta held).
  sparse_as_logit: True (published quirk of the "googlejoint" branch: the sparse top-k mask p_s is
    fed to BCE-with-logits as if it were a logit, and q = prod_s sigmoid(p_s)) or False (p_s is
    used as the probability it is). Only read with topk_method="sparse_topk".
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from cascadejax.data.schema import CascadeBatch
from cascadejax.methods.base import CascadeMethod
from cascadejax.methods.common import per_stage_option, weighted_total, weighting_options
from cascadejax.ops.dftopk import dftopk_logits
from cascadejax.ops.ranking_utils import list_mean
from cascadejax.ops.selection import ground_truth
from cascadejax.ops.soft_topk import TOPK_OPERATORS, soft_topk

PUBLISHED_TEMPERATURES = {"dftopk": 500.0, "lapsum": 5.0, "sparse_topk": 1.0, "neural_sort": 50.0,
                          "soft_sort": 50.0, "threshold": 1.0}
LOG_FLOOR = -100.0  # torch.nn.BCELoss clamps its logs here


def _log(x: jax.Array) -> jax.Array:
  """max(log x, -100) with a finite gradient at x = 0 (values below the smallest normal float floor)."""
  ok = x > jnp.finfo(x.dtype).tiny
  return jnp.where(ok, jnp.maximum(jnp.log(jnp.where(ok, x, 1.0)), LOG_FLOOR), LOG_FLOOR)


class DFTopK(CascadeMethod):
  """Per-stage BCE of each stage's soft top-k against the ground truth, plus the joint BCE of their
  product, balanced by learned uncertainty weights."""

  name = "dftopk"
  defaults = {"topk_method": "dftopk", "temperature": "published", "relax_k": "gt_num", "joint_k": "gt_num",
              "weighting": "uncertainty", "relax_weights": 1.0, "eps": "published", "threshold_grad": True,
              "sparse_as_logit": True}

  def __init__(self, options, **kwargs):
    super().__init__(options, **kwargs)
    o, key = self.options, f"config.method.{self.name}"
    method = o["topk_method"]
    if method not in TOPK_OPERATORS:
      raise ValueError(f"{key}.topk_method: {method!r} is not one of {TOPK_OPERATORS}")
    if o["temperature"] == "published":
      self.temperatures = (PUBLISHED_TEMPERATURES[method],) * self.num_stages
    else:  # a float, a numeric string (a command-line override of the string default), or one per stage
      self.temperatures = per_stage_option(self, "temperature", float)
    if any(not t > 0 for t in self.temperatures):
      raise ValueError(f"{key}.temperature must be positive, got {o['temperature']!r}")
    self.relax_k, self.joint_k, self.relax_weights = weighting_options(self)
    if o["eps"] == "published":
      self.eps = 1e-6 if method == "lapsum" else 0.0
    else:
      try:
        self.eps = float(o["eps"])
      except (TypeError, ValueError):
        self.eps = -1.0
      if not 0 <= self.eps < 0.1:
        raise ValueError(f"{key}.eps must be 'published' or in [0, 0.1), got {o['eps']!r}")
    for flag in ("threshold_grad", "sparse_as_logit"):
      if not isinstance(o[flag], bool):
        raise ValueError(f"{key}.{flag} must be True or False, got {o[flag]!r}")
    self.as_logit = method == "dftopk" or (method == "sparse_topk" and o["sparse_as_logit"])

  def init(self, rng: jax.Array) -> Any:
    """`{"w": [S] ones}` with uncertainty weighting; nothing to learn with fixed weights."""
    del rng
    if self.options["weighting"] == "uncertainty":
      return {"w": jnp.ones((self.num_stages,), jnp.float32)}
    return {}

  def stage_outputs(self, stage_scores: jax.Array, ks: Sequence[int], where: jax.Array) -> jax.Array:
    """`[S, B, N]` what each stage's operator gives at its k: DFTopK's logits z_s, the sparse mask
    when it is read as a logit, else the memberships p_s."""
    o, out = self.options, []
    for s, k in enumerate(ks):
      if o["topk_method"] == "dftopk":
        out.append(dftopk_logits(stage_scores[s], k, where=where, temperature=self.temperatures[s],
                                 threshold_grad=o["threshold_grad"]))
      else:
        out.append(soft_topk(stage_scores[s], k, where=where, method=o["topk_method"],
                             temperature=self.temperatures[s]))
    return jnp.stack(out)

  def bce(self, out: jax.Array, y: jax.Array, where: jax.Array) -> jax.Array:
    """One stage's mean BCE of `out` (a logit if `as_logit`, else a probability) against y."""
    if self.as_logit:
      per_item = -y * jnp.maximum(jax.nn.log_sigmoid(out), LOG_FLOOR) \
                 - (1.0 - y) * jnp.maximum(jax.nn.log_sigmoid(-out), LOG_FLOOR)
    else:
      per_item = -y * _log(out + self.eps) - (1.0 - y) * _log(1.0 - out + self.eps)
    return list_mean(per_item, where=where)

  def loss(self, params, stage_scores: jax.Array, batch: CascadeBatch, *, rng: jax.Array):
    """The DFTopK loss; aux holds L_joint, every L_s (as loss/relax_<stage>), the weights and the
    ground truth's soft memberships."""
    del rng
    where = batch.mask
    y = ground_truth(batch.label, self.gt_num, where=where).astype(stage_scores.dtype)
    out = self.stage_outputs(stage_scores, self.relax_k, where)
    out_j = out if self.joint_k == self.relax_k else self.stage_outputs(stage_scores, self.joint_k, where)
    count = where.sum(-1, keepdims=True)
    relax = jnp.stack([self.bce(out[s], y, where & (count > k)) for s, k in enumerate(self.relax_k)])
    prob = jax.nn.sigmoid if self.as_logit else (lambda v: v)
    q = jnp.prod(prob(out_j), axis=0)
    joint = list_mean(-y * _log(q + self.eps) - (1.0 - y) * _log(1.0 - q + self.eps), where=where)
    aux = {"loss/joint": joint}
    total, terms = weighted_total(relax, joint, weighting=self.options["weighting"], params=params,
                                  relax_weights=self.relax_weights, stage_names=self.stage_names)
    aux.update(terms)
    truth = y > 0.5
    aux["soft_recall/joint"] = list_mean(q, where=truth)
    aux.update({f"soft_recall/{n}": list_mean(prob(out[s]), where=truth) for s, n in enumerate(self.stage_names)})
    return total, aux
