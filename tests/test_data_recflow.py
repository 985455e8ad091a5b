"""The RecFlow reader on tiny files written with RecFlow's documented schema (no RecFlow bytes exist
here); bad input is in test_data_recflow_files.py."""

import logging
import os

import numpy as np
import pytest

pytest.importorskip("pyarrow")
import pyarrow.feather as feather  # noqa: E402

from cascadejax import data as data_lib, metric_writer, trainer  # noqa: E402
from cascadejax.data import recflow  # noqa: E402
from cascadejax.experiment import Experiment  # noqa: E402
from configs.reference import recflow_three_stage, recflow_two_stage  # noqa: E402
from tests.data_recflow_helpers import ID_CNT, data_config, random_day  # noqa: E402


def _by_video(batch, r):
  ids = batch.items["video_id"][r]
  return {int(v) - 1: i for i, v in enumerate(ids) if batch.mask[r, i]}


def test_reference_label_values_are_the_lcron_loaders(hand):
  cfg = data_config(hand, label_values="reference", cache_dir="")
  train = data_lib.load(cfg, 2).splits["train"]
  slot = _by_video(train, 0)   # prerank_neg, coarse_neg, rank_neg, then rank_pos at rank_index 1 and 0
  np.testing.assert_array_equal([train.label[0, slot[v]] for v in (10, 11, 12, 13, 14)], [5, 6, 7, 29, 30])
  with pytest.raises(ValueError, match=r"config.data.label_values must be one of \('graded', 'reference'\)"):
    data_lib.load(data_config(hand, label_values="loader", cache_dir=""), 2)
  with pytest.raises(ValueError, match=r"config.data.label_values='reference' reads the deepest group"):
    data_lib.load(data_config(hand, label_values="reference", graded=("rank_neg", "rank_pos"), cache_dir=""), 2)


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
  cfg.label_values = "graded"   # floor(label) is the group below
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
  scores = exp.cascade.apply({"params": params}, sample.user, sample.items).scores
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
  monkeypatch.setattr(recflow.reader, "build", lambda *a: pytest.fail("the second load should hit the cache"))
  again = data_lib.load(c.data, 2)
  assert isinstance(again.splits["train"].label, np.memmap)
