"""Tiny RecFlow files written with RecFlow's documented schema (no RecFlow bytes exist here), shared by
test_data_recflow.py and test_data_recflow_files.py. Loaded as a plugin by conftest.py for the `hand` fixture,
so pyarrow is imported only where a file is written."""

import datetime
import os
import pickle

import numpy as np
import pytest
from ml_collections import ConfigDict

from configs.reference import recflow_two_stage

COLUMNS = ("request_id request_timestamp user_id device_id age gender province video_id author_id "
           "category_level_one category_level_two upload_type upload_timestamp duration realshow rerank_pos "
           "rerank_neg rank_pos rank_neg coarse_neg prerank_neg rank_index rerank_index playing_time "
           "effective_view long_view like follow forward comment").split()
ID_CNT = {"user_id": 20, "device_id": 20, "age": 8, "gender": 3, "province": 30, "video_id": 300,
          "author_id": 50, "category_level_one": 10, "category_level_two": 40, "upload_type": 5}
FLAGS = ("prerank_neg", "coarse_neg", "rank_neg", "rank_pos", "rerank_neg", "rerank_pos")


def ms(day: str, hour: int = 0) -> int:
  """Milliseconds since the epoch of `day` at `hour`:00 Beijing time (UTC+8)."""
  d = datetime.datetime.fromisoformat(day).replace(tzinfo=datetime.timezone(datetime.timedelta(hours=8)))
  return int((d + datetime.timedelta(hours=hour)).timestamp() * 1000)


def row(rid, video, flags=(), ts=0, user=(1, 2, 3, 1, 4), **kw):
  """One all_stage row: every column 0 except the ids derived from `video`, `user` and the flags set to 1."""
  r = dict.fromkeys(COLUMNS, 0)
  r.update(request_id=rid, request_timestamp=ts, video_id=video, author_id=video % 50,
           category_level_one=video % 10, category_level_two=video % 40, upload_type=video % 5,
           rank_index=-1, rerank_index=-1)
  r.update(zip(("user_id", "device_id", "age", "gender", "province"), user))
  r.update(dict.fromkeys(flags, 1), **kw)
  return r


def write_day(root, day, rows, seqs=None):
  """Writes `all_stage/<day>.feather` from row dicts and `seq_effective_50_dict/<day>.pkl`."""
  import pyarrow as pa  # noqa: PLC0415 (an optional dependency: only the RecFlow tests need it)
  import pyarrow.feather as feather  # noqa: PLC0415
  os.makedirs(root / "all_stage", exist_ok=True)
  os.makedirs(root / "seq_effective_50_dict", exist_ok=True)
  os.makedirs(root / "others", exist_ok=True)
  cols = {c: np.array([r[c] for r in rows], np.int64) for c in COLUMNS}
  feather.write_feather(pa.table(cols), str(root / "all_stage" / f"{day}.feather"))
  if seqs is None:
    seqs = {rid: seq([]) for rid in set(r["request_id"] for r in rows)}
  with open(root / "seq_effective_50_dict" / f"{day}.pkl", "wb") as f:
    pickle.dump(seqs, f)
  with open(root / "others" / "id_cnt.pkl", "wb") as f:
    pickle.dump(ID_CNT, f)


def seq(videos, ts=1_700_000_000_000):
  """A [50, 10] RecFlow sequence array: `videos` as the newest steps, left-padded with zeros."""
  s = np.zeros((50, 10), np.int64)
  for i, v in enumerate(videos):
    s[50 - len(videos) + i] = (v, v % 50, v % 40, v % 10, v % 5, 1, 2, ts + i, 3, 0)
  return s


def random_day(root, day, first_id, n, seed):
  """`n` requests with random group sizes (some above 2 per group), RecFlow-like flags and feedback."""
  rng = np.random.default_rng(seed)
  rows, seqs = [], {}
  for rid in range(first_id, first_id + n):
    user = tuple(int(rng.integers(0, ID_CNT[f] + 1)) for f in ("user_id", "device_id", "age", "gender", "province"))
    ts = ms(day, int(rng.integers(0, 24)))
    sizes = rng.integers(0, 4, len(FLAGS))
    videos = iter(rng.choice(ID_CNT["video_id"] + 1, sizes.sum() + 1, replace=False).tolist())
    for flag, size in zip(FLAGS, sizes):
      for j in range(size):
        extra = {"rank_index": j} if flag == "rank_pos" else {"rerank_index": j} if flag == "rerank_neg" else {}
        if flag == "rerank_pos":  # it also passed the rank stage, with a logged rank position
          extra = {"rerank_index": j, "rank_index": 5 + j}
        flags = (flag, "rank_pos", "realshow") if flag == "rerank_pos" else (flag,)
        fb = {f: int(rng.random() < 0.5) for f in ("effective_view", "long_view", "like")}
        fb = fb if flag == "rerank_pos" else {}
        rows.append(row(rid, next(videos), flags, ts, user, **extra, **fb))
    rows.append(row(rid, next(videos), ("realshow",), ts, user))  # in no stage group
    seqs[rid] = seq(rng.integers(0, ID_CNT["video_id"] + 1, int(rng.integers(0, 8))).tolist())
  write_day(root, day, rows, seqs)


def data_config(root, **overrides) -> ConfigDict:
  """`config.data` of the two-stage RecFlow config shrunk to the tiny files under `root`, no cache."""
  c = recflow_two_stage.recflow_data(2)
  c.dir, c.cache_dir = str(root), ""
  c.per_group, c.list_size, c.history_len = 2, 8, 4
  c.train_days, c.test_days = ("2024-01-13", "2024-01-13"), ("2024-01-14", "2024-01-14")
  c.update(overrides)
  return c


@pytest.fixture
def hand(tmp_path):
  """Two days written by hand; test_data_recflow.py checks day 1's requests value by value."""
  ts = ms("2024-01-13", 10)  # a Saturday, 10:00 Beijing time
  rows = [row(7, 10, ["prerank_neg"], ts), row(7, 11, ["coarse_neg"], ts), row(7, 12, ["rank_neg"], ts),
          row(7, 13, ["rank_pos"], ts, rank_index=1), row(7, 14, ["rank_pos", "realshow"], ts, rank_index=0,
                                                          effective_view=1, like=1, playing_time=9),
          row(7, 15, ["realshow"], ts),
          row(8, 20, ["realshow"], ts), row(8, 21, ["realshow"], ts),  # a request with no candidate
          *(row(9, v, ["prerank_neg"], ts, user=(5, 6, 7, 2, 9)) for v in (30, 31, 32)),
          row(9, 33, ["rank_pos"], ts, user=(5, 6, 7, 2, 9), rank_index=4)]
  write_day(tmp_path, "2024-01-13", rows, {7: seq([100, 101]), 8: seq([]), 9: seq([])})
  write_day(tmp_path, "2024-01-14", [row(11, 40, ["rank_pos"], ts, rank_index=0), row(11, 41, ["rank_neg"], ts)])
  return tmp_path
