"""MovieLens cascade logs: a logged S-stage cascade simulated on real interactions.

The protocol follows the offline simulation of Full Stage Learning to Rank (Zheng et al., WWW 2024,
section 8.1), adapted from the fully observed KuaiRec to sparse MovieLens interactions:

1. **Split, test first** (the paper's three-step split). Each user's interactions, in time order
   (by timestamp; files without timestamps are ordered by a seeded shuffle, since MovieLens file
   order is not chronological), are cut into `past` (the first 1 - train_fraction - test_fraction),
   `train` (the next train_fraction) and `test` (the last test_fraction), each at least one
   interaction (users with fewer than three are dropped and counted). Test positives are reserved
   first and appear in no training request, not even as negatives; then the training positives; the
   teachers and the training requests' histories see only `past`.
2. **Teachers** (the logged production stages): stage s scores (u, i) with a rank-d_s truncated SVD
   of the binary user x item matrix of `past` (PureSVD, Cremonesi et al. 2010: f_s(u, i) =
   x_u V_s V_s^T e_i with V_s the top d_s right singular vectors) plus w_pop times the standardised
   log popularity of i in `past`, standardised over a fixed sample of (user, item) pairs, plus
   N(0, noise_s^2) noise drawn per request. Larger d_s = more capacity (`production.dims`).
3. **Requests.** A request of user u holds N candidates: up to `positives_per_request` of u's
   positives of the split (train or test segment), sampled without replacement, and negatives that
   u never interacted with, sampled without replacement with probability proportional to
   popularity^negative_alpha (alpha = 1 gives negatives the item distribution of positives, so item
   identity alone does not reveal a positive). Slots are shuffled. Stage 1 keeps its top k_1 by
   teacher 1, stage 2 its top k_2 of those by teacher 2, ...; `stage` records how deep each got.
4. **Labels** (`label_mode`), with d(i) the score of the last teacher that judged i and
   sigma the logistic function:
     system: label = stage + sigma(d(i))             ground truth = what the last teacher shows (LCRON)
     user:   label = (S + 1) [i positive] + stage + sigma(d(i))
             real held-out positives above everything, then by stage reached (FS-LTR)
   `feedback["click"]` = positive and exposed (stage S), for FS-LTR's top level.

Features: user_id, history (u's earlier interactions, most recent first: `past` for training
requests, `past` + `train` for test requests), gender/age/occupation when a users file exists,
item_id, genre (first listed) and year when a movies file exists. Ids are 1-based, 0 = padding.
Everything is deterministic in `config.data.seed`; the result is cached (`cascadejax.data.cache`).
"""

from __future__ import annotations

import os

import numpy as np
import scipy.sparse
from absl import logging
from ml_collections import ConfigDict

from cascadejax.data import cache
from cascadejax.data.movielens import ratings
from cascadejax.data.schema import CascadeBatch, CascadeData, FeatureSpec

FORMAT_VERSION = 1  # of this simulation; bump when its output changes
LABEL_MODES = ("system", "user")
SEGMENTS = {"past": 0, "train": 1, "test": 2}


def check_config(cfg: ConfigDict, num_stages: int) -> None:
  """Raises `ValueError` naming the `config.data` key that makes the simulation impossible."""
  p = cfg.production
  for key in ("ks", "noise", "dims"):
    if len(tuple(p[key])) != num_stages:
      raise ValueError(f"config.data.production.{key} needs one value per stage ({num_stages}), got {tuple(p[key])}")
  prev, prev_key = cfg.list_size, "config.data.list_size"
  for s, k in enumerate(p.ks):
    if not 0 < k < prev:
      raise ValueError(f"config.data.production.ks[{s}]={k} must be in [1, {prev}) ({prev_key}): each "
                       "teacher stage keeps fewer candidates than it receives")
    prev, prev_key = k, f"config.data.production.ks[{s}]"
  if any(d < 1 for d in p.dims) or any(not np.isfinite(x) or x < 0 for x in p.noise):
    raise ValueError(f"config.data.production: dims must be >= 1 and noise finite and >= 0, got "
                     f"dims={tuple(p.dims)} noise={tuple(p.noise)}")
  if cfg.label_mode not in LABEL_MODES:
    raise ValueError(f"config.data.label_mode: {cfg.label_mode!r} is not one of {LABEL_MODES}")
  f_train, f_test = cfg.train_fraction, cfg.test_fraction
  if not (0 < f_train < 1 and 0 < f_test < 1 and f_train + f_test < 1):
    raise ValueError(f"config.data.train_fraction={f_train} and test_fraction={f_test} must be in (0, 1) "
                     "and leave a past segment (sum < 1)")
  lo = 1 if cfg.label_mode == "user" else 0
  if not lo <= cfg.positives_per_request <= cfg.list_size:
    raise ValueError(f"config.data.positives_per_request={cfg.positives_per_request} must be in "
                     f"[{lo}, list_size={cfg.list_size}]")
  for key in ("requests_per_user", "test_requests_per_user"):
    if cfg[key] < 1:
      raise ValueError(f"config.data.{key} must be >= 1, got {cfg[key]}")
  if cfg.history_len < 0 or not np.isfinite(cfg.negative_alpha) or cfg.negative_alpha < 0:
    raise ValueError(f"config.data.history_len ({cfg.history_len}) and negative_alpha "
                     f"({cfg.negative_alpha}) must be >= 0")
  if cfg.duplicates not in ("error", "merge"):
    raise ValueError(f"config.data.duplicates: {cfg.duplicates!r} is not 'error' or 'merge'")


def split_segments(ml: ratings.MovieLens, cfg: ConfigDict, rng: np.random.Generator):
  """Per-interaction segment (0 past, 1 train, 2 test; -1 for dropped users) and time rank.

  Returns:
    (segment [E] int8, order [E]: the interactions sorted by user then time, kept [U] bool).
  """
  tick = ml.timestamp if ml.timestamp is not None else rng.permutation(len(ml.user))
  order = np.lexsort((np.arange(len(ml.user)), tick, ml.user))  # ties keep file order
  n = np.bincount(ml.user, minlength=len(ml.user_ids))
  start = np.concatenate([[0], np.cumsum(n)[:-1]])
  rank = np.empty(len(order), np.int64)
  rank[order] = np.arange(len(order)) - start[ml.user[order]]
  n_test = np.maximum(1, np.round(cfg.test_fraction * n)).astype(np.int64)
  n_train = np.maximum(1, np.round(cfg.train_fraction * n)).astype(np.int64)
  kept = n - n_test - n_train >= 1
  from_end = n[ml.user] - rank
  segment = np.where(from_end <= n_test[ml.user], 2, np.where(from_end <= (n_test + n_train)[ml.user], 1, 0))
  segment = np.where(kept[ml.user], segment, -1).astype(np.int8)
  if not kept.all():
    logging.warning("movielens: dropped %d users with fewer than 3 interactions (%d interactions)",
                    int((~kept).sum()), int(n[~kept].sum()))
  if not kept.any():
    raise ValueError("movielens: no user has the 3 interactions needed for past, train and test segments")
  return segment, order, kept


def fit_teachers(user: np.ndarray, item: np.ndarray, shape: tuple[int, int], rank: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Rank-`rank` truncated SVD X ~ (U S) V^T of the binary interaction matrix (randomised, Halko et al. 2011).

  Returns:
    (user factors U S `[num_users, rank]`, item factors V `[num_items, rank]`), columns by
    decreasing singular value, so a rank-d teacher uses the first d columns.
  """
  x = scipy.sparse.csr_matrix((np.ones(len(user), np.float64), (user, item)), shape=shape)
  x.sum_duplicates()
  x.data[:] = 1.0
  width = min(rank + 10, min(shape))
  q = np.linalg.qr(x @ rng.normal(size=(shape[1], width)))[0]
  for _ in range(3):  # power iterations sharpen the spectrum's tail
    q = np.linalg.qr(x @ np.linalg.qr(x.T @ q)[0])[0]
  u, s, vt = np.linalg.svd((x.T @ q).T, full_matrices=False)
  r = min(rank, width)
  pad = lambda a: np.pad(a, ((0, 0), (0, rank - r)))  # a tiny matrix has fewer components than asked
  return pad((q @ u[:, :r]) * s[:r]).astype(np.float32), pad(vt[:r].T).astype(np.float32)


class Teachers:
  """The S logged production stages' scoring functions (see the module docstring, step 2)."""

  def __init__(self, cfg: ConfigDict, user_factors, item_factors, log_pop, rng: np.random.Generator):
    self.dims, self.w_pop = tuple(cfg.production.dims), cfg.production.w_pop
    self.p, self.q = user_factors, item_factors
    self.pop = (log_pop - log_pop.mean()) / (log_pop.std() + 1e-9)
    u = rng.integers(0, len(self.p), 20_000)
    i = rng.integers(0, len(self.q), (20_000, 1))
    raw = [self._raw(s, u, i) for s in range(len(self.dims))]
    self.mean = [float(r.mean()) for r in raw]
    self.std = [float(r.std()) + 1e-9 for r in raw]

  def _raw(self, s: int, user: np.ndarray, items: np.ndarray) -> np.ndarray:
    d, out = self.dims[s], np.empty(items.shape, np.float32)
    for lo in range(0, len(user), 1024):  # [chunk, I] score matrices: one BLAS call, bounded memory
      full = self.p[user[lo:lo + 1024], :d] @ self.q[:, :d].T + self.w_pop * self.pop
      out[lo:lo + 1024] = np.take_along_axis(full, items[lo:lo + 1024], 1)
    return out

  def __call__(self, s: int, user: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Standardised noiseless scores `[B, N]` of teacher s for `[B]` users and `[B, N]` items."""
    return (self._raw(s, user, items) - self.mean[s]) / self.std[s]


def _segments_per_user(ml, segment, order, num_users):
  """user -> (past, train, test) item arrays in time order (oldest first)."""
  out = [([], [], []) for _ in range(num_users)]
  seg = segment[order]
  bounds = np.flatnonzero(np.diff(ml.user[order])) + 1
  for idx in np.split(np.arange(len(order)), bounds):
    if len(idx) and seg[idx[0]] >= 0:
      u, items, s = ml.user[order[idx[0]]], ml.item[order[idx]], seg[idx]
      out[u] = tuple(items[s == k] for k in range(3))
  return out


def _requests(ml, per_user, users, split, cfg, teachers, num_stages, rng) -> CascadeBatch:
  """Simulates the logged cascade on requests of `users` (one entry per request)."""
  n, num_items = cfg.list_size, len(ml.item_ids)
  seg = SEGMENTS[split]
  logits = cfg.negative_alpha * np.log(np.bincount(ml.item, minlength=num_items) + 1.0)
  cand = np.zeros((len(users), n), np.int64)
  valid = np.zeros((len(users), n), bool)
  positive = np.zeros((len(users), n), bool)
  for lo in range(0, len(users), 1024):
    chunk = users[lo:lo + 1024]
    seen = np.zeros((len(chunk), num_items), bool)
    for r, u in enumerate(chunk):
      seen[r, np.concatenate(per_user[u])] = True
    g = np.where(seen, -np.inf, logits - np.log(-np.log(rng.random(seen.shape) + 1e-12) + 1e-12))
    neg = np.argpartition(-g, n - 1, axis=1)[:, :n]  # Gumbel top-n: sampling without replacement,
    neg = np.take_along_axis(neg, np.argsort(-np.take_along_axis(g, neg, 1), axis=1), 1)  # in draw order
    neg_ok = np.take_along_axis(g, neg, 1) > -np.inf
    for r, u in enumerate(chunk):
      pos = per_user[u][seg]
      pos = rng.choice(pos, size=min(len(pos), cfg.positives_per_request), replace=False)
      row, m = lo + r, len(pos)
      cand[row, :m], positive[row, :m], valid[row, :m] = pos, True, True
      cand[row, m:], valid[row, m:] = neg[r, :n - m], neg_ok[r, :n - m]
  slots = np.argsort(np.where(valid, rng.random(valid.shape), 2.0), axis=1)  # shuffle, padding last
  cand, valid, positive = (np.take_along_axis(a, slots, 1) for a in (cand, valid, positive))

  stage = np.zeros(cand.shape, np.int32)
  decided = np.zeros(cand.shape, np.float32)
  alive = valid.copy()
  for s, (k, sigma) in enumerate(zip(cfg.production.ks, cfg.production.noise)):
    score = teachers(s, users, cand) + sigma * rng.normal(size=cand.shape)
    rank = np.argsort(np.argsort(-np.where(alive, score, -np.inf), axis=1), axis=1)
    survive = alive & (rank < k)
    decided = np.where(alive, score, decided)
    stage[survive] = s + 1
    alive = survive
  label = stage + 1.0 / (1.0 + np.exp(-decided))
  if cfg.label_mode == "user":
    label = label + (num_stages + 1) * positive
  label = np.where(valid, label, 0.0).astype(np.float32)

  ids = lambda a: np.where(valid, a, 0).astype(np.int32)
  user_feats = {"user_id": (users + 1).astype(np.int32), **{k: v[users] for k, v in ml.user_features.items()}}
  if cfg.history_len:
    hist = np.zeros((len(users), cfg.history_len), np.int32)
    for r, u in enumerate(users):
      h = np.concatenate(per_user[u][:seg])[::-1][:cfg.history_len]  # most recent first
      hist[r, :len(h)] = h + 1
    user_feats["history"] = hist
  items = {"item_id": ids(cand + 1), **{k: ids(v[cand]) for k, v in ml.item_features.items()}}
  click = (positive & (stage == num_stages)).astype(np.float32)
  return CascadeBatch(user=user_feats, items=items, stage=stage, label=label, mask=valid,
                      feedback={"click": click})


def features(ml: ratings.MovieLens, cfg: ConfigDict) -> tuple[FeatureSpec, ...]:
  """The id features of the simulated logs (side features only where the files have them)."""
  num_items = len(ml.item_ids) + 1
  specs = [FeatureSpec("user_id", "user", "user_id", len(ml.user_ids) + 1)]
  specs += [FeatureSpec(k, "user", k, ml.vocab[k]) for k in ml.user_features]
  if cfg.history_len:
    specs.append(FeatureSpec("history", "user", "item_id", num_items, sequence=True))
  specs.append(FeatureSpec("item_id", "items", "item_id", num_items))
  specs += [FeatureSpec(k, "items", k, ml.vocab[k]) for k in ml.item_features]
  return tuple(specs)


def simulate(ml: ratings.MovieLens, cfg: ConfigDict, num_stages: int) -> CascadeData:
  """The whole protocol of the module docstring on already-read interactions."""
  order_rng, svd_rng, teacher_rng, train_rng, test_rng = (
      np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(5))
  segment, order, kept = split_segments(ml, cfg, order_rng)
  num_users, num_items = len(ml.user_ids), len(ml.item_ids)
  past = segment == 0
  p, q = fit_teachers(ml.user[past], ml.item[past], (num_users, num_items), max(cfg.production.dims), svd_rng)
  log_pop = np.log1p(np.bincount(ml.item[past], minlength=num_items)).astype(np.float32)
  teachers = Teachers(cfg, p, q, log_pop, teacher_rng)
  per_user = _segments_per_user(ml, segment, order, num_users)
  users = np.flatnonzero(kept)
  train_users = np.repeat(users, cfg.requests_per_user)
  test_users = np.repeat(users, cfg.test_requests_per_user)
  splits = {"train": _requests(ml, per_user, train_users, "train", cfg, teachers, num_stages, train_rng),
            "test": _requests(ml, per_user, test_users, "test", cfg, teachers, num_stages, test_rng)}
  logging.info("movielens: %s; %d train and %d test requests of %d candidates", ml.counts,
               len(train_users), len(test_users), cfg.list_size)
  dropped = {k: v for k, v in ml.counts.items() if k in ("below_min_rating", "duplicates_merged")}
  dropped.update(users_below_3_interactions=int((~kept).sum()))
  report = {"counts": ml.counts, "dropped": dropped, "requests": {"train": len(train_users), "test": len(test_users)}}
  return CascadeData(features=features(ml, cfg), num_stages=num_stages, splits=splits,
                     request_ids={"train": np.arange(len(train_users)),
                                  "test": len(train_users) + np.arange(len(test_users))}, report=report)


def load(cfg: ConfigDict, num_stages: int) -> CascadeData:
  """Reads `cfg.dir` and simulates the logs, or loads them from the cache (`cfg.cache_dir`, "" = off).

  Args:
    cfg: the `config.data` section (see `configs/movielens_two_stage.py`).
    num_stages: S, the number of teacher stages simulated.

  Returns:
    `CascadeData` with splits "train" and "test" (disjoint positives, see the module docstring).
  """
  check_config(cfg, num_stages)
  directory = ratings.resolve_dir(cfg.dir)
  files = [f for f in ratings.source_files(directory, cfg.interactions).values() if f]
  settings = {k: v for k, v in cfg.to_dict().items() if k not in ("dir", "cache_dir")}
  key = {"config": settings, "num_stages": num_stages, "version": FORMAT_VERSION,
         "files": [(os.path.abspath(f), os.path.getsize(f), os.path.getmtime(f)) for f in files]}

  def build() -> CascadeData:
    ml = ratings.read(directory, cfg.interactions, duplicates=cfg.duplicates, min_rating=cfg.min_rating)
    return simulate(ml, cfg, num_stages)

  return cache.cached("movielens", key, build, cache_dir=os.path.expanduser(cfg.cache_dir) or None)
