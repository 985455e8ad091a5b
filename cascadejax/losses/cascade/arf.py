"""`arf` and `arf_v2`: the Adaptive Neural Ranking Framework (Wang et al., *Adaptive Neural Ranking
Framework: Toward Maximized Business Goal for Cascade Ranking Systems*, WWW 2024, arXiv 2310.10462)
applied to every stage, as LCRON (Wang et al., ICML 2025, arXiv 2503.09492) runs it as a baseline.

Each stage s is trained alone on its own relaxed sorting of all valid candidates of a request. Let
P_s = NeuralSort(score_s) (`[n, n]`, row r = rank r, descending), y(i) = 1 if i is among the top
`gt_num` labels, pi(r) the item at rank r of the label order (ties towards the lower index), and
m_s the stage's support size (its own selection size k_s by default). The mass item i puts in the
first m_s rows,

    q_s(i) = sum_{r < m_s} P_s[r, i],

relaxes "i is in stage s's top m_s", so mean_{i: y=1} q_s(i) relaxes Recall@m_s@gt_num. Per request,
means over the valid candidates (resp. valid ranks), then over requests:

    arf     L_relax,s  = mean_i  -y(i) log(q_s(i) + eps)
    arf_v2  L_relax,s  = mean_i  -y(i) log(p_s(i) + eps) - (1 - y(i)) log(1 - p_s(i) + eps),
                         p_s(i) = q_s(i) / sum_r P_s[r, i]     (= soft_topk(score_s, m_s), NeuralSort)
    both    L_global,s = mean_{r < g}  -log(P_s[r, pi(r)] + eps)       (permutation cross-entropy)
            L          = sum_s  L_relax,s + 0.5 / w_s^2 L_global,s + log w_s

L_relax (the "relaxed target") puts the ground truth into the top m_s; arf_v2 also pushes the other
candidates out of it (the "down" term, LCRON's L_relax form). L_global (the "full target", OPA) asks
for the whole label order. The learned w_s (init 1; uncertainty weighting, Kendall et al. 2018)
balance the two per stage, as in ARF; `weighting="fixed"` uses L = sum_s L_relax,s + lambda_s
L_global,s instead. Requests with no more than m_s valid candidates have nothing to select and get
no L_relax,s term.

Options (`config.method.arf`, `config.method.arf_v2`):
  sort_method: "neural_sort" (the paper) or "soft_sort" (`cascadejax.ops.soft_sort`).
  temperature: one float for every stage, or one per stage.
  support_m: the m_s of L_relax: "stage" (each stage's k_s), "gt_num", or S ints.
  global_size: g, the ranks L_global covers: "all" (every valid rank) or an int.
  weighting: "uncertainty" (learned w_s) or "fixed" (`global_weights`, one lambda_s per stage).
  eps: added inside every log, as in the published code (must be > 0).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from cascadejax.data.schema import CascadeBatch
from cascadejax.losses.cascade.base import CascadeMethod
from cascadejax.losses.cascade.common import list_mean, per_stage_option, stage_ks_option
from cascadejax.metrics import ground_truth
from cascadejax.ops.soft_sort import neural_sort, soft_sort

SORT_METHODS = {"neural_sort": neural_sort, "soft_sort": soft_sort}


def label_order(labels: jax.Array, where: jax.Array) -> jax.Array:
  """`[..., n]` int: the item at each rank of the descending label order (valid items first).

  Ties go to the lower index, as in `cascadejax.metrics.ground_truth`.
  """
  return jnp.argsort(jnp.where(where, -labels, jnp.inf), axis=-1, stable=True)


def permutation_cross_entropy(perm: jax.Array, order: jax.Array, rows: jax.Array, *, eps: float) -> jax.Array:
  """`mean_{rows} -log(perm[r, order[r]] + eps)`, averaged per list, then over lists with a row.

  Args:
    perm: `[..., n, n]` relaxed permutation matrix (rows = ranks, columns = items).
    order: `[..., n]` the true item at each rank.
    rows: `[..., n]` bool, the ranks that count.
    eps: added inside the log.

  Returns:
    A scalar.
  """
  hit = jnp.take_along_axis(perm, order[..., :, None], axis=-1)[..., 0]  # [..., n]: P[r, pi(r)]
  return list_mean(-jnp.log(hit + eps), rows)


class ARF(CascadeMethod):
  """Per-stage relaxed Recall@m@k plus a permutation cross-entropy, balanced by learned weights."""

  name = "arf"
  defaults = {"sort_method": "neural_sort", "temperature": 200.0, "support_m": "stage", "global_size": "all",
              "weighting": "uncertainty", "global_weights": 1.0, "eps": 1e-6}
  down_term = False  # arf_v2: also -(1 - y) log(1 - p) in L_relax

  def __init__(self, options, **kwargs):
    super().__init__(options, **kwargs)
    o, key = self.options, f"config.method.{self.name}"
    if o["sort_method"] not in SORT_METHODS:
      raise ValueError(f"{key}.sort_method: {o['sort_method']!r} is not one of {tuple(SORT_METHODS)}")
    self.temperatures = per_stage_option(self, "temperature", float)
    if any(not t > 0 for t in self.temperatures):
      raise ValueError(f"{key}.temperature must be positive, got {o['temperature']!r}")
    self.support_m = stage_ks_option(self, "support_m")
    g = o["global_size"]
    if g != "all" and not (isinstance(g, int) and not isinstance(g, bool) and g >= 1):
      raise ValueError(f"{key}.global_size must be 'all' or an int >= 1, got {g!r}")
    if o["weighting"] not in ("uncertainty", "fixed"):
      raise ValueError(f"{key}.weighting must be 'uncertainty' or 'fixed', got {o['weighting']!r}")
    self.global_weights = per_stage_option(self, "global_weights", float)
    if not 0 < float(o["eps"]) < 0.1:  # > 0: padding columns hold p = 0 and must not reach log(0)
      raise ValueError(f"{key}.eps must be in (0, 0.1), got {o['eps']!r}")

  def init(self, rng: jax.Array) -> Any:
    """`{"w": [S] ones}` with uncertainty weighting; nothing to learn with fixed weights."""
    del rng
    if self.options["weighting"] == "uncertainty":
      return {"w": jnp.ones((self.num_stages,), jnp.float32)}
    return {}

  def memberships(self, perm: jax.Array, m: int) -> tuple[jax.Array, jax.Array | None]:
    """From a `[..., n, n]` relaxed permutation, `[..., n]` p_s of L_relax and, for arf_v2, 1 - p_s.

    arf: p_s = q_s and no second value. arf_v2: the first-m_s-rows and remaining-rows shares of each
    column's mass; the second is summed directly rather than taken as 1 - p_s, which would lose
    the small values that matter in log(1 - p_s) to float32 cancellation.
    """
    in_top = jnp.arange(perm.shape[-2])[:, None] < m
    top = jnp.where(in_top, perm, 0.0).sum(-2)
    if not self.down_term:
      return top, None
    rest = jnp.where(in_top, 0.0, perm).sum(-2)
    total = top + rest
    safe = jnp.where(total > 0, total, 1.0)
    return jnp.where(total > 0, top / safe, 0.0), jnp.where(total > 0, rest / safe, 0.0)

  def loss(self, params, stage_scores: jax.Array, batch: CascadeBatch, *, rng: jax.Array):
    """The ARF loss; aux holds every stage's L_relax, L_global, w_s and the ground truth's soft mass."""
    del rng
    where, eps = batch.mask, float(self.options["eps"])
    y = ground_truth(batch.label, self.gt_num, where=where)
    order = label_order(batch.label, where)
    count = where.sum(-1, keepdims=True)
    ranks = jnp.arange(where.shape[-1])
    g = self.options["global_size"]
    rows = (ranks < count) if g == "all" else (ranks < count) & (ranks < g)
    sort = SORT_METHODS[self.options["sort_method"]]
    relax, glob, aux = [], [], {}
    for s, name in enumerate(self.stage_names):
      perm = sort(stage_scores[s], temperature=self.temperatures[s], where=where)
      m = self.support_m[s]
      p, p_out = self.memberships(perm, m)
      selecting = where & (count > m)  # requests with at most m candidates select them all
      per_item = -y.astype(p.dtype) * jnp.log(p + eps)
      if self.down_term:
        per_item -= (~y).astype(p.dtype) * jnp.log(p_out + eps)
      relax.append(list_mean(per_item, selecting))
      glob.append(permutation_cross_entropy(perm, order, rows, eps=eps))
      aux[f"soft_recall/{name}"] = list_mean(p, y & selecting)
    relax, glob = jnp.stack(relax), jnp.stack(glob)
    if self.options["weighting"] == "uncertainty":
      w = params["w"]
      total = jnp.sum(relax + 0.5 / jnp.square(w) * glob + jnp.log(jnp.abs(w)))
      aux.update({f"weight/{n}": w[s] for s, n in enumerate(self.stage_names)})
    else:
      total = jnp.sum(relax + jnp.asarray(self.global_weights) * glob)
    aux.update({f"loss/relax_{n}": relax[s] for s, n in enumerate(self.stage_names)})
    aux.update({f"loss/global_{n}": glob[s] for s, n in enumerate(self.stage_names)})
    return total, aux


class ARFv2(ARF):
  """ARF with the "down" term: L_relax is the BCE of the column-normalised top-m membership."""

  name = "arf_v2"
  down_term = True
