"""Log files written by the tests of `cascadejax.data.logs`, and a brute-force construction of the
arrays the converter must produce from them (plain Python loops over the rows)."""

from __future__ import annotations

import collections
import os

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.feather as feather
import pyarrow.parquet as pq
from ml_collections import ConfigDict

from cascadejax.data import hashing

DAYS = ("2024-01-01", "2024-01-02", "2024-01-03")
S = 2


def make_rows(seed: int = 0, *, days=DAYS, requests_per_day: int = 12, items: int = 30, string_ids: bool = True,
              t0: int = 1_704_067_200) -> list[dict]:
  """Candidate rows: string (or int) ids, a list history, a stage, a click on exposed rows."""
  rng = np.random.default_rng(seed)
  rows = []
  ident = (lambda p, x: f"{p}{x}") if string_ids else (lambda p, x: int(x) + 100)
  for d, day in enumerate(days):
    for r in range(requests_per_day):
      user, n = int(rng.integers(6)), int(rng.integers(2, 9))
      chosen = rng.choice(items, n, replace=False)
      stage = rng.integers(0, S + 1, n)
      stage[0] = S if rng.random() > 0.1 else 1  # some requests have no exposed candidate
      hist = [ident("i", x) for x in rng.integers(0, items, rng.integers(0, 6))]
      ts = t0 + d * 86400 + r * 600 + 1
      for i, st in zip(chosen, stage):
        rows.append(dict(request_id=ident("r", d * 1000 + r), day=day, ts=ts, user_id=ident("u", user),
                         item_id=ident("i", i), cat=int(i % 4), stage=int(st),
                         click=float(rng.integers(2)) if st == S else None, hist=hist))
  order = rng.permutation(len(rows))  # a request's rows spread over the files
  return [rows[i] for i in order]


def write(rows: list[dict], directory: str, fmt: str = "parquet", parts: int = 2, name: str = "cands") -> None:
  """Writes `rows` into `parts` files of `fmt` under directory/name/."""
  os.makedirs(os.path.join(directory, name), exist_ok=True)
  for k in range(parts):
    chunk = rows[k::parts]
    path = os.path.join(directory, name, f"part{k}.{ {'feather': 'feather'}.get(fmt, fmt)}")
    if fmt == "csv":
      table = pa.Table.from_pylist([{k2: v for k2, v in r.items() if k2 != "hist"} for r in chunk])
      pacsv.write_csv(table, path)
    else:
      table = pa.Table.from_pylist(chunk)
      (pq.write_table if fmt == "parquet" else feather.write_feather)(table, path)


def config(directory: str, **overrides) -> ConfigDict:
  c = dict(
      name="logs", seed=3, list_size=6, dir=directory, files="cands", request=("request_id",), day="day",
      train_days=DAYS[:2], test_days=(DAYS[2], DAYS[2]), user_features=("user_id",), item_features=("item_id", "cat"),
      stage={"column": "stage"}, label={"add": {"click": 1.0}}, feedback=("click",),
      history={"length": 4, "columns": {"history": "hist"}, "tables": {"history": "item_id"}},
      cache_dir=os.path.join(directory, "cache"), partition_rows=40, batch_rows=32)
  c.update(overrides)  # whole sections replaced, not merged
  return ConfigDict(c)


def _h(value) -> np.uint64:
  return hashing.arrow_hash(pa.array([value]))[0]


def brute_force(rows: list[dict], cfg: ConfigDict, *, events: list[dict] | None = None) -> dict:
  """split -> {"user", "items", "stage", "label", "mask", "feedback", "request_ids"} NumPy arrays."""
  vocab_days = tuple(cfg.get("vocab_days") or cfg.train_days)
  in_days = lambda day, pair: pair[0] <= day <= pair[1]
  counts = collections.defaultdict(collections.Counter)
  seen = set()
  for r in rows:
    if in_days(r["day"], vocab_days):
      for f in (*cfg.user_features, *cfg.item_features):
        counts[f][r[f]] += 1
      if events is None and r["request_id"] not in seen and cfg.history.length:
        seen.add(r["request_id"])
        counts["item_id"].update(r["hist"])
  if events is not None:
    end = max(r["ts"] for r in rows if in_days(r["day"], vocab_days)) // 86400 * 86400 + 86400
    for e in events:
      if e["ts"] < end:
        counts["item_id"][e["item"]] += 1
  vocab = {f: {v: 2 + i for i, (v, _) in enumerate(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))}
           for f, c in counts.items()}
  row = lambda f, v: vocab[f].get(v, 1)  # one OOV bucket: row 1
  out, n, length = {}, cfg.list_size, cfg.history.length
  for split, pair in (("train", cfg.train_days), ("test", cfg.test_days)):
    reqs = collections.defaultdict(list)
    for r in rows:
      if in_days(r["day"], pair):
        reqs[r["request_id"]].append(r)
    reqs = {k: v for k, v in reqs.items() if any(c["stage"] == S for c in v)}
    # requests in (day, partition hash, request hash) order; with events the partition hash is the user's
    keys = sorted(reqs, key=lambda k: (reqs[k][0]["day"], _h(reqs[k][0]["user_id"]) if events else 0, _h(k)))
    b = {"user": {f: [] for f in cfg.user_features} | ({"history": []} if length else {}),
         "items": {f: np.zeros((len(keys), n), np.int32) for f in cfg.item_features},
         "stage": np.zeros((len(keys), n), np.int32), "label": np.zeros((len(keys), n), np.float32),
         "mask": np.zeros((len(keys), n), bool), "feedback": {"click": np.zeros((len(keys), n), np.float32)},
         "request_ids": np.array([_h(k) for k in keys], np.uint64).view(np.int64)}
    for i, k in enumerate(keys):
      cands, rh = reqs[k], _h(k)
      prio = lambda c: ((c["stage"] != S), int(hashing.seeded_hash(cfg.seed, np.array([rh]), np.array([_h(c["item_id"])]))[0]) >> 1)
      kept = sorted(cands, key=prio)[:n]
      kept = sorted(kept, key=lambda c: int(hashing.seeded_hash(cfg.seed + 1, np.array([rh]), np.array([_h(c["item_id"])]))[0]))
      for j, c in enumerate(kept):
        for f in cfg.item_features:
          b["items"][f][i, j] = row(f, c[f])
        b["stage"][i, j], b["mask"][i, j] = c["stage"], True
        b["label"][i, j] = c["stage"] + (c["click"] or 0.0)
        b["feedback"]["click"][i, j] = c["click"] or 0.0
      for f in cfg.user_features:
        b["user"][f].append(row(f, cands[0][f]))
      if length:
        if events is None:
          hist = cands[0]["hist"]
        else:
          mine = sorted((e for e in events if e["user"] == cands[0]["user_id"] and e["ts"] < cands[0]["ts"]),
                        key=lambda e: e["ts"])
          hist = [e["item"] for e in mine]
        ids = [row("item_id", v) for v in hist[-length:]]
        b["user"]["history"].append([0] * (length - len(ids)) + ids)
    b["user"] = {f: np.array(v, np.int32) for f, v in b["user"].items()}
    out[split] = b
  return out
