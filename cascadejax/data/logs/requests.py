"""Pass 2 of the conversion: one partition's rows -> padded requests (`CascadeBatch` arrays per day).

Rows are grouped by request; each request is checked (one day, one user, one history, no item
twice), capped at N = `list_size` candidates (every exposed candidate first, then the smallest
seeded hash of (seed, request, item)), put in a second seeded slot order and padded. Requests come
out ordered by (day, partition hash, request hash), which does not depend on how many partitions
the conversion used.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cascadejax.data import hashing
from cascadejax.data.logs.config import LogsSection
from cascadejax.data.logs.vocab import Vocabulary


def _where(paths: list[str], table: pa.Table, i: int) -> str:
  return f"{paths[int(table['__file'][i].as_py())]} row {table['__row'][i].as_py()}"


def _recent(offsets: np.ndarray, ends: np.ndarray, length: int, values: np.ndarray) -> np.ndarray:
  """[R, length] of the last `length` values before `ends` (and from `offsets` on), oldest first,
  left-padded with 0."""
  idx = ends[:, None] - length + np.arange(length)[None, :]
  valid = idx >= offsets[:, None]
  return np.where(valid, values[np.clip(idx, 0, max(len(values) - 1, 0))] if len(values) else 0, 0).astype(np.int32)


def build(s: LogsSection, num_stages: int, rows: pa.Table, vocabs: dict[str, Vocabulary], paths: list[str],
          stats: dict, history: pa.Table | None = None, events: pa.Table | None = None) -> dict[int, dict]:
  """The requests of one partition, as day -> {"user", "items", "stage", "label", "mask",
  "feedback", "request_ids"} NumPy arrays; filters and OOV ids are added to `stats`."""
  col = lambda name: rows[name].to_numpy()
  rh, ph, ih, day, stage = col("__rh"), col("__ph"), col("__ih"), col("__day"), col("__stage")
  order = np.lexsort((ih, rh, ph))
  rows = rows.take(pa.array(order))
  rh, ph, ih, day, stage = rh[order], ph[order], ih[order], day[order], stage[order]
  start = np.flatnonzero(np.r_[True, (rh[1:] != rh[:-1]) | (ph[1:] != ph[:-1])])
  group = np.cumsum(np.r_[False, (rh[1:] != rh[:-1]) | (ph[1:] != ph[:-1])])
  first = start[group]
  g_rh = rh[start]
  if len(np.unique(g_rh)) < len(g_rh):
    twice = np.flatnonzero(np.isin(rh, g_rh[np.unique(g_rh, return_counts=True)[1] > 1][:1]))
    raise ValueError(f"{_where(paths, rows, twice[0])} and {_where(paths, rows, twice[-1])}: the same request has "
                     f"two values of {s.user_features[0]!r}; user columns must be constant within a request")
  same_as_first = lambda c: pc.equal(rows[c], rows[c].take(pa.array(first))).to_numpy(zero_copy_only=False)
  checks = [(day != day[first], "a request must lie in one day (config.data.day / timestamp)")]
  checks += [(~same_as_first(c), "two different requests share a 64-bit hash (please report this)") for c in s.request]
  checks += [(~same_as_first(c), f"column {c!r} must be constant within a request") for c in s.user_features]
  for bad, what in checks:
    if bad.any():
      i = int(np.argmax(bad))
      raise ValueError(f"{_where(paths, rows, i)} and {_where(paths, rows, first[i])}: {what}")
  same = np.r_[False, (group[1:] == group[:-1]) & (ih[1:] == ih[:-1])]
  if same.any():
    i = int(np.argmax(same))
    raise ValueError(f"{_where(paths, rows, i - 1)} and {_where(paths, rows, i)}: item "
                     f"{rows[s.item_features[0]][i].as_py()!r} appears twice in one request")
  if "__hh" in rows.column_names:
    hh = col("__hh")
    if (hh != hh[first]).any():
      i = int(np.argmax(hh != hh[first]))
      raise ValueError(f"{_where(paths, rows, i)}: the history differs from the one on {_where(paths, rows, first[i])}; "
                       "a request's history lists must be equal on all its rows")
  if s.timestamp is not None:
    t = col(s.timestamp)
    if (t != t[first]).any():
      i = int(np.argmax(t != t[first]))
      raise ValueError(f"{_where(paths, rows, i)}: column {s.timestamp!r} must be constant within a request")

  # ---- filters: requests with no exposed candidate; candidates beyond N ----
  exposed = stage == num_stages
  n_exposed = np.bincount(group, weights=exposed, minlength=len(start))
  keep_group = n_exposed > 0 if s.require_exposed else np.ones(len(start), bool)
  stats["requests"] = stats.get("requests", 0) + len(start)
  stats["requests_without_exposed"] = stats.get("requests_without_exposed", 0) + int((~keep_group).sum())
  n = s.list_size
  prio = (hashing.seeded_hash(s.seed, rh, ih) >> np.uint64(1)) | (~exposed).astype(np.uint64) << np.uint64(63)
  order = np.lexsort((prio, group))
  rank = np.arange(len(order)) - start[group[order]]
  candidate = keep_group[group[order]]
  kept = order[(rank < n) & candidate]
  dropped = order[(rank >= n) & candidate]
  stats["candidates_over_max"] = stats.get("candidates_over_max", 0) + int((~exposed[dropped]).sum())
  stats["exposed_over_max"] = stats.get("exposed_over_max", 0) + int(exposed[dropped].sum())
  kept = kept[np.lexsort((hashing.seeded_hash(s.seed + 1, rh[kept], ih[kept]), group[kept]))]
  groups = np.flatnonzero(keep_group)
  req = np.searchsorted(groups, group[kept])
  slot = np.arange(len(kept)) - np.searchsorted(req, req)
  shape = (len(groups), n)

  def grid(values, dtype):
    out = np.zeros(shape, dtype)
    out[req, slot] = values
    return out

  label = s.label_options
  taken = rows.take(pa.array(kept))
  lab = taken[label["column"]].to_numpy() if label["column"] else stage[kept].astype(np.float64)
  for c, w in label["add"].items():
    lab = lab + w * taken[c].to_numpy()
  if label["position"] is not None:
    pos = taken[label["position"]].to_numpy()
    lab = lab + np.where(pos >= 0, 1.0 / (2.0 + np.maximum(pos, 0)), 0.0)

  def lookup(table: str, ids: pa.Array) -> np.ndarray:
    mapped, oov = vocabs[table].lookup(ids, f"table {table!r}")
    stats[f"oov.{table}"] = stats.get(f"oov.{table}", 0) + oov
    return mapped

  heads = rows.take(pa.array(start[groups]))
  user = {f: lookup(f, heads[f]) for f in s.user_features}
  items = {f: grid(lookup(f, taken[f]), np.int32) for f in s.item_features}
  h = s.history_options
  if h["length"] and history is not None:
    hist_rh = history["__rh"].to_numpy()
    srt = np.argsort(hist_rh, kind="stable")
    at = srt[np.searchsorted(hist_rh, rh[start[groups]], sorter=srt)]
    for feature in h["columns"]:
      lists = history[feature].combine_chunks().take(pa.array(at))
      offsets = np.asarray(lists.offsets).astype(np.int64)
      values = lookup(h["tables"][feature], pc.list_flatten(lists))
      user[feature] = _recent(offsets[:-1], offsets[1:], h["length"], values)
  elif h["length"]:
    user.update(_join_events(s, heads, events, lookup))
  out = {}
  g_day = day[start[groups]]
  for d in np.unique(g_day):
    r = np.flatnonzero(g_day == d)
    pick = lambda a: a[r]
    out[int(d)] = dict(
        user={k: pick(v) for k, v in user.items()}, items={k: pick(v) for k, v in items.items()},
        stage=pick(grid(stage[kept], np.int32)), label=pick(grid(lab, np.float32)),
        mask=pick(grid(np.ones(len(kept), bool), bool)),
        feedback={f: pick(grid(taken[f].to_numpy(), np.float32)) for f in s.feedback},
        request_ids=pick(rh[start[groups]].view(np.int64)))
  return out


def _join_events(s: LogsSection, heads: pa.Table, events: pa.Table | None, lookup) -> dict[str, np.ndarray]:
  """[R, L] histories: each request's user's last L events strictly before its timestamp."""
  h = s.history_options
  length, user = h["length"], s.user_features[0]
  if events is None:
    events = pa.table({"__user": heads[user].slice(0, 0), "__time": pa.array([], pa.int64()),
                       **{f: pa.array([], heads[h["tables"][f]].type) for f in h["columns"]}})
  codes = pc.dictionary_encode(pa.concat_arrays([heads[user].combine_chunks(),
                                                 events["__user"].combine_chunks()])).indices.to_numpy()
  req_user, ev_user = codes[:heads.num_rows].astype(np.int64), codes[heads.num_rows:].astype(np.int64)
  req_time, ev_time = heads[s.timestamp].to_numpy(), events["__time"].to_numpy()
  times, ranks = np.unique(np.r_[req_time, ev_time], return_inverse=True)
  width = np.int64(len(times) + 1)
  ev_key = ev_user * width + ranks[len(req_time):]
  order = np.argsort(ev_key, kind="stable")
  ev_key = ev_key[order]
  ends = np.searchsorted(ev_key, req_user * width + ranks[:len(req_time)], "left")
  begins = np.searchsorted(ev_key, req_user * width, "left")
  out = {}
  for feature in h["columns"]:
    values = lookup(h["tables"][feature], events[feature].take(pa.array(order)))
    out[feature] = _recent(begins, ends, length, values)
  return out
