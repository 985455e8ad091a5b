"""The embedded default dataset: a simulated production cascade and its full-stage logs.

The world (users, items, contexts, their true utility r(u, i, x), features and feedback) is
`cascadejax.data.synthetic_world`. Each request draws `list_size` candidates (biased towards the
user's taste, as upstream retrieval would), and a hidden production cascade of noisy teacher scorers filters them stage by stage with its
own k's. The first teacher is retrieval-like (it sees only `w_dot <p, q> + w_pop pop`); later teachers
see the full utility. Each teacher adds Gaussian noise of its own scale. The logs record, per
candidate, the deepest stage reached and a graded label

    label = stage reached + sigmoid(score of the teacher that decided its fate)

so deeper candidates always rank above shallower ones, and the top `k_S` labels are exactly what the
production cascade exposed, ordered by its final scorer. Exposed candidates also get a click,
Bernoulli(sigmoid(r)). Everything is a pure function of the seed; train and test are disjoint
requests drawn from one stream.

Layouts, and the world's opt-in extras (see `synthetic_world`):

- `config.data.layout`: "default" (the above) or "recflow": each request holds `per_group`
  candidates of every stage group of a deeper production cascade, as LCRON's RecFlow protocol
  samples them (`cascadejax/data/synthetic_recflow.py`).
- `config.data.feedback`, `config.data.cross_features`: see `cascadejax.data.synthetic_world`.
"""

from __future__ import annotations

import os

import numpy as np
from ml_collections import ConfigDict

from cascadejax.data import cache, item_corpus, synthetic_recflow, synthetic_world
from cascadejax.data.schema import CascadeBatch, CascadeData
from cascadejax.data.synthetic_world import World, draw_requests, extra_feedback, id_features, teacher_views
from cascadejax.data.synthetic_world import features, make_world, upstream_candidates

FORMAT_VERSION = 1  # of the simulator's output (cache key): bump whenever a seed's data changes
LAYOUTS = ("default", "recflow")  # config.data.layout: how each request's candidates are sampled


def _log_cascade(cfg: ConfigDict, world: World, rng: np.random.Generator, num_requests: int):
  """Draws requests and runs the production cascade on them; returns a NumPy `CascadeBatch`."""
  n, ks, noise = cfg.list_size, tuple(cfg.production.ks), tuple(cfg.production.noise)
  user, context = draw_requests(cfg, rng, num_requests)
  n_valid = rng.integers(cfg.min_candidates, n + 1, num_requests)
  mask = np.arange(n) < n_valid[:, None]

  cand = np.empty((num_requests, n), np.int64)
  for lo in range(0, num_requests, 2048):
    hi = min(lo + 2048, num_requests)
    cand[lo:hi] = upstream_candidates(cfg, world, rng, user[lo:hi], n)
  cand = np.take_along_axis(cand, rng.permuted(np.tile(np.arange(n), (num_requests, 1)), axis=1), 1)

  retrieval_view, utility = teacher_views(cfg, world, user, context, cand)

  stage = np.zeros((num_requests, n), np.int32)
  decided = np.zeros((num_requests, n), np.float32)
  alive = mask.copy()
  for s, (k, sigma) in enumerate(zip(ks, noise)):
    view = retrieval_view if s == 0 else utility
    score = view + sigma * rng.normal(size=view.shape)
    rank = np.argsort(np.argsort(-np.where(alive, score, -np.inf), axis=1), axis=1)
    survive = alive & (rank < k)
    decided = np.where(alive, score, decided)  # ends as the score of the last teacher to judge it
    stage[survive] = s + 1
    alive = survive
  label = np.where(mask, stage + 1.0 / (1.0 + np.exp(-decided)), 0.0).astype(np.float32)
  click_p = 1.0 / (1.0 + np.exp(cfg.click_offset - utility))
  click = (alive & (rng.random(utility.shape) < click_p)).astype(np.float32)
  feedback = {"click": click, **extra_feedback(cfg, world, rng, user, cand, click)}
  user_ids, item_ids = id_features(cfg, world, user, context, cand, mask)
  return CascadeBatch(user=user_ids, items=item_ids, stage=stage, label=label, mask=mask, feedback=feedback)


def check_config(cfg: ConfigDict, num_stages: int) -> None:
  """Raises `ValueError` naming the `config.data` key that makes the simulation impossible.

  Args:
    cfg: the `config.data` section.
    num_stages: S, the number of stages of the cascade the data is for.
  """
  layout = cfg.get("layout", "default")
  if layout not in LAYOUTS:
    raise ValueError(f"config.data.layout: unknown layout {layout!r}; available: {LAYOUTS}")
  if layout == "recflow":
    synthetic_recflow.check_layout(cfg, num_stages)
  else:
    _check_default_layout(cfg, num_stages)
  synthetic_world.check_world_and_feedback(cfg)


def _check_default_layout(cfg: ConfigDict, num_stages: int) -> None:
  """The list-size and production-cascade checks of the default layout."""
  ks, noise = tuple(cfg.production.ks), tuple(cfg.production.noise)
  if len(ks) != num_stages:
    raise ValueError(f"config.data.production.ks has {len(ks)} stages but the cascade has {num_stages}")
  if len(noise) != num_stages:
    raise ValueError(f"config.data.production.noise needs one value per stage ({num_stages}), got {noise}")
  if not 1 <= cfg.min_candidates <= cfg.list_size:
    raise ValueError(f"config.data.min_candidates={cfg.min_candidates} must be in [1, list_size={cfg.list_size}]")
  if cfg.list_size > cfg.num_items:
    raise ValueError(f"config.data.list_size={cfg.list_size} exceeds config.data.num_items={cfg.num_items}")
  prev = cfg.min_candidates
  for s, k in enumerate(ks):
    if not 0 < k < prev:
      raise ValueError(f"config.data.production.ks[{s}]={k} must be in [1, {prev}): each production "
                       "stage must keep fewer candidates than it receives (min_candidates for stage 1)")
    prev = k


def load(cfg: ConfigDict, num_stages: int) -> CascadeData:
  """Simulates the world and the logs of `cfg.num_train` + `cfg.num_test` requests.

  With `cfg.cache_dir` set (absent or "" = off), the result is kept in `cascadejax.data.cache`
  under a hash of the whole data config and `FORMAT_VERSION`, so the runs of a comparison that share
  a seed simulate their data once.

  Args:
    cfg: the `config.data` section (see `configs/default.py`).
    num_stages: S, the number of stages of the logged production cascade.

  Returns:
    `CascadeData` with splits "train" and "test", request ids disjoint between them.
  """
  check_config(cfg, num_stages)
  cache_dir = os.path.expanduser(cfg.get("cache_dir", "") or "")
  if not cache_dir:
    return simulate(cfg, num_stages)
  key = {"config": {k: v for k, v in cfg.to_dict().items() if k != "cache_dir"}, "num_stages": num_stages,
         "version": FORMAT_VERSION}
  return cache.cached("synthetic", key, lambda: simulate(cfg, num_stages), cache_dir=cache_dir)


def simulate(cfg: ConfigDict, num_stages: int) -> CascadeData:
  """`load` without the cache: the world and the logs, from `cfg` alone."""
  world_rng, log_rng = synthetic_world.rngs(cfg)
  world = make_world(cfg, world_rng)
  total = cfg.num_train + cfg.num_test
  if cfg.get("layout", "default") == "recflow":
    logs = synthetic_recflow.log_requests(cfg, world, log_rng, total, num_stages)
  else:
    logs = _log_cascade(cfg, world, log_rng, total)
  request_ids = np.arange(total)
  split = {"train": slice(0, cfg.num_train), "test": slice(cfg.num_train, total)}
  return CascadeData(
      features=features(cfg), num_stages=num_stages,
      splits={name: logs.take(idx) for name, idx in split.items()},
      request_ids={name: request_ids[idx] for name, idx in split.items()})


def corpus(cfg: ConfigDict, data: CascadeData) -> item_corpus.Corpus:
  """Every item of the simulated world (`num_items`, drawn by requests or not), with its category and
  creator, counts from `data`'s training split.

  Raises:
    ValueError: with `config.data.cross_features`, whose user x item rows depend on the request.
  """
  if cfg.get("cross_features", ()):
    raise ValueError("config.data.cross_features: cross features depend on the request, so corpus items "
                     "cannot be scored without one; drop them to retrieve from the corpus")
  world = synthetic_world.hidden_world(cfg)
  ids = np.arange(cfg.num_items)
  return item_corpus.with_counts(data, "item_id", {"item_id": ids + 1, "category": world.item_category[ids] + 1,
                                                   "creator": world.item_creator[ids] + 1})
