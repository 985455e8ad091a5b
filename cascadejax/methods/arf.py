"""`arf` and `arf_v2`: the Adaptive Neural Ranking Framework (Wang et al., *Adaptive Neural Ranking
Framework: Toward Maximized Business Goal for Cascade Ranking Systems*, WWW 2024, arXiv 2310.10462)
applied to every stage, as LCRON (Wang et al., ICML 2025, arXiv 2503.09492) runs it as a baseline.

Each stage s is trained alone on its own relaxed sorting of all valid candidates of a request. Let
P_s = NeuralSort(score_s) (`[n, n]`, row r = rank r, descending), Y the permutation matrix of the
label order with tied labels spread uniformly over their ranks (`common.label_permutation`),
y_top(i) / y_rest(i) the shares of i's label rank above / below rank gt_num (`common.label_split`),
and m_s the stage's support size (its own selection size k_s by default). Per request, means over
the valid candidates, then over requests:

    arf     q_s(i)     = (1 / m_s) sum_{r < m_s} P_s[r, i]                   (top_mass="mean")
            L_relax,s  = mean_i  -y_top(i) log(q_s(i) + eps)
    arf_v2  L_relax,s  = mean_i  -y_top log(t_s + eps) - y_rest log(u_s + eps),
                         t_s(i), u_s(i) = P_s's column mass in the first m_s rows / the rest,
                         divided by the column's total (`split_mass`, held constant in the gradient)
    both    L_global,s = (1 / (n g)) sum_{r < g} sum_i  -Y[r, i] log(P_s[r, i] + eps)
            L          = sum_s  L_relax,s + 0.5 / w_s^2 L_global,s + log w_s

with n the list's valid candidates and g the ranks L_global covers. L_relax (the "relaxed target")
puts the ground truth into the top m_s; arf_v2 also pushes the other candidates out of it (the
"down" term, LCRON's L_relax form: labels split at gt_num, scores at m_s). L_global (the "full
target", OPA) asks for the whole label order; inside a block of tied labels it is a cross-entropy
against the uniform distribution on the block. The learned w_s (init 1; uncertainty weighting,
Kendall et al. 2018) balance the two per stage, as in ARF; `weighting="fixed"` uses L = sum_s
L_relax,s + lambda_s L_global,s instead. Requests with no more than m_s valid candidates have
nothing to select and get no L_relax,s term.

Options (`config.method.arf`, `config.method.arf_v2`); the defaults compute what the LCRON
authors' code computes (kwai/LCRON, checked by tests/test_reference_fidelity.py):
  sort_method: "neural_sort" (the paper) or "soft_sort" (`cascadejax.ops.soft_sort`).
  temperature: one float for every stage, or one per stage (published: 200).
  support_m: the m_s of L_relax: "stage" (each stage's k_s), "gt_num", or S ints.
  global_size: g, the ranks L_global covers: "all" (every valid rank) or an int.
  weighting: "uncertainty" (learned w_s) or "fixed" (`global_weights`, one lambda_s per stage).
  eps: added inside every log, as in the published code (must be > 0).
  global_normaliser: "list_size" (published: the row mean is divided by n too, so L_global weighs
    1/n of a mean over rows) or "rows" (a plain mean over the g rows).
  top_mass (arf only): "mean" (published: q_s is the mean of the first m_s rows, so a perfect
    ranking still costs log m_s) or "sum".
  normaliser_grad, normaliser_eps (arf_v2 only): whether the column total carries gradient
    (published: no) and what is added to it (published: 1e-6).
  topk_method (arf_v2 only): where t_s, u_s come from: "sort_method" (published: the same relaxed
    permutation as L_global), or any soft top-k operator (`cascadejax.ops.soft_topk.TOPK_OPERATORS`):
    "neural_sort" / "soft_sort" split that operator's own permutation as above; a membership
    operator ("threshold", "dftopk", "lapsum", "sparse_topk") gives t_s = p_s, u_s = 1 - p_s
    directly (L_global still uses `sort_method`).
  topk_temperature (arf_v2 only): the operator's temperature, one float or one per stage;
    "temperature" (default) uses `temperature`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from cascadejax.data.schema import CascadeBatch
from cascadejax.methods.base import CascadeMethod
from cascadejax.methods.common import label_permutation, label_split, per_stage_option, stage_ks_option
from cascadejax.ops.ranking_utils import list_mean
from cascadejax.ops.soft_sort import neural_sort, soft_sort
from cascadejax.ops.soft_topk import MEMBERSHIP_OPERATORS, TOPK_OPERATORS, soft_topk, split_mass

SOFT_SORTS = {"neural_sort": neural_sort, "soft_sort": soft_sort}


def permutation_cross_entropy(perm: jax.Array, target: jax.Array, rows: jax.Array, *, eps: float,
                              per_item: bool) -> jax.Array:
  """Row-wise cross-entropy of a relaxed permutation against a target one, averaged over `rows`.

      per list:  mean_{r in rows} sum_i -target[r, i] log(perm[r, i] + eps)   (/ n if `per_item`)

  then the mean over lists with a row (`list_mean`).

  Args:
    perm: `[..., n, n]` relaxed permutation matrix (rows = ranks, columns = items).
    target: `[..., n, n]` target permutation (e.g. `common.label_permutation`).
    rows: `[..., n]` bool, the ranks that count.
    eps: added inside the log.
    per_item: also divide each list's value by its number of valid rows' items (n, the count of
      `target`'s non-empty columns), as the published ARF code's 1/N^2.

  Returns:
    A scalar.
  """
  per_row = jnp.sum(-target * jnp.log(perm + eps), axis=-1)
  if per_item:
    n = (target.sum(-2) > 0).sum(-1, keepdims=True)
    per_row = per_row / jnp.maximum(n, 1)
  return list_mean(per_row, where=rows)


class ARF(CascadeMethod):
  """Per-stage relaxed Recall@m@k plus a permutation cross-entropy, balanced by learned weights."""

  name = "arf"
  defaults = {"sort_method": "neural_sort", "temperature": 200.0, "support_m": "stage", "global_size": "all",
              "weighting": "uncertainty", "global_weights": 1.0, "eps": 1e-6, "global_normaliser": "list_size",
              "top_mass": "mean"}
  down_term = False  # arf_v2: also -y_rest log(u_s) in L_relax

  def __init__(self, options, **kwargs):
    super().__init__(options, **kwargs)
    o, key = self.options, f"config.method.{self.name}"
    if o["sort_method"] not in SOFT_SORTS:
      raise ValueError(f"{key}.sort_method: {o['sort_method']!r} is not one of {tuple(SOFT_SORTS)}")
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
    if o["global_normaliser"] not in ("list_size", "rows"):
      raise ValueError(f"{key}.global_normaliser must be 'list_size' or 'rows', got {o['global_normaliser']!r}")
    if self.down_term:
      if not isinstance(o["normaliser_grad"], bool):
        raise ValueError(f"{key}.normaliser_grad must be True or False, got {o['normaliser_grad']!r}")
      if not 0 <= float(o["normaliser_eps"]) < 0.1:
        raise ValueError(f"{key}.normaliser_eps must be in [0, 0.1), got {o['normaliser_eps']!r}")
      if o["topk_method"] != "sort_method" and o["topk_method"] not in TOPK_OPERATORS:
        raise ValueError(f"{key}.topk_method: {o['topk_method']!r} is not 'sort_method' or one of {TOPK_OPERATORS}")
      self.topk_temperatures = (self.temperatures if o["topk_temperature"] == "temperature"
                                else per_stage_option(self, "topk_temperature", float))
      if any(not t > 0 for t in self.topk_temperatures):
        raise ValueError(f"{key}.topk_temperature must be positive, got {o['topk_temperature']!r}")
    elif o["top_mass"] not in ("mean", "sum"):
      raise ValueError(f"{key}.top_mass must be 'mean' or 'sum', got {o['top_mass']!r}")

  def init(self, rng: jax.Array) -> Any:
    """`{"w": [S] ones}` with uncertainty weighting; nothing to learn with fixed weights."""
    del rng
    if self.options["weighting"] == "uncertainty":
      return {"w": jnp.ones((self.num_stages,), jnp.float32)}
    return {}

  def down_masses(self, stage: int, scores: jax.Array, perm: jax.Array, m: int,
                  where: jax.Array) -> tuple[jax.Array, jax.Array]:
    """arf_v2's `[B, n]` t_s and u_s of one stage: from `perm` (the L_global permutation) or from
    the `topk_method` operator at `topk_temperature`."""
    o = self.options
    method, tau = o["topk_method"], self.topk_temperatures[stage]
    if method in MEMBERSHIP_OPERATORS:
      top = soft_topk(scores, m, where=where, method=method, temperature=tau)
      return top, jnp.where(where, 1.0 - top, 0.0)
    if method != "sort_method" and (method != o["sort_method"] or tau != self.temperatures[stage]):
      perm = SOFT_SORTS[method](scores, temperature=tau, where=where)
    return split_mass(perm, m, normaliser_grad=o["normaliser_grad"], eps=float(o["normaliser_eps"]))

  def relax_term(self, perm: jax.Array, m: int, y_top: jax.Array, y_rest: jax.Array,
                 selecting: jax.Array, *, stage: int = 0, scores: jax.Array | None = None,
                 where: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """L_relax of one stage from its `[B, n, n]` relaxed permutation (arf_v2: or from its `[B, n]`
    scores, by `topk_method`), and the ground truth's mass q_s (arf) or t_s (arf_v2) per candidate."""
    eps = float(self.options["eps"])
    if self.down_term:
      top, rest = self.down_masses(stage, scores, perm, m, where)
      per_item = -y_top * jnp.log(top + eps) - y_rest * jnp.log(rest + eps)
    else:
      top = jnp.where(jnp.arange(perm.shape[-2])[:, None] < m, perm, 0.0).sum(-2)
      if self.options["top_mass"] == "mean":
        top = top / m
      per_item = -y_top * jnp.log(top + eps)
    return list_mean(per_item, where=selecting), top

  def loss(self, params, stage_scores: jax.Array, batch: CascadeBatch, *, rng: jax.Array):
    """The ARF loss; aux holds every stage's L_relax, L_global, stage total, w_s and the ground
    truth's soft mass."""
    del rng
    where, eps = batch.mask, float(self.options["eps"])
    y_top, y_rest = label_split(batch.label, self.gt_num, where=where, count_ties=False)
    target = label_permutation(batch.label, where=where)
    count = where.sum(-1, keepdims=True)
    ranks = jnp.arange(where.shape[-1])
    g = self.options["global_size"]
    rows = (ranks < count) if g == "all" else (ranks < count) & (ranks < g)
    per_item = self.options["global_normaliser"] == "list_size"
    sort = SOFT_SORTS[self.options["sort_method"]]
    relax, glob, aux = [], [], {}
    for s, name in enumerate(self.stage_names):
      perm = sort(stage_scores[s], temperature=self.temperatures[s], where=where)
      m = self.support_m[s]
      term, mass = self.relax_term(perm, m, y_top, y_rest, where & (count > m), stage=s, scores=stage_scores[s],
                                   where=where)
      relax.append(term)
      glob.append(permutation_cross_entropy(perm, target, rows, eps=eps, per_item=per_item))
      aux[f"soft_recall/{name}"] = list_mean(mass, where=(y_top > 0.5) & (count > m))
    relax, glob = jnp.stack(relax), jnp.stack(glob)
    if self.options["weighting"] == "uncertainty":
      w = params["w"]
      stages = relax + 0.5 / jnp.square(w) * glob + jnp.log(jnp.abs(w))
      aux.update({f"weight/{n}": w[s] for s, n in enumerate(self.stage_names)})
    else:
      stages = relax + jnp.asarray(self.global_weights) * glob
    aux.update({f"loss/relax_{n}": relax[s] for s, n in enumerate(self.stage_names)})
    aux.update({f"loss/global_{n}": glob[s] for s, n in enumerate(self.stage_names)})
    aux.update({f"loss/{n}": stages[s] for s, n in enumerate(self.stage_names)})
    return jnp.sum(stages), aux


class ARFv2(ARF):
  """ARF with the "down" term: L_relax is the BCE of the column-normalised top-m membership."""

  name = "arf_v2"
  defaults = {**{k: v for k, v in ARF.defaults.items() if k != "top_mass"},
              "normaliser_grad": False, "normaliser_eps": 1e-6, "topk_method": "sort_method",
              "topk_temperature": "temperature"}
  down_term = True
