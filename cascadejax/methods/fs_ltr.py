"""`fs_ranknet`, `fs_lambdaloss`: Full Stage Learning to Rank (FS-LTR), every stage on relabeled logs.

FS-LTR (Zheng et al., *Full Stage Learning to Rank: A Unified Framework for Multi-Stage Systems*,
WWW 2024, arXiv:2405.04844) argues that a non-final stage should rank by the probability that an
item survives the stages after it *and* pleases the user, and learns that order from full-stage
logs by relabeling every logged candidate with the deepest point it reached (the paper's eq. 9):

    level(i) = st(i)        if st(i) < S       (logged, then filtered out by stage st(i) + 1)
             = S            if st(i) = S and i is not a positive                 (exposed)
             = S + 1        if st(i) = S and i is a positive
    y(i)     = z[level(i)],     z_0 <= z_1 <= ... <= z_{S+1}   (default z_l = l, the paper's z_i := i)

A positive is a ground-truth item (the top `gt_num` labels; `top_level="ground_truth"`, what the
LCRON authors' baselines use: RecFlow's deepest group) or one with positive feedback
(`top_level="feedback"`, the paper's eq. 9: z_4 exposed, z_5 exposed with feedback). Here `st` is
`CascadeBatch.stage`, so level 0 is "dropped by stage 1". Each stage s is trained with a
learning-to-rank loss over the candidates it is trained on (`W_s`, valid candidates by default),
and the stage losses are summed:

    fs_ranknet:     L_s = sum_{l >= 1} mean over the pairs (i, j) in W_s with level(i) = l and
                          y_i > y_j of  log(1 + exp(-(f_s(i) - f_s(j))))      (pair_normaliser "per_level")
                    (or one mean over all the pairs: "all_pairs")
    fs_lambdaloss:  L_s = mean over lists of  sum over every ordered pair (i, j) of
                          w_ij log(1 + exp(-sign(y_i - y_j) (f_s(i) - f_s(j))))  (scheme "smooth")
                    w_ij = |G_i - G_j| (a rho_ij + (1 - a) delta_ij 1[min(r_i, r_j) <= topn]),
                    G = y / maxDCG (the label itself as the gain, maxDCG over every position),
                    rho_ij = |D(r_i) - D(r_j)| with D(r) = 0 beyond topn, delta_ij = |D(|r_i - r_j|)
                    - D(|r_i - r_j| + 1)|, r the ranks under f_s, a = smooth_fraction: TF-Ranking's
                    smoothed LambdaWeight, as the LCRON authors' FS-LambdaLoss baseline computes it
                    on the data's own label values (`labels="label"`)
                    (or the library's LambdaRank / LambdaLoss, mean over pairs: `scheme`)
    L = sum_s L_s

In "smooth", each pair with different labels is counted in both orders and tied pairs weigh 0; the
base of the logarithm in D cancels between G and the discounts.

Options (`config.method.<name>`); the defaults compute what the LCRON authors' code computes
(kwai/LCRON, checked by tests/test_reference_fidelity.py):
  top_level: "ground_truth" (default) or "feedback": what lifts an exposed item to level S + 1.
  feedback: the `CascadeBatch.feedback` field whose positive values make an exposed item a
    positive with top_level="feedback" (default "click"); batches without it have no level S + 1.
  levels: S + 2 non-decreasing, non-negative label values z_0..z_{S+1}, or "identity" (z_l = l).
  train_on: which candidates stage s is trained on: "all" (every valid candidate: the paper's
    advice to keep earlier-stage data for train/serve consistency, and what the LCRON baselines do),
    "reached" (only candidates the logged cascade showed stage s, st >= s - 1), or S ints j_s
    (candidates with level >= j_s: the paper's Algorithm 1 choice of j per stage).
  sample_per_level: None (default, off) or S + 2 ints: per request and per stage, keep at most that
    many randomly chosen candidates of each level (-1 keeps a level whole, 0 drops it), redrawn every
    step from `loss(..., rng=)`. This is the paper's per-request subsampling ("the higher stage the
    data belongs to, the more we use it"; its offline runs sample a few negatives per stage per
    instance, Table 5). It is off by default: the paper subsamples to cut training cost on
    thousands of logged items per request, and our batches already hold the logged sample.
  fs_ranknet only: pair_normaliser ("per_level", the default and the published code's: each
    level's pairs averaged separately, the means summed; "all_pairs": one mean over every pair).
  fs_lambdaloss only: labels ("label", the default: `CascadeBatch.label` as gains; "levels": the
    FS-LTR levels y above), scheme ("smooth", the default; "lambdarank": the paper's
    FS-LambdaRank, NDCG gains 2^y - 1, mean over pairs; "ndcg2", "ndcg2++": LambdaLoss, Wang et
    al. 2018), smooth_fraction (a, default 0.8), topn (NDCG cutoff, default 30; None for the whole
    list) and mu (the weight of NDCG-Loss2 in "ndcg2++").
"""

from __future__ import annotations

import abc

import jax
import jax.numpy as jnp

from cascadejax.data.schema import CascadeBatch
from cascadejax.methods.base import CascadeMethod
from cascadejax.methods.common import per_stage_option
from cascadejax.losses.pairwise import lambdaloss, lambdarank_loss, ranknet_loss
from cascadejax.ops.selection import ground_truth
from cascadejax.ops.lambdarank import PairSpec, tiled_pairwise_loss
from cascadejax.ops.ranking_utils import normalize_by_ideal_dcg, safe_reduce, valid_lists


def relabel(stage: jax.Array, num_stages: int, positive: jax.Array | None = None) -> jax.Array:
  """The FS-LTR level of every candidate (eq. 9): its logged stage, plus 1 if exposed and positive.

  Args:
    stage: `[..., n]` int, deepest stage reached (0 .. S).
    num_stages: S.
    positive: optional `[..., n]` bool, positive feedback (only counts on exposed candidates).

  Returns:
    `[..., n]` int32 levels in 0 .. S + 1.
  """
  level = stage.astype(jnp.int32)
  if positive is not None:
    level = level + ((stage == num_stages) & positive).astype(jnp.int32)
  return level


def sample_per_level(rng: jax.Array, level: jax.Array, where: jax.Array, counts) -> jax.Array:
  """Keeps, in every list, at most `counts[l]` uniformly drawn candidates of each level l.

  One sort per call: candidates are ordered by (invalid last, level, uniform key), so a candidate's
  rank within its level is its position minus the number of valid candidates of lower levels.

  Args:
    rng: PRNG key.
    level: `[B, n]` int levels in `0 .. len(counts) - 1`.
    where: `[B, n]` bool, the candidates to draw from.
    counts: one int per level; -1 keeps the whole level.

  Returns:
    `[B, n]` bool, a subset of `where`.
  """
  num_levels = len(counts)
  key = jax.random.uniform(rng, level.shape)
  iota = jax.lax.broadcasted_iota(jnp.int32, level.shape, 1)
  _, _, _, order = jax.lax.sort((~where, level, key, iota), dimension=1, num_keys=3)
  position = jnp.argsort(order, axis=1)
  per_level = jnp.sum(jax.nn.one_hot(level, num_levels, dtype=jnp.int32) * where[..., None], axis=1)
  below = jnp.cumsum(per_level, axis=1) - per_level   # valid candidates of lower levels, [B, L]
  rank_in_level = position - jnp.take_along_axis(below, level, axis=1)
  cap = jnp.asarray([c if c >= 0 else level.shape[-1] for c in counts], jnp.int32)[level]
  return where & (rank_in_level < cap)


class _FullStageLTR(CascadeMethod):
  """Shared relabeling, candidate choice and per-stage loop; subclasses give the ranking loss."""

  shared_defaults = {"top_level": "ground_truth", "feedback": "click", "levels": "identity",
                     "train_on": "all", "sample_per_level": None}

  def __init__(self, options, **kwargs):
    super().__init__(options, **kwargs)
    o, key = self.options, f"config.method.{self.name}"
    n_levels = self.num_stages + 2
    if o["top_level"] not in ("ground_truth", "feedback"):
      raise ValueError(f"{key}.top_level must be 'ground_truth' or 'feedback', got {o['top_level']!r}")
    if o["feedback"] is not None and not isinstance(o["feedback"], str):
      raise ValueError(f"{key}.feedback must be a feedback field name or None, got {o['feedback']!r}")
    if o["levels"] == "identity":
      self.levels = tuple(float(l) for l in range(n_levels))
    else:
      self.levels = per_stage_option(self, "levels", float, length=n_levels, scalar=False)
      if any(z < 0 for z in self.levels) or any(a > b for a, b in zip(self.levels, self.levels[1:])):
        raise ValueError(f"{key}.levels must be non-negative and non-decreasing "
                         f"(z_0 <= ... <= z_{n_levels - 1}), got {o['levels']!r}")
    if o["train_on"] == "all":
      self.min_level = (0,) * self.num_stages
    elif o["train_on"] == "reached":
      self.min_level = tuple(range(self.num_stages))
    elif isinstance(o["train_on"], str):
      raise ValueError(f"{key}.train_on must be 'all', 'reached' or {self.num_stages} ints, "
                       f"got {o['train_on']!r}")
    else:
      self.min_level = per_stage_option(self, "train_on", int, scalar=False)
      if any(not 0 <= j <= n_levels - 1 for j in self.min_level):
        raise ValueError(f"{key}.train_on: each minimum level must be in [0, {n_levels - 1}], "
                         f"got {o['train_on']!r}")
    self.sample_counts = None
    if o["sample_per_level"] is not None:
      self.sample_counts = per_stage_option(self, "sample_per_level", int, length=n_levels, scalar=False)
      if any(c < -1 for c in self.sample_counts):
        raise ValueError(f"{key}.sample_per_level: counts must be >= 0 (or -1 for all), "
                         f"got {o['sample_per_level']!r}")

  def levels_of(self, batch: CascadeBatch) -> jax.Array:
    """`[B, N]` FS-LTR level of every candidate of `batch` (eq. 9)."""
    if self.options["top_level"] == "ground_truth":
      return relabel(batch.stage, self.num_stages, ground_truth(batch.label, self.gt_num, where=batch.mask))
    field = self.options["feedback"]
    positive = None
    if field is not None and batch.feedback is not None:
      if field not in batch.feedback:
        raise ValueError(f"config.method.{self.name}.feedback: the batch has no feedback {field!r} "
                         f"(it has {sorted(batch.feedback)}); set it to one of those or None")
      positive = batch.feedback[field] > 0
    return relabel(batch.stage, self.num_stages, positive)

  @abc.abstractmethod
  def stage_loss(self, scores: jax.Array, level: jax.Array, labels: jax.Array, batch: CascadeBatch,
                 where: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One stage's loss over the candidates `where`, and named parts of it to log."""

  def loss(self, params, stage_scores: jax.Array, batch: CascadeBatch, *, rng: jax.Array):
    """Sum over stages of the ranking loss on the relabeled candidates; aux holds each stage's term."""
    del params
    level = self.levels_of(batch)
    labels = jnp.asarray(self.levels, jnp.float32)[level]
    terms = {}
    for s, name in enumerate(self.stage_names):
      where = batch.mask & (level >= self.min_level[s])
      if self.sample_counts is not None:
        where = sample_per_level(jax.random.fold_in(rng, s), level, where, self.sample_counts)
      terms[f"loss/{name}"], parts = self.stage_loss(stage_scores[s], level, labels, batch, where)
      terms.update({f"loss/{name}/{k}": v for k, v in parts.items()})
    total = jnp.sum(jnp.stack([terms[f"loss/{name}"] for name in self.stage_names]))
    return total, terms


class FSRankNet(_FullStageLTR):
  """FS-RankNet: every stage trained with RankNet on the FS-LTR labels."""

  name = "fs_ranknet"
  defaults = {**_FullStageLTR.shared_defaults, "pair_normaliser": "per_level"}

  def __init__(self, options, **kwargs):
    super().__init__(options, **kwargs)
    if self.options["pair_normaliser"] not in ("per_level", "all_pairs"):
      raise ValueError("config.method.fs_ranknet.pair_normaliser must be 'per_level' or 'all_pairs', "
                       f"got {self.options['pair_normaliser']!r}")

  def stage_loss(self, scores, level, labels, batch, where):
    """RankNet on the pairs y_i > y_j: one mean per level of the better item, summed ("per_level",
    aux `level<l>`), or one mean over all pairs."""
    if self.options["pair_normaliser"] == "all_pairs":
      return ranknet_loss(scores, labels, where=where), {}
    per_item = ranknet_loss(scores, labels, where=where, reduce_fn=None)   # each pair at its better item
    below = (where[..., None, :] & (labels[..., None, :] < labels[..., :, None])).sum(-1)
    parts = {}
    for l in range(1, self.num_stages + 2):
      at = where & (level == l)
      parts[f"level{l}"] = jnp.where(at, per_item, 0.0).sum() / jnp.maximum(jnp.where(at, below, 0).sum(), 1)
    return jnp.sum(jnp.stack(list(parts.values()))), parts


def smooth_lambda_loss(scores: jax.Array, labels: jax.Array, *, where: jax.Array, topn: int | None,
                       smooth_fraction: float) -> jax.Array:
  """Per list, the sum over every ordered pair of the smoothed-LambdaWeight logistic loss.

  Gains G = y / maxDCG(y) over every valid position, pair weight |G_i - G_j| (a rho_ij + (1 - a)
  delta_ij 1[min(r_i, r_j) <= topn]) (`PairSpec` with `topn_rule="mask"`), each pair with
  y_i != y_j counted in both orders (twice the sum over the pairs y_i > y_j).

  Args:
    scores: `[..., n]` scores.
    labels: `[..., n]` non-negative graded labels, used as the gains themselves.
    where: `[..., n]` bool, the valid items.
    topn: the rank cutoff of rho and delta (None: none).
    smooth_fraction: a, the weight of LambdaRank's rho against NDCG-Loss2's delta.

  Returns:
    `[...]` per-list losses.
  """
  gains = normalize_by_ideal_dcg(labels, where=where, positive_only=True)
  spec = PairSpec(lambdarank=float(smooth_fraction), ndcg2=1.0 - float(smooth_fraction), topn=topn,
                  topn_rule="mask")
  return 2.0 * tiled_pairwise_loss(scores, labels, where=where, gains=gains, spec=spec)


class FSLambdaLoss(_FullStageLTR):
  """FS-LambdaLoss: every stage trained with a lambda-weighted RankNet on the labels."""

  name = "fs_lambdaloss"
  defaults = {**_FullStageLTR.shared_defaults, "labels": "label", "scheme": "smooth", "smooth_fraction": 0.8,
              "topn": 30, "mu": 10.0}
  SCHEMES = ("smooth", "lambdarank", "ndcg2", "ndcg2++")

  def __init__(self, options, **kwargs):
    super().__init__(options, **kwargs)
    o = self.options
    if o["labels"] not in ("label", "levels"):
      raise ValueError(f"config.method.fs_lambdaloss.labels must be 'label' or 'levels', got {o['labels']!r}")
    if o["scheme"] not in self.SCHEMES:
      raise ValueError(f"config.method.fs_lambdaloss.scheme must be one of {self.SCHEMES}, "
                       f"got {o['scheme']!r}")
    topn = o["topn"]
    if topn is not None and (isinstance(topn, bool) or not isinstance(topn, int) or topn < 1):
      raise ValueError(f"config.method.fs_lambdaloss.topn must be None or an int >= 1, got {topn!r}")
    if not isinstance(o["mu"], (int, float)) or not o["mu"] >= 0:
      raise ValueError(f"config.method.fs_lambdaloss.mu must be a number >= 0, got {o['mu']!r}")
    a = o["smooth_fraction"]
    if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 <= a <= 1:
      raise ValueError(f"config.method.fs_lambdaloss.smooth_fraction must be in [0, 1], got {a!r}")

  def stage_loss(self, scores, level, labels, batch, where):
    """The scheme's loss on `labels` ("levels") or `batch.label` ("label")."""
    o = self.options
    y = batch.label if o["labels"] == "label" else labels
    if o["scheme"] == "smooth":
      per_list = smooth_lambda_loss(scores, y, where=where, topn=o["topn"], smooth_fraction=o["smooth_fraction"])
      return safe_reduce(per_list, where=valid_lists(where)), {}
    if o["scheme"] == "lambdarank":
      return lambdarank_loss(scores, y, where=where, topn=o["topn"]), {}
    return lambdaloss(scores, y, where=where, topn=o["topn"], scheme=o["scheme"], mu=float(o["mu"])), {}
