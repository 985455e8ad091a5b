"""`lcron`: Learning Cascade Ranking as One Network (Wang et al., ICML 2025, arXiv 2503.09492).

Every stage scores every valid candidate of a request. For stage s, p_s(i) is the soft top-k
membership of candidate i (`cascadejax.ops.soft_topk`), and y(i) = 1 if i is among the request's
top `gt_num` labels. With means over valid candidates, then over requests:

    L_relax,s = mean_i  -y log p_s - (1 - y) log(1 - p_s)                  (p_s at k = relax_k[s])
    L_joint   = mean_i  -y log prod_s p_s - (1 - y) log(1 - prod_s p_s)    (p_s at k = joint_k[s])
    L         = sum_s 0.5 / w_s^2 L_relax,s + L_joint + log prod_s w_s

L_joint is the negative log of a lower bound of the probability that the ground truth survives the
whole cascade; the per-stage L_relax terms tighten that bound. The w_s are learned (init 1:
uncertainty weighting, Kendall et al. 2018) or fixed (`weighting="fixed"`: L = sum_s lambda_s
L_relax,s + L_joint).

Options (`config.method.lcron`):
  topk_method: "neural_sort" (the paper), "soft_sort" or "threshold" (O(n) memory).
  temperature: one float for every stage, or one per stage.
  relax_k, joint_k: the k of each stage's p_s in each term: "gt_num" (every stage at k = gt_num,
    the setting of the authors' published code for both terms), "stage" (each stage's own selection
    size k_s), or a tuple of S ints.
  weighting: "uncertainty" (learned w_s) or "fixed" (`relax_weights`, one lambda_s per stage).
  eps: added inside every log, as in the published code.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from cascadejax.data.schema import CascadeBatch
from cascadejax.losses.cascade.base import CascadeMethod
from cascadejax.losses.cascade.common import binary_cross_entropy, per_stage_option, stage_ks_option
from cascadejax.losses.cascade.common import list_mean as _list_mean
from cascadejax.metrics import ground_truth
from cascadejax.ops.soft_topk import METHODS as TOPK_METHODS
from cascadejax.ops.soft_topk import soft_topk


class LCRON(CascadeMethod):
  """End-to-end cascade loss: a soft lower bound of ground-truth survival plus per-stage terms."""

  name = "lcron"
  defaults = {"topk_method": "neural_sort", "temperature": 50.0, "relax_k": "gt_num",
              "joint_k": "gt_num", "weighting": "uncertainty", "relax_weights": 1.0, "eps": 1e-6}

  def __init__(self, options, **kwargs):
    super().__init__(options, **kwargs)
    o = self.options
    if o["topk_method"] not in TOPK_METHODS:
      raise ValueError(f"config.method.lcron.topk_method: {o['topk_method']!r} is not one of {TOPK_METHODS}")
    self.temperatures = per_stage_option(self, "temperature", float)
    if any(not t > 0 for t in self.temperatures):
      raise ValueError(f"config.method.lcron.temperature must be positive, got {o['temperature']!r}")
    self.relax_k = stage_ks_option(self, "relax_k")
    self.joint_k = stage_ks_option(self, "joint_k")
    if o["weighting"] not in ("uncertainty", "fixed"):
      raise ValueError("config.method.lcron.weighting must be 'uncertainty' or 'fixed', "
                       f"got {o['weighting']!r}")
    self.relax_weights = per_stage_option(self, "relax_weights", float)
    if not 0 <= float(o["eps"]) < 0.1:
      raise ValueError(f"config.method.lcron.eps must be in [0, 0.1), got {o['eps']!r}")

  def init(self, rng: jax.Array) -> Any:
    """`{"w": [S] ones}` with uncertainty weighting; nothing to learn with fixed weights."""
    del rng
    if self.options["weighting"] == "uncertainty":
      return {"w": jnp.ones((self.num_stages,), jnp.float32)}
    return {}

  def memberships(self, stage_scores: jax.Array, ks: Sequence[int], where: jax.Array) -> jax.Array:
    """`[S, B, N]` soft top-k_s membership of every candidate at every stage."""
    return jnp.stack([
        soft_topk(stage_scores[s], k, where=where, method=self.options["topk_method"],
                  temperature=self.temperatures[s])
        for s, k in enumerate(ks)])

  def loss(self, params, stage_scores: jax.Array, batch: CascadeBatch, *, rng: jax.Array):
    """The LCRON loss; aux holds L_joint, every L_relax,s and the stage weights."""
    del rng
    where, eps = batch.mask, float(self.options["eps"])
    y = ground_truth(batch.label, self.gt_num, where=where)
    p_relax = self.memberships(stage_scores, self.relax_k, where)
    p_joint = p_relax if self.joint_k == self.relax_k else self.memberships(stage_scores, self.joint_k, where)
    joint = binary_cross_entropy(jnp.prod(p_joint, axis=0), y, where=where, eps=eps)
    relax = jnp.stack([binary_cross_entropy(p, y, where=where, eps=eps) for p in p_relax])
    aux = {"loss/joint": joint}
    if self.options["weighting"] == "uncertainty":
      w = params["w"]
      total = jnp.sum(0.5 / jnp.square(w) * relax) + joint + jnp.sum(jnp.log(jnp.abs(w)))
      aux.update({f"weight/{n}": w[s] for s, n in enumerate(self.stage_names)})
    else:
      total = jnp.sum(jnp.asarray(self.relax_weights) * relax) + joint
    aux.update({f"loss/relax_{n}": relax[s] for s, n in enumerate(self.stage_names)})
    # How much soft membership the ground truth holds: near the hard recall when the relaxation is
    # sharp, far from it when the temperature is too high for the current score scale.
    aux["soft_recall/joint"] = _list_mean(jnp.prod(p_joint, axis=0), y)
    aux.update({f"soft_recall/{n}": _list_mean(p_relax[s], y) for s, n in enumerate(self.stage_names)})
    return total, aux
