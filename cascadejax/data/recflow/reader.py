"""RecFlow (Kuaishou, ICLR 2025, CC BY-SA 4.0): full-flow logs of a production cascade -> `CascadeData`.

RecFlow records, for every request, videos dropped at each stage of Kuaishou's cascade (pre-rank,
coarse rank, rank, re-rank) beside the exposed ones. Users download it by hand (see `docs/data.md`)
and point `config.data.dir` at the folder holding

    all_stage/<YYYY-MM-DD>.feather     one row per (request, video): ids, stage flags, positions, feedback
    seq_effective_50_dict/<day>.pkl    dict request_id -> int array [50, >= 8]: the user's last 50
                                       effective views, oldest first, left-padded; columns 0..4 =
                                       video_id, author_id, category_level_two, category_level_one,
                                       upload_type; a step is valid iff column 7 (its timestamp) > 0
    others/id_cnt.pkl                  dict field -> id count; raw ids lie in [0, id_cnt[field]]

**Requests.** Rows are grouped by `request_id`. Each row belongs to the deepest of
`config.data.groups` (ordered shallowest first) whose flag is 1; rows in none are not candidates.
Per request, up to `per_group` rows of each group are kept, the same ones on every run: those with
the smallest hash of (seed, request_id, video_id). The N = len(groups) * per_group slots hold the
kept candidates in a seeded pseudo-random order, padding last. For a candidate of group index d
(0 = shallowest) in an S-stage cascade:

    stage = min(d, S)
    label = d + 1 / (2 + position)   for groups in `config.data.graded` (position = rank_index for
          = d                        rank_pos/rank_neg, rerank_index for rerank_pos/rerank_neg)

so a deeper group always outranks a shallower one and, inside a graded group, a better (smaller)
logged position ranks higher. LCRON's two-stage setting: groups (prerank_neg, coarse_neg, rank_neg,
rank_pos), 10 each, N = 40, retrieval keeps 30 and pre-rank 20, ground truth = the 10 rank_pos
videos; three stages: (prerank_neg, coarse_neg, rank_neg, rerank_neg, rerank_pos), N = 50.

With `config.data.label_values = "reference"` (absent = "graded") the labels are instead the values
the LCRON authors' data loaders hand every loss (`dataset2.py`, `dataset3.py`): 30 - position in the
deepest group, and 30 - a fixed index in the others (rerank_neg 22, rank_neg 23, coarse_neg 24,
prerank_neg 25: labels 8, 7, 6, 5). They order every pair as the graded labels do, ties included;
only losses that use label values as gains (FS-LambdaLoss) see the difference.

**Features** (ids shifted by one, 0 = padding; tables sized id_cnt + 2, as RecFlow's reference code
sizes them): user `user_id device_id age gender province` plus the request's `request_hour` and
`request_wday` (local time at `utc_offset_hours`); items `video_id author_id category_level_one
category_level_two upload_type`; sequences `history` (video ids, table `video_id`) and
`history_<field>` for the other `history_fields`, the last `history_len` steps. Feedback columns
become float32 `CascadeBatch.feedback` fields (multi-task labels).

**Bad input** raises ValueError naming the file, column and row: a missing column, a non-integer or
NaN column, a null, a flag outside {0, 1}, a negative or out-of-vocabulary id, user columns that
change inside a request, a video twice in one request, a request in two day files, a request with
no behaviour sequence, a truncated or unreadable file. Filters (rows in no configured group,
candidates beyond `per_group`, requests left without candidates, requests beyond
`max_requests_per_day`) are counted and logged for every day when the data is built.
"""

from __future__ import annotations

import os

import numpy as np
from absl import logging
from ml_collections import ConfigDict

from cascadejax.data import cache, hashing
from cascadejax.data.recflow import files
from cascadejax.data.recflow.config import (BINARY_FEEDBACK, CONTEXT_FIELDS, POSITION, check_config, day_range,
                                           groups, reference_labels)
from cascadejax.data.recflow.history import history_name, read_history
from cascadejax.data.schema import CascadeBatch, CascadeData, FeatureSpec

FORMAT_VERSION = 1  # of this reader's output; part of the cache key
DOWNLOAD = "https://github.com/RecFlow-ICLR/RecFlow (the USTC Drive link in its README)"
def features(cfg: ConfigDict, id_cnt: dict[str, int]) -> tuple[FeatureSpec, ...]:
  """The id features of `cfg`, tables sized from `others/id_cnt.pkl`."""
  size = lambda f: CONTEXT_FIELDS[f] + 1 if f in CONTEXT_FIELDS else id_cnt[f] + 2
  out = [FeatureSpec(f, "user", f, size(f)) for f in cfg.user_fields]
  if cfg.history_len:
    out += [FeatureSpec(history_name(f), "user", f, size(f), sequence=True) for f in cfg.history_fields]
  return tuple(out + [FeatureSpec(f, "items", f, size(f)) for f in cfg.item_fields])


def _paths(cfg: ConfigDict) -> dict[str, list[str]]:
  root = os.path.expanduser(cfg.dir)
  if not os.path.isdir(root):
    raise ValueError(f"config.data.dir: no RecFlow data at {os.path.abspath(root)!r}. Download RecFlow by "
                     f"hand from {DOWNLOAD} and set config.data.dir to the folder holding all_stage/, "
                     "seq_effective_50_dict/ and others/")
  days = {"train": day_range(cfg.train_days, "train_days"), "test": day_range(cfg.test_days, "test_days")}
  out = {"id_cnt": [os.path.join(root, "others", "id_cnt.pkl")]}
  for split, ds in days.items():
    out[split] = [os.path.join(root, "all_stage", f"{d}.feather") for d in ds]
    if cfg.history_len:
      out[f"{split}_seq"] = [os.path.join(root, "seq_effective_50_dict", f"{d}.pkl") for d in ds]
  missing = [p for ps in out.values() for p in ps if not os.path.isfile(p)]
  if missing:
    raise ValueError(f"config.data.dir={cfg.dir!r}: {len(missing)} RecFlow file(s) missing, e.g. "
                     f"{missing[:3]}; check config.data.train_days/test_days and the download ({DOWNLOAD})")
  return out


def read_day(cfg: ConfigDict, path: str, num_stages: int, id_cnt: dict[str, int]) -> dict:
  """One `all_stage` day file -> per-request arrays (request ids, user/item ids, stage, label, ...).

  Flags, request ids and video ids are checked on every row; the other columns on every row that
  belongs to a group (rows in no group are never used).
  """
  gs, m = groups(cfg, num_stages), cfg.per_group
  users = [f for f in cfg.user_fields if f not in CONTEXT_FIELDS]
  per_request = users + (["request_timestamp"] if any(f in CONTEXT_FIELDS for f in cfg.user_fields) else [])
  positions = {POSITION[g] for g in cfg.graded}
  names = list(dict.fromkeys(["request_id", "video_id", *gs, *per_request, *cfg.item_fields, *positions,
                              *cfg.feedback]))
  total, column = files.feather_columns(path, names)
  every = np.arange(total)
  depth = np.full(total, -1)
  for d, g in enumerate(gs):
    flag = column(g)
    files.require((flag == 0) | (flag == 1), path, g, every, flag, "stage flags must be 0 or 1")
    depth = np.where(flag == 1, d, depth)
  rid_all = column("request_id")
  files.require(rid_all >= 0, path, "request_id", every, rid_all, "request ids must be >= 0")
  rows = np.flatnonzero(depth >= 0)  # file rows that are candidates
  depth, rid, video = depth[rows], rid_all[rows], column("video_id")[rows]
  stats = {"rows": total, "rows_in_no_group": total - len(rows), "requests": 0,
           "requests_without_candidates": len(np.unique(rid_all)) - len(np.unique(rid))}
  del rid_all
  files.require((video >= 0) & (video <= id_cnt["video_id"]), path, "video_id", rows, video,
           f"ids must lie in [0, {id_cnt['video_id']}] (others/id_cnt.pkl)")
  requests, first, inverse = np.unique(rid, return_index=True, return_inverse=True)
  u64 = lambda x: x.astype(np.uint64)
  pairs = u64(inverse) * np.uint64(id_cnt["video_id"] + 1) + u64(video)  # one number per (request, video)
  sorted_pairs = np.sort(pairs)
  if (sorted_pairs[1:] == sorted_pairs[:-1]).any():
    twice = np.flatnonzero(pairs == sorted_pairs[np.argmax(sorted_pairs[1:] == sorted_pairs[:-1])])[:2]
    raise ValueError(f"{path}: column 'video_id' rows {rows[twice[0]]} and {rows[twice[1]]}: video "
                     f"{video[twice[0]]} appears twice in request {rid[twice[0]]}")
  del pairs, sorted_pairs
  stats["requests"] = len(requests)
  if cfg.max_requests_per_day and len(requests) > cfg.max_requests_per_day:
    chosen = np.zeros(len(requests), bool)
    chosen[np.argsort(hashing.seeded_hash(cfg.seed, requests), kind="stable")[:cfg.max_requests_per_day]] = True
    keep = chosen[inverse]
    rows, depth, rid, video = rows[keep], depth[keep], rid[keep], video[keep]
    requests, first, inverse = np.unique(rid, return_index=True, return_inverse=True)
  stats["requests_over_max"] = stats["requests"] - len(requests)

  # Up to m per (request, group): the ones with the smallest seeded hash (its top 32 bits sort
  # inside the group, the group's number above them).
  group = u64(inverse) * np.uint64(len(gs)) + u64(depth)
  order = np.argsort((group << np.uint64(32)) | (hashing.seeded_hash(cfg.seed, rid, video) >> np.uint64(32)), kind="stable")
  sorted_group = group[order]
  run = np.ones(len(order), bool)
  run[1:] = sorted_group[1:] != sorted_group[:-1]
  start = np.maximum.accumulate(np.where(run, np.arange(len(order)), 0))
  kept = order[np.arange(len(order)) - start < m]
  stats["candidates_over_per_group"] = len(order) - len(kept)
  del group, order, sorted_group, run, start
  # Slots: the request's kept candidates in a second seeded order.
  slot_key = (u64(inverse[kept]) << np.uint64(32)) | (hashing.seeded_hash(cfg.seed + 1, rid[kept], video[kept]) >> np.uint64(32))
  kept = kept[np.argsort(slot_key, kind="stable")]
  req = inverse[kept]
  slot = np.arange(len(kept)) - np.searchsorted(req, req)
  shape = (len(requests), len(gs) * m)
  mask = np.zeros(shape, bool)
  mask[req, slot] = True

  def grid(values, dtype):
    out = np.zeros(shape, dtype)
    out[req, slot] = values
    return out

  c = {}  # every other column, checked on the candidate rows, then cut to what is kept
  for name in dict.fromkeys(n for n in [*per_request, *cfg.item_fields, *positions, *cfg.feedback] if n != "video_id"):
    v = column(name)[rows]
    if name in per_request:
      ok = v == v[first][inverse]
      if not ok.all():
        i = int(np.argmin(ok))
        raise ValueError(f"{path}: column {name!r} row {rows[i]}: user/request columns must be constant within "
                         f"a request (request {rid[i]}), got {v[i]} after {v[first[inverse[i]]]}")
    if name in id_cnt:
      files.require((v >= 0) & (v <= id_cnt[name]), path, name, rows, v,
               f"ids must lie in [0, {id_cnt[name]}] (others/id_cnt.pkl)")
    for g in (g for g in cfg.graded if POSITION[g] == name):
      files.require((v >= 0) | (depth != gs.index(g)), path, name, rows, v, f"{g} positions must be >= 0")
    if name in cfg.feedback:
      binary = name in BINARY_FEEDBACK
      files.require(((v == 0) | (v == 1)) if binary else v >= 0, path, name, rows, v,
               "feedback must be 0 or 1" if binary else "must be >= 0")
    if name == "request_timestamp":
      files.require(v >= 0, path, name, rows, v, "must be >= 0")
    c[name] = v[first] if name in per_request else v[kept]

  d = depth[kept]
  if cfg.get("label_values", "graded") == "reference":
    label = reference_labels(d, c[POSITION[gs[-1]]], gs)
  else:
    label = d.astype(np.float64)
    for g in cfg.graded:
      on = d == gs.index(g)
      label[on] += 1.0 / (2.0 + c[POSITION[g]][on])
  user = {f: (c[f] + 1).astype(np.int32) for f in users}
  if "request_timestamp" in c:
    local = c["request_timestamp"] // 1000 + int(cfg.utc_offset_hours * 3600)
    user["request_hour"] = (local // 3600 % 24 + 1).astype(np.int32)
    user["request_wday"] = ((local // 86400 + 3) % 7 + 1).astype(np.int32)  # 1970-01-01 was a Thursday
  items = {f: grid((video[kept] if f == "video_id" else c[f]) + 1, np.int32) for f in cfg.item_fields}
  return dict(path=path, request_ids=requests, first_rows=rows[first], user={f: user[f] for f in cfg.user_fields},
              items=items, stage=grid(np.minimum(d, num_stages), np.int32), label=grid(label, np.float32),
              mask=mask, feedback={f: grid(c[f], np.float32) for f in cfg.feedback}, stats=stats)


def _concat(days: list[dict], has_feedback: bool) -> CascadeBatch:
  cat = lambda get: {k: np.concatenate([get(d)[k] for d in days]) for k in get(days[0])}
  return CascadeBatch(
      user=cat(lambda d: d["user"]), items=cat(lambda d: d["items"]),
      stage=np.concatenate([d["stage"] for d in days]), label=np.concatenate([d["label"] for d in days]),
      mask=np.concatenate([d["mask"] for d in days]),
      feedback=cat(lambda d: d["feedback"]) if has_feedback else None)


def build(cfg: ConfigDict, num_stages: int, paths: dict[str, list[str]]) -> CascadeData:
  """Reads every day file of both splits (no cache)."""
  fields = {f for f in cfg.user_fields if f not in CONTEXT_FIELDS} | set(cfg.item_fields)
  id_cnt = files.read_id_cnt(paths["id_cnt"][0], sorted(fields | (set(cfg.history_fields) if cfg.history_len else set())))
  splits, request_ids, every = {}, {}, []
  for split in ("train", "test"):
    days = []
    for i, path in enumerate(paths[split]):
      day = read_day(cfg, path, num_stages, id_cnt)
      if cfg.history_len:
        day["user"].update(read_history(cfg, paths[f"{split}_seq"][i], day, id_cnt))
      logging.info("recflow %s: %s", path, ", ".join(f"{k} {v:,}" for k, v in day["stats"].items()))
      days.append(day)
      every.append(day)
    ids = np.concatenate([d["request_ids"] for d in days])
    if not len(ids):
      raise ValueError(f"config.data.{split}_days: no request has a candidate in config.data.groups")
    splits[split], request_ids[split] = _concat(days, bool(cfg.feedback)), ids
  ids = np.concatenate([d["request_ids"] for d in every])
  source = np.repeat(np.arange(len(every)), [len(d["request_ids"]) for d in every])
  order = np.argsort(ids, kind="stable")
  twice = np.flatnonzero(ids[order][1:] == ids[order][:-1])
  if len(twice):
    a, b = order[twice[0]], order[twice[0] + 1]
    raise ValueError(f"{every[source[b]]['path']}: request_id {ids[a]} also appears in "
                     f"{every[source[a]]['path']}; a request must appear in one day file only")
  dropped = {}
  for d in every:
    for k, v in d["stats"].items():
      if k not in ("rows", "requests"):
        dropped[k] = dropped.get(k, 0) + int(v)
  report = {"files": {d["path"]: {k: int(v) for k, v in d["stats"].items()} for d in every}, "dropped": dropped}
  return CascadeData(features=features(cfg, id_cnt), num_stages=num_stages, splits=splits,
                     request_ids=request_ids, report=report)


def load(cfg: ConfigDict, num_stages: int) -> CascadeData:
  """RecFlow's `train_days` and `test_days` as splits "train" and "test", through the cache.

  Args:
    cfg: the `config.data` section (see `configs/reference/recflow_two_stage.py`).
    num_stages: S, the number of stages of the cascade trained on it.
  """
  check_config(cfg, num_stages)
  paths = _paths(cfg)
  root = os.path.expanduser(cfg.dir)
  stamps = [(os.path.relpath(p, root), os.stat(p).st_size, os.stat(p).st_mtime_ns)
            for ps in paths.values() for p in ps]
  settings = {k: v for k, v in cfg.items() if k not in ("dir", "cache_dir")}
  key = {"version": FORMAT_VERSION, "num_stages": num_stages, "config": settings, "files": stamps}
  cache_dir = cfg.get("cache_dir") or None
  return cache.cached("recflow", key, lambda: build(cfg, num_stages, paths), cache_dir=cache_dir)
