"""The RecFlow reader on tiny files written with RecFlow's documented schema (no RecFlow bytes exist here)."""

import datetime
import logging
import os
import pickle

import numpy as np
import pytest
from ml_collections import ConfigDict

pa = pytest.importorskip("pyarrow")
import pyarrow.feather as feather  # noqa: E402

from cascadejax import data as data_lib, metric_writer, trainer  # noqa: E402
from cascadejax.data import recflow  # noqa: E402
from cascadejax.experiment import Experiment  # noqa: E402
from configs import recflow_three_stage, recflow_two_stage  # noqa: E402

COLUMNS = ("request_id request_timestamp user_id device_id age gender province video_id author_id "
           "category_level_one category_level_two upload_type upload_timestamp duration realshow rerank_pos "
           "rerank_neg rank_pos rank_neg coarse_neg prerank_neg rank_index rerank_index playing_time "
           "effective_view long_view like follow forward comment").split()
ID_CNT = {"user_id": 20, "device_id": 20, "age": 8, "gender": 3, "province": 30, "video_id": 300,
          "author_id": 50, "category_level_one": 10, "category_level_two": 40, "upload_type": 5}
FLAGS = ("prerank_neg", "coarse_neg", "rank_neg", "rank_pos", "rerank_neg", "rerank_pos")


def _ms(day: str, hour: int = 0) -> int:
  """Milliseconds since the epoch of `day` at `hour`:00 Beijing time (UTC+8)."""
  d = datetime.datetime.fromisoformat(day).replace(tzinfo=datetime.timezone(datetime.timedelta(hours=8)))
  return int((d + datetime.timedelta(hours=hour)).timestamp() * 1000)


def _row(rid, video, flags=(), ts=0, user=(1, 2, 3, 1, 4), **kw):
  r = dict.fromkeys(COLUMNS, 0)
  r.update(request_id=rid, request_timestamp=ts, video_id=video, author_id=video % 50,
           category_level_one=video % 10, category_level_two=video % 40, upload_type=video % 5,
           rank_index=-1, rerank_index=-1)
  r.update(zip(("user_id", "device_id", "age", "gender", "province"), user))
  r.update(dict.fromkeys(flags, 1), **kw)
  return r


def write_day(root, day, rows, seqs=None):
  """Writes `all_stage/<day>.feather` from row dicts and `seq_effective_50_dict/<day>.pkl`."""
  os.makedirs(root / "all_stage", exist_ok=True)
  os.makedirs(root / "seq_effective_50_dict", exist_ok=True)
  os.makedirs(root / "others", exist_ok=True)
  cols = {c: np.array([r[c] for r in rows], np.int64) for c in COLUMNS}
  feather.write_feather(pa.table(cols), str(root / "all_stage" / f"{day}.feather"))
  if seqs is None:
    seqs = {rid: _seq([]) for rid in set(r["request_id"] for r in rows)}
  with open(root / "seq_effective_50_dict" / f"{day}.pkl", "wb") as f:
    pickle.dump(seqs, f)
  with open(root / "others" / "id_cnt.pkl", "wb") as f:
    pickle.dump(ID_CNT, f)


def _seq(videos, ts=1_700_000_000_000):
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
    ts = _ms(day, int(rng.integers(0, 24)))
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
        rows.append(_row(rid, next(videos), flags, ts, user, **extra, **fb))
    rows.append(_row(rid, next(videos), ("realshow",), ts, user))  # in no stage group
    seqs[rid] = _seq(rng.integers(0, ID_CNT["video_id"] + 1, int(rng.integers(0, 8))).tolist())
  write_day(root, day, rows, seqs)


def data_config(root, **overrides) -> ConfigDict:
  c = recflow_two_stage.recflow_data(2)
  c.dir, c.cache_dir = str(root), ""
  c.per_group, c.list_size, c.history_len = 2, 8, 4
  c.train_days, c.test_days = ("2024-01-13", "2024-01-13"), ("2024-01-14", "2024-01-14")
  c.update(overrides)
  return c


@pytest.fixture
def hand(tmp_path):
  """Two days written by hand; day 1's requests are checked value by value below."""
  ts = _ms("2024-01-13", 10)  # a Saturday, 10:00 Beijing time
  rows = [_row(7, 10, ["prerank_neg"], ts), _row(7, 11, ["coarse_neg"], ts), _row(7, 12, ["rank_neg"], ts),
          _row(7, 13, ["rank_pos"], ts, rank_index=1), _row(7, 14, ["rank_pos", "realshow"], ts, rank_index=0,
                                                          effective_view=1, like=1, playing_time=9),
          _row(7, 15, ["realshow"], ts),
          _row(8, 20, ["realshow"], ts), _row(8, 21, ["realshow"], ts),  # a request with no candidate
          *(_row(9, v, ["prerank_neg"], ts, user=(5, 6, 7, 2, 9)) for v in (30, 31, 32)),
          _row(9, 33, ["rank_pos"], ts, user=(5, 6, 7, 2, 9), rank_index=4)]
  write_day(tmp_path, "2024-01-13", rows, {7: _seq([100, 101]), 8: _seq([]), 9: _seq([])})
  write_day(tmp_path, "2024-01-14", [_row(11, 40, ["rank_pos"], ts, rank_index=0), _row(11, 41, ["rank_neg"], ts)])
  return tmp_path


def _by_video(batch, r):
  ids = batch.items["video_id"][r]
  return {int(v) - 1: i for i, v in enumerate(ids) if batch.mask[r, i]}


def test_requests_stages_labels_features_and_history_by_hand(hand):
  data = data_lib.load(data_config(hand), 2)
  train = data.splits["train"]
  assert data.request_ids["train"].tolist() == [7, 9] and data.request_ids["test"].tolist() == [11]
  assert train.mask.sum(1).tolist() == [5, 3]
  slot = _by_video(train, 0)
  assert sorted(slot) == [10, 11, 12, 13, 14]  # 15 is in no stage group
  assert [int(train.stage[0, slot[v]]) for v in (10, 11, 12, 13, 14)] == [0, 1, 2, 2, 2]
  np.testing.assert_allclose([train.label[0, slot[v]] for v in (10, 11, 12, 13, 14)],
                             [0, 1, 2, 3 + 1 / 3, 3 + 1 / 2], rtol=1e-6)
  assert train.feedback["effective_view"][0, slot[14]] == 1 and train.feedback["like"][0, slot[14]] == 1
  assert train.feedback["effective_view"][0].sum() == 1
  assert set(train.feedback) == set(recflow.BINARY_FEEDBACK) - {"realshow"}
  assert train.items["author_id"][0, slot[13]] == 13 % 50 + 1 and train.items["upload_type"][0, slot[12]] == 12 % 5 + 1
  assert train.user["user_id"].tolist() == [2, 6] and train.user["province"].tolist() == [5, 10]
  assert train.user["request_hour"].tolist() == [11, 11] and train.user["request_wday"].tolist() == [6, 6]
  assert train.user["history"].tolist() == [[0, 0, 101, 102], [0, 0, 0, 0]]
  assert train.mask.tolist() == [[True] * 5 + [False] * 3, [True] * 3 + [False] * 5]  # padding last
  assert (train.items["video_id"][~train.mask] == 0).all() and (train.label[~train.mask] == 0).all()
  slot9 = _by_video(train, 1)
  assert 33 in slot9 and len({30, 31, 32} & set(slot9)) == 2  # 2 of the 3 prerank_neg videos
  spec = {f.name: f for f in data.features}
  assert spec["video_id"].vocab_size == ID_CNT["video_id"] + 2 and spec["history"].table == "video_id"
  assert spec["history"].sequence and spec["request_hour"].vocab_size == 25


def test_filters_are_counted_and_logged(hand, caplog):
  cfg = data_config(hand)
  path = str(hand / "all_stage" / "2024-01-13.feather")
  day = recflow.read_day(cfg, path, 2, ID_CNT)
  assert day["stats"] == {"rows": 12, "rows_in_no_group": 3, "requests": 2, "requests_without_candidates": 1,
                          "requests_over_max": 0, "candidates_over_per_group": 1}
  day = recflow.read_day(data_config(hand, max_requests_per_day=1), path, 2, ID_CNT)
  assert day["stats"]["requests_over_max"] == 1 and len(day["request_ids"]) == 1
  caplog.set_level(logging.INFO)
  data = data_lib.load(cfg, 2)
  assert "rows_in_no_group 3" in caplog.text and "candidates_over_per_group 1" in caplog.text
  # The report sums each filter over the day files of both splits (here the same day twice each).
  assert data.report["files"][path]["rows_in_no_group"] == 3
  assert data.report["dropped"]["rows_in_no_group"] == sum(f["rows_in_no_group"] for f in data.report["files"].values())


def test_sampling_is_seeded_and_ignores_row_order(tmp_path):
  random_day(tmp_path, "2024-01-13", 0, 40, seed=1)
  random_day(tmp_path, "2024-01-14", 100, 10, seed=2)
  a = data_lib.load(data_config(tmp_path), 2)
  path = str(tmp_path / "all_stage" / "2024-01-13.feather")
  table = feather.read_table(path)
  feather.write_feather(table.take(np.random.default_rng(0).permutation(table.num_rows)), path)
  b = data_lib.load(data_config(tmp_path), 2)
  for x, y in zip(jax_leaves(a.splits["train"]), jax_leaves(b.splits["train"])):
    np.testing.assert_array_equal(x, y)
  c = data_lib.load(data_config(tmp_path, seed=5), 2)
  kept = lambda d: {(int(r), int(v)) for r, row in zip(d.request_ids["train"], d.splits["train"].items["video_id"])
                    for v in row if v}
  assert kept(c) != kept(a) and len(kept(c)) == len(kept(a))  # other videos of oversized groups, same counts
  train = a.splits["train"]
  assert (train.mask.sum(1) <= 8).all() and (np.bincount(train.stage[train.mask], minlength=3) > 0).all()


def jax_leaves(batch):
  import jax  # noqa: PLC0415
  return jax.tree.leaves(batch)


def test_three_stages_use_the_rerank_groups_and_deepest_flag(tmp_path):
  random_day(tmp_path, "2024-01-13", 0, 30, seed=3)
  random_day(tmp_path, "2024-01-14", 100, 5, seed=4)
  cfg = recflow_three_stage.get_config().data
  cfg.dir, cfg.cache_dir, cfg.per_group, cfg.list_size, cfg.history_len = str(tmp_path), "", 3, 15, 3
  cfg.train_days, cfg.test_days = ("2024-01-13", "2024-01-13"), ("2024-01-14", "2024-01-14")
  three = data_lib.load(cfg, 3).splits["train"]
  two = data_lib.load(data_config(tmp_path, per_group=3, list_size=12, history_len=3), 2).splits["train"]
  table = feather.read_table(str(tmp_path / "all_stage" / "2024-01-13.feather")).to_pydict()
  row_of = {(rid, v): j for j, (rid, v) in enumerate(zip(table["request_id"], table["video_id"]))}
  ids = data_lib.load(cfg, 3).request_ids["train"]
  for batch, groups in ((three, cfg.groups), (two, recflow.DEFAULT_GROUPS[2])):
    for r in range(batch.batch_size):
      for v, i in _by_video(batch, r).items():
        row = row_of[(int(ids[r]), v)]
        depth = max(d for d, g in enumerate(groups) if table[g][row])  # rerank_pos rows also carry rank_pos
        assert batch.stage[r, i] == min(depth, len(groups) - 2)
        assert np.floor(batch.label[r, i]) == depth


BAD = {  # case -> (change to day 1's table, the error expected)
    "missing column": (lambda t: t.drop_columns(["author_id"]),
                       r"2024-01-13.feather: missing column\(s\) \['author_id'\]"),
    "wrong dtype": (lambda t: t.set_column(t.column_names.index("age"), "age",
                                           pa.array([str(x) for x in t["age"].to_pylist()])),
                    r"2024-01-13.feather: column 'age' must hold integers, got string"),
    "NaN": (lambda t: _set(t, "province", 3, np.nan, float), r"2024-01-13.feather: column 'province' row 3 is NaN"),
    "null": (lambda t: t.set_column(t.column_names.index("user_id"), "user_id",
                                    pa.array(t["user_id"].to_pylist()[:4] + [None] + t["user_id"].to_pylist()[5:])),
             r"2024-01-13.feather: column 'user_id' row 4 is null"),
    "negative id": (lambda t: _set(t, "video_id", 2, -3),
                    r"column 'video_id' row 2: ids must lie in \[0, 300\].*got -3"),
    "out-of-vocabulary id": (lambda t: _set(t, "author_id", 4, 51),
                             r"column 'author_id' row 4: ids must lie in \[0, 50\].*got 51"),
    "flag not 0/1": (lambda t: _set(t, "rank_neg", 1, 2),
                     r"column 'rank_neg' row 1: stage flags must be 0 or 1, got 2"),
    "negative position": (lambda t: _set(t, "rank_index", 3, -1),
                          r"column 'rank_index' row 3: rank_pos positions must be >= 0"),
    "user changes within a request": (
        lambda t: _set(t, "age", 2, 1),
        r"column 'age' row 2: user/request columns must be constant within a request \(request 7\)"),
    "duplicated candidate": (lambda t: _set(t, "video_id", 1, 10),
                             r"column 'video_id' rows 0 and 1: video 10 appears twice in request 7"),
    "empty file": (lambda t: t.slice(0, 0), r"2024-01-13.feather: the file has no rows"),
}


def _set(table, col, row, value, dtype=int):
  values = table[col].to_numpy().astype(dtype)
  values[row] = value
  return table.set_column(table.column_names.index(col), col, pa.array(values))


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_day_file_names_file_column_and_row(hand, case):
  change, message = BAD[case]
  path = str(hand / "all_stage" / "2024-01-13.feather")
  feather.write_feather(change(feather.read_table(path)), path)
  with pytest.raises(ValueError, match=message):
    data_lib.load(data_config(hand), 2)


def _truncate(path):
  with open(path, "rb") as f:
    head = f.read()[: os.path.getsize(path) // 2]
  with open(path, "wb") as f:
    f.write(head)


def _pickle(path, obj):
  with open(path, "wb") as f:
    pickle.dump(obj, f)


SEQS = "seq_effective_50_dict/2024-01-13.pkl"
BAD_FILES = {  # case -> (change to the hand-written files, the error expected)
    "truncated feather": (lambda d: _truncate(d / "all_stage" / "2024-01-13.feather"),
                          r"2024-01-13.feather: cannot read it as a Feather file .*truncated"),
    "truncated pickle": (lambda d: _truncate(d / SEQS), r"2024-01-13.pkl: cannot unpickle .*truncated"),
    "request without sequence": (
        lambda d: _pickle(d / SEQS, {7: _seq([1])}),
        r"2024-01-13.pkl: request_id 9 \(first row 8 of .*2024-01-13.feather\): no behaviour sequence"),
    "NaN in a sequence": (
        lambda d: _pickle(d / SEQS, {7: _seq([1]) * np.r_[np.ones(49), np.nan][:, None], 9: _seq([])}),
        r"request_id 7 .*sequence step 49 holds NaN"),
    "out-of-vocabulary sequence id": (
        lambda d: _pickle(d / SEQS, {7: _seq([1, 301]), 9: _seq([])}),
        r"request_id 7 .*column 0 \(video_id\) step 49: ids must lie in \[0, 300\].*got 301"),
    "id_cnt without a field": (lambda d: _pickle(d / "others" / "id_cnt.pkl", {k: ID_CNT[k] for k in ID_CNT if k != "age"}),
                               r"id_cnt.pkl: key 'age' must be a positive id count, got None"),
    "request in two days": (lambda d: write_day(d, "2024-01-14", [_row(9, 40, ["rank_pos"], rank_index=0)]),
                            r"2024-01-14.feather: request_id 9 also appears in .*2024-01-13.feather"),
    "missing day file": (lambda d: os.remove(d / "all_stage" / "2024-01-14.feather"),
                         r"config.data.dir=.*1 RecFlow file\(s\) missing, e.g. \[.*all_stage/2024-01-14.feather"),
    "only requests without candidates": (lambda d: write_day(d, "2024-01-14", [_row(40, 40, ["realshow"])]),
                                         r"config.data.test_days: no request has a candidate in config.data.groups"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_are_named(hand, case):
  change, message = BAD_FILES[case]
  change(hand)
  with pytest.raises(ValueError, match=message):
    data_lib.load(data_config(hand), 2)


def test_missing_directory_says_where_to_download(tmp_path):
  with pytest.raises(ValueError, match=r"config.data.dir: no RecFlow data at .*nowhere.*Download RecFlow by hand "
                                       r"from https://github.com/RecFlow-ICLR/RecFlow"):
    data_lib.load(data_config(tmp_path / "nowhere"), 2)


CONFIG_ERRORS = {  # case -> (config.data overrides, the error expected)
    "list_size": (dict(list_size=9),
                  r"config.data.list_size=9 must equal len\(config.data.groups\) \* config.data.per_group = 4 \* 2"),
    "groups": (dict(groups=("prerank_neg", "clicked", "rank_pos")), r"config.data.groups: .* must be distinct names from"),
    "too few groups": (dict(groups=("rank_neg", "rank_pos"), list_size=4),
                       r"config.data.groups: 2 groups cannot tell apart the 3 stage values"),
    "graded": (dict(graded=("coarse_neg",)),
               r"config.data.graded: \('coarse_neg',\) must be distinct names from \('rank_neg', 'rank_pos'\)"),
    "feedback": (dict(feedback=("click",)), r"config.data.feedback: \('click',\) must be distinct names from"),
    "days": (dict(test_days=("2024-01-13", "2024-01-20")),
             r"config.data.train_days and config.data.test_days overlap on \['2024-01-13'\]"),
    "bad date": (dict(train_days=("2024-13-01", "2024-01-20")), r"config.data.train_days must be \(first, last\) dates"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_ERRORS))
def test_bad_config_names_the_key_before_reading(tmp_path, case):
  overrides, message = CONFIG_ERRORS[case]
  with pytest.raises(ValueError, match=message):
    data_lib.load(data_config(tmp_path / "nowhere", **overrides), 2)  # raised before the directory is looked at


def test_three_stage_config_builds_its_cascade_on_the_data(tmp_path):
  random_day(tmp_path, "2024-01-13", 0, 16, seed=7)
  random_day(tmp_path, "2024-01-14", 100, 4, seed=8)
  c = recflow_three_stage.get_config()
  c.data.update(dir=str(tmp_path), cache_dir="", per_group=2, list_size=10, history_len=4,
                train_days=("2024-01-13", "2024-01-13"), test_days=("2024-01-14", "2024-01-14"))
  c.embedding.dim, c.cascade.gt_num = 4, 2
  c.cascade.retrieval.k, c.cascade.prerank.k, c.cascade.rank.k = 8, 6, 4
  c.cascade.retrieval.model_kwargs.update(hidden=(8,), out_dim=4)
  c.cascade.prerank.model_kwargs.update(hidden=(8,))
  c.cascade.rank.model_kwargs.update(attention=(4,), hidden=(8,), chunk=0)
  exp = Experiment.build(c)
  params = exp.init_state().params["cascade"]
  sample = exp.data.splits["train"].take(slice(0, 3))
  scores = exp.cascade.apply({"params": params}, sample.user, sample.items)
  assert scores.shape == (3, 3, 10) and np.isfinite(np.asarray(scores)).all()


def test_trains_end_to_end_on_tiny_files_and_reuses_the_cache(tmp_path, monkeypatch):
  random_day(tmp_path, "2024-01-13", 0, 48, seed=5)
  random_day(tmp_path, "2024-01-14", 100, 24, seed=6)
  c = recflow_two_stage.get_config()
  c.data = data_config(tmp_path, cache_dir=str(tmp_path / "cache"))
  c.embedding.dim = 4
  c.cascade.retrieval.k, c.cascade.prerank.k, c.cascade.gt_num = 6, 4, 2
  c.cascade.retrieval.model_kwargs.update(hidden=(8,), out_dim=4)
  c.cascade.prerank.model_kwargs.update(attention=(4,), hidden=(8,), chunk=0)
  t = c.train
  t.batch_size, t.eval_batch_size, t.steps, t.log_every, t.checkpoint_every, t.progress_bar = 8, 16, 6, 3, 3, False
  trainer.train_and_evaluate(c, str(tmp_path / "run"))
  final = [r for r in metric_writer.read(str(tmp_path / "run")) if r.get("final")][0]
  assert final["step"] == 6 and 0.0 <= final["recall_e2e"] <= 1.0
  assert len([d for d in os.listdir(tmp_path / "cache") if d.startswith("recflow-")]) == 1
  monkeypatch.setattr(recflow, "build", lambda *a: pytest.fail("the second load should hit the cache"))
  again = data_lib.load(c.data, 2)
  assert isinstance(again.splits["train"].label, np.memmap)
