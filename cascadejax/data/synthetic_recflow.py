"""The simulator's RecFlow layout: requests sampled the way LCRON's RecFlow protocol samples them.

`config.data.layout = "recflow"` (with `config.data.name = "synthetic"`) keeps the world of
`cascadejax/data/synthetic_world.py` (users, items, utility, histories, features, feedback) and changes how
each request's candidates are drawn, so the published RecFlow setting (Wang et al., LCRON, ICML 2025)
can be studied without downloading RecFlow:

1. A pool of `config.data.pool_size` candidates is drawn per request, as the default layout draws its
   candidates (a Gumbel top-k biased towards the user's taste, as upstream retrieval would).
2. A hidden production cascade of S + 1 logged filters (an S-stage cascade is trained on it, as on
   RecFlow, whose pre-rank, coarse-rank and rank stages all log their drops) filters the pool: filter
   f = 1..S+1 keeps `config.data.production.ks[f-1]` of what reached it by teacher score = view +
   N(0, `config.data.production.noise[f-1]`^2); filter 1 sees the retrieval-like view
   `w_dot <p, q> + w_pop pop`, later filters the full utility. In this layout `production.ks` and
   `production.noise` therefore have S + 1 entries, one per logged filter.
3. Group d = the candidates dropped by filter d + 1 (d = 0..S); group S + 1 = those the last filter
   kept (the exposed items). `config.data.per_group` (default 10) members of every group are drawn
   uniformly without replacement, and the N = per_group * (S + 2) slots are put in a random order per
   request; nothing is padded (`mask` is all True).

Like RecFlow's reader (`cascadejax/data/recflow/`), a candidate of group index d gets

    stage = min(d, S)
    label = d + 1 / (2 + position)   in the deepest group, position = its 0-based rank by the last
          = d                        filter's score (0 = best); in every other group (ties inside it)

so deeper groups always rank above shallower ones and the ground truth (the top per_group labels) is
exactly the deepest group: for two stages the groups are RecFlow's (prerank_neg, coarse_neg, rank_neg,
rank_pos), N = 40; for three (prerank_neg, coarse_neg, rank_neg, rerank_neg, rerank_pos), N = 50.
Clicks (and the opt-in likes and long views) are drawn as in the default layout, on the deepest group
only. `config.data.min_candidates` is not used. With `config.data.label_values = "reference"` the
labels are the LCRON authors' loader values instead, as the RecFlow reader gives them
(`recflow.config.reference_labels`: 30 - position in the deepest group; 8, 7, 6, 5 for rerank_neg,
rank_neg, coarse_neg, prerank_neg): the same order, other values. `DEFAULTS` holds a setting per cascade depth and
`configure` applies it.

Requests are simulated in chunks of at most 2048, so memory grows with the output (N slots per
request), not with requests x items.
"""

from __future__ import annotations

import jax
import numpy as np
from ml_collections import ConfigDict

from cascadejax.data.recflow import config as recflow_config
from cascadejax.data.schema import CascadeBatch
from cascadejax.data.synthetic_world import (World, draw_requests, extra_feedback, id_features,
                                       teacher_views, upstream_candidates)

# Per cascade depth S: the pool and the S + 1 logged filters. Every group holds at least 20 members
# (the last filter keeps 20, as LCRON's RecFlow rank_pos sets the 10 sampled positions among more).
DEFAULTS = {2: dict(pool_size=160, ks=(80, 40, 20), noise=(0.5, 0.6, 0.3)),
            3: dict(pool_size=320, ks=(160, 80, 40, 20), noise=(0.5, 0.6, 0.6, 0.3))}
PER_GROUP = 10  # config.data.per_group when absent: LCRON's 10 candidates per stage group
_CHUNK_ELEMENTS = 2**23  # upstream scores of one chunk ([rows, num_items] float32): 32 MiB


def configure(data: ConfigDict, num_stages: int, per_group: int = PER_GROUP) -> ConfigDict:
  """Switches a `config.data` section to the recflow layout with `DEFAULTS[num_stages]`.

  Args:
    data: the `config.data` section of a synthetic config (changed in place).
    num_stages: S, 2 or 3.
    per_group: candidates sampled from every group; list_size becomes per_group * (S + 2).

  Returns:
    `data`, for chaining.
  """
  if num_stages not in DEFAULTS:
    raise ValueError(f"no recflow-layout defaults for a {num_stages}-stage cascade (have {sorted(DEFAULTS)})")
  d = DEFAULTS[num_stages]
  data.layout, data.per_group = "recflow", per_group
  data.list_size, data.pool_size = per_group * (num_stages + 2), d["pool_size"]
  data.production.ks, data.production.noise = d["ks"], d["noise"]
  return data


def per_group(cfg: ConfigDict) -> int:
  """`config.data.per_group`, or `PER_GROUP` when it is absent."""
  return cfg.get("per_group", PER_GROUP)


def check_layout(cfg: ConfigDict, num_stages: int) -> None:
  """Raises `ValueError` naming the `config.data` key that makes the recflow layout impossible.

  Args:
    cfg: the `config.data` section.
    num_stages: S, the number of stages of the cascade trained on the logs.
  """
  s, m = num_stages, per_group(cfg)
  if cfg.get("label_values", "graded") == "reference" and s not in recflow_config.DEFAULT_GROUPS:
    raise ValueError(f"config.data.label_values='reference' needs RecFlow's groups of a 2- or 3-stage "
                     f"cascade, not {s} stages")
  recflow_config.check_label_values(cfg, recflow_config.DEFAULT_GROUPS.get(s, ()))
  ks, noise = tuple(cfg.production.ks), tuple(cfg.production.noise)
  for key, values in (("ks", ks), ("noise", noise)):
    if len(values) != s + 1:
      raise ValueError(f"config.data.production.{key} has {len(values)} entries but the recflow layout of a "
                       f"{s}-stage cascade logs S + 1 = {s + 1} filters: give one per filter")
  for f, sigma in enumerate(noise):
    if not sigma >= 0:
      raise ValueError(f"config.data.production.noise[{f}]={sigma} must be >= 0")
  if m < 1:
    raise ValueError(f"config.data.per_group must be >= 1, got {m}")
  n = m * (s + 2)
  if cfg.list_size != n:
    raise ValueError(f"config.data.list_size={cfg.list_size} must equal config.data.per_group * (S + 2) = "
                     f"{m} * {s + 2} = {n} in the recflow layout")
  if "pool_size" not in cfg:
    raise ValueError(f"config.data.pool_size must be set in the recflow layout (e.g. "
                     f"{DEFAULTS[2]['pool_size']} for two stages, {DEFAULTS[3]['pool_size']} for three)")
  pool = cfg.pool_size
  if not n <= pool <= cfg.num_items:
    raise ValueError(f"config.data.pool_size={pool} must be in [list_size={n}, config.data.num_items="
                     f"{cfg.num_items}]: every one of the {s + 2} groups needs per_group={m} members")
  prev = pool
  for f, k in enumerate(ks):
    lo, hi = m * (s + 1 - f), prev - m
    if not lo <= k <= hi:
      raise ValueError(f"config.data.production.ks[{f}]={k} must be in [{lo}, {hi}]: filter {f + 1} "
                       f"receives {prev} candidates and must drop at least per_group={m} (group {f}) and "
                       f"keep at least per_group for each of the {s + 1 - f} deeper groups")
    prev = k


def _log_chunk(cfg: ConfigDict, world: World, rng: np.random.Generator, feedback_rng: np.random.Generator,
               user: np.ndarray, context: np.ndarray, num_stages: int) -> CascadeBatch:
  """The logs of `[B]` requests (0-based users and contexts) as a NumPy `CascadeBatch`."""
  ks, noise, m = tuple(cfg.production.ks), tuple(cfg.production.noise), per_group(cfg)
  pool = upstream_candidates(cfg, world, rng, user, cfg.pool_size)  # [B, P] item indices
  view, utility = teacher_views(cfg, world, user, context, pool)
  # Every filter keeps a fixed number, so the survivors fit a dense [B, k] array of pool columns,
  # sorted by the filter's score: no masks, and the last filter's column is the logged position.
  alive = np.broadcast_to(np.arange(cfg.pool_size), pool.shape)
  groups = []
  for f, (k, sigma) in enumerate(zip(ks, noise)):
    seen = np.take_along_axis(view if f == 0 else utility, alive, 1)
    score = seen + np.float32(sigma) * rng.standard_normal(seen.shape, dtype=np.float32)
    ranked = np.take_along_axis(alive, np.argsort(-score, axis=1), 1)
    groups.append(ranked[:, k:])  # group f: dropped by filter f + 1
    alive = ranked[:, :k]
  groups.append(alive)  # group S + 1: kept by the last filter, best first

  slots, labels = [], []
  deepest = num_stages + 1
  for d, members in enumerate(groups):
    pick = np.argsort(rng.random(members.shape, dtype=np.float32), axis=1)[:, :m]  # uniform subset
    slots.append(np.take_along_axis(members, pick, 1))
    if cfg.get("label_values", "graded") == "reference":   # the LCRON authors' loader values
      labels.append(recflow_config.reference_labels(np.full(pick.shape, d), pick, recflow_config.DEFAULT_GROUPS[num_stages]))
    else:
      labels.append(d + 1.0 / (2.0 + pick) if d == deepest else np.full(pick.shape, float(d)))
  depth = np.repeat(np.arange(deepest + 1), m)
  order = np.argsort(rng.random((len(user), depth.size), dtype=np.float32), axis=1)  # slot order
  slots = np.take_along_axis(np.concatenate(slots, 1), order, 1)
  label = np.take_along_axis(np.concatenate(labels, 1), order, 1).astype(np.float32)
  depth = depth[order]

  cand = np.take_along_axis(pool, slots, 1)
  exposed = depth == deepest
  click_p = 1.0 / (1.0 + np.exp(cfg.click_offset - np.take_along_axis(utility, slots, 1)))
  click = (exposed & (rng.random(cand.shape) < click_p)).astype(np.float32)
  # Likes and long views come from their own generator, so asking for them changes no other field.
  feedback = {"click": click, **extra_feedback(cfg, world, feedback_rng, user, cand, click)}
  mask = np.ones(cand.shape, bool)
  user_ids, item_ids = id_features(cfg, world, user, context, cand, mask)
  return CascadeBatch(user=user_ids, items=item_ids, stage=np.minimum(depth, num_stages).astype(np.int32),
                      label=label, mask=mask, feedback=feedback)


def log_requests(cfg: ConfigDict, world: World, rng: np.random.Generator, num_requests: int,
                 num_stages: int) -> CascadeBatch:
  """Draws `num_requests` requests and logs them in the recflow layout (see the module docstring).

  Args:
    cfg: the `config.data` section, already checked by `check_layout`.
    world: the hidden world (`synthetic_world.make_world`).
    rng: the log generator; the output is a pure function of its state.
    num_requests: R.
    num_stages: S, the number of stages of the cascade trained on the logs.

  Returns:
    A NumPy `CascadeBatch` of R requests with N = per_group * (S + 2) unpadded slots each.
  """
  user, context = draw_requests(cfg, rng, num_requests)
  feedback_rng = np.random.default_rng(rng.integers(2**63))
  rows = max(1, min(2048, _CHUNK_ELEMENTS // cfg.num_items))
  out, treedef = None, None
  for lo in range(0, num_requests, rows):
    hi = min(lo + rows, num_requests)
    leaves, treedef = jax.tree.flatten(_log_chunk(cfg, world, rng, feedback_rng, user[lo:hi], context[lo:hi],
                                                  num_stages))
    if out is None:  # filled in place: concatenating chunks would hold the logs twice
      out = [np.empty((num_requests,) + x.shape[1:], x.dtype) for x in leaves]
    for dst, src in zip(out, leaves):
      dst[lo:hi] = src
  return jax.tree.unflatten(treedef, out)
