"""The logs reader (cascadejax.data.logs) against a brute-force construction of the same requests,
across formats, id types, stage encodings, history sources, partition counts and daily increments;
and every bad input it must name."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cascadejax import data as data_lib
from cascadejax.data import hashing, logs
from tests import logs_helpers as lh


def _assert_equal(data, want):
  for split, w in want.items():
    b = data.splits[split]
    np.testing.assert_array_equal(data.request_ids[split], w["request_ids"], err_msg=f"{split} request order")
    for name in ("stage", "label", "mask"):
      np.testing.assert_array_equal(getattr(b, name), w[name], err_msg=f"{split}.{name}")
    for group in ("user", "items", "feedback"):
      got = getattr(b, group)
      assert sorted(got) == sorted(w[group]), (split, group)
      for k in got:
        np.testing.assert_array_equal(got[k], w[group][k], err_msg=f"{split}.{group}.{k}")


def test_arrow_hash_matches_a_python_polynomial_hash():
  values = ["", "a", "ab", "héllo", "a" * 40]
  h = hashing.arrow_hash(pa.array(values))
  for v, got in zip(values, h):
    t = sum(b * pow(hashing._BASE, j, 1 << 64) for j, b in enumerate(v.encode())) + len(v.encode()) * int(hashing._STRING_SALT)
    assert got == hashing.mix(np.array([t % (1 << 64)], np.uint64))[0]
  assert (hashing.arrow_hash(pa.array(values).slice(1, 3)) == h[1:4]).all()
  assert (hashing.arrow_hash(pa.array(values).dictionary_encode()) == h).all()


@pytest.mark.parametrize("fmt", ["parquet", "feather"])
def test_string_ids_and_list_histories_equal_brute_force(tmp_path, fmt):
  rows = lh.make_rows(0)
  lh.write(rows, str(tmp_path), fmt)
  cfg = lh.config(str(tmp_path))
  data = data_lib.load(cfg, lh.S)  # through the reader registry, validated
  _assert_equal(data, lh.brute_force(rows, cfg))
  assert data.report["dropped"]["requests_without_exposed"] > 0
  assert {f.name: f.table for f in data.features}["history"] == "item_id"


def test_csv_int_ids_with_an_events_table_join_only_earlier_events(tmp_path):
  rows = lh.make_rows(1, string_ids=False)
  lh.write(rows, str(tmp_path), "csv")
  rng = np.random.default_rng(5)
  stamps = sorted({r["ts"] for r in rows})
  events = [dict(user=int(u) + 100, item=int(i) + 100, ts=int(t)) for u, i, t in
            zip(rng.integers(0, 6, 400), rng.integers(0, 30, 400), rng.integers(stamps[0] - 5000, stamps[-1] + 10, 400))]
  events += [dict(user=rows[0]["user_id"], item=7, ts=rows[0]["ts"])]  # at the request's time: not before it
  os.makedirs(tmp_path / "events")
  pq.write_table(pa.Table.from_pylist(events), tmp_path / "events" / "e.parquet")
  cfg = lh.config(str(tmp_path), timestamp="ts", history=dict(length=5, columns={"history": "item"},
                  tables={"history": "item_id"}, events="events", events_user="user", events_time="ts"))
  _assert_equal(logs.load(cfg, lh.S), lh.brute_force(rows, cfg, events=events))


@pytest.mark.parametrize("mode", ["flags", "groups"])
def test_stage_flags_and_groups_equal_an_int_stage_column(tmp_path, mode):
  rows = lh.make_rows(2)
  lh.write(rows, str(tmp_path / "int"))
  for r in rows:
    if mode == "flags":  # f_s = survived stage s
      r.update(pass1=int(r["stage"] >= 1), pass2=int(r["stage"] >= 2))
    else:  # exclusive groups, shallowest first
      r.update(g0=int(r["stage"] == 0), g1=int(r["stage"] == 1), g2=int(r["stage"] == 2))
    del r["stage"]
  lh.write(rows, str(tmp_path / mode))
  stage = {"flags": ("pass1", "pass2")} if mode == "flags" else {"groups": ("g0", "g1", "g2")}
  a = logs.load(lh.config(str(tmp_path / "int")), lh.S)
  b = logs.load(lh.config(str(tmp_path / mode), stage=stage), lh.S)
  for split in ("train", "test"):
    np.testing.assert_array_equal(a.splits[split].stage, b.splits[split].stage)
    np.testing.assert_array_equal(a.splits[split].items["item_id"], b.splits[split].items["item_id"])


def test_partitions_and_batches_do_not_change_the_output(tmp_path):
  rows = lh.make_rows(3)
  lh.write(rows, str(tmp_path), parts=3)
  a = logs.load(lh.config(str(tmp_path), partition_rows=7, batch_rows=5, cache_dir=""), lh.S)
  b = logs.load(lh.config(str(tmp_path), partition_rows=10_000, batch_rows=10_000, cache_dir=""), lh.S)
  assert a.report["conversions"][0]["partitions"] > 8 and b.report["conversions"][0]["partitions"] == 1
  for split in ("train", "test"):
    np.testing.assert_array_equal(a.request_ids[split], b.request_ids[split])
    np.testing.assert_array_equal(a.splits[split].user["history"], b.splits[split].user["history"])
    np.testing.assert_array_equal(a.splits[split].label, b.splits[split].label)


def test_increments_convert_only_new_days_and_equal_one_shot(tmp_path):
  days = lh.DAYS + ("2024-01-04",)
  rows = lh.make_rows(4, days=days)
  first = [r for r in rows if r["day"] != days[3]]
  lh.write(first, str(tmp_path))
  pinned = dict(vocab_days=days[:2])
  logs.load(lh.config(str(tmp_path), **pinned), lh.S)
  lh.write([r for r in rows if r["day"] == days[3]], str(tmp_path), parts=1, name="cands/new")
  cfg = lh.config(str(tmp_path), train_days=(days[0], days[2]), test_days=(days[3], days[3]), files=("cands/*.parquet", "cands/new"), **pinned)
  grown = logs.load(cfg, lh.S)
  assert grown.report["conversions"][-1]["days"] == [days[3]]  # only the new day was read and grouped
  once = logs.load(lh.config(str(tmp_path), train_days=(days[0], days[2]), test_days=(days[3], days[3]), files=("cands/*.parquet", "cands/new"),
                             cache_dir=str(tmp_path / "fresh"), **pinned), lh.S)
  assert len(once.report["conversions"]) == 1
  for split in ("train", "test"):
    np.testing.assert_array_equal(grown.request_ids[split], once.request_ids[split])
    np.testing.assert_array_equal(grown.splits[split].items["item_id"], once.splits[split].items["item_id"])
    np.testing.assert_array_equal(grown.splits[split].user["history"], once.splits[split].user["history"])
  _assert_equal(once, lh.brute_force(rows, cfg))


def test_test_only_ids_are_oov_and_vocab_options(tmp_path):
  rows = lh.make_rows(5)
  for r in rows:
    if r["day"] == lh.DAYS[2]:
      r["item_id"] = "new-" + r["item_id"]  # never seen in the vocabulary days
  lh.write(rows, str(tmp_path))
  data = logs.load(lh.config(str(tmp_path), vocab={"cat": {"hash_buckets": 3}, "user_id": {"min_count": 10_000}}), lh.S)
  test = data.splits["test"]
  assert (test.items["item_id"][test.mask] == 1).all() and data.report["oov"]["item_id"] > 0
  assert (data.splits["train"].user["user_id"] == 1).all()  # every user below min_count
  sizes = {f.name: f.vocab_size for f in data.features}
  assert sizes["cat"] == 4 and sizes["user_id"] == 2
  assert 1 <= test.items["cat"][test.mask].min() and test.items["cat"].max() <= 3


def test_candidates_beyond_list_size_keep_every_exposed_one(tmp_path):
  rows = [dict(request_id="a", day=d, user_id="u", item_id=f"i{i}", cat=0, stage=2 if i < 3 else 0,
               click=0.0 if i < 3 else None, hist=[]) for d in lh.DAYS for i in range(9)]
  for r in rows:
    r["request_id"] += r["day"]
  lh.write(rows, str(tmp_path))
  data = logs.load(lh.config(str(tmp_path), list_size=4), lh.S)
  b = data.splits["train"]
  assert (b.stage == 2).sum(axis=1).tolist() == [3, 3] and b.mask.all()
  assert data.report["dropped"]["candidates_over_max"] == 3 * 5


def _bad(tmp_path, edit, cfg_edit=None, fmt="parquet"):
  rows = lh.make_rows(6)
  edit(rows)
  lh.write(rows, str(tmp_path), fmt, parts=1)
  with pytest.raises(ValueError) as e:
    logs.load(lh.config(str(tmp_path), **(cfg_edit or {})), lh.S)
  return str(e.value)


def _set(i, **kw):
  return lambda rows: rows[i].update(kw)


@pytest.mark.parametrize("edit,cfg,expect", [
    (lambda rows: [r.pop("cat") for r in rows], None, "missing column(s) ['cat']"),
    (lambda rows: [r.update(cat=float(r["cat"])) for r in rows], None, "ids must be integers or strings"),
    (_set(4, user_id=None), None, "column 'user_id' row 4: is null"),
    (_set(5, stage=3), None, "column 'stage' row 5: stages must lie in [0, 2]"),
    (_set(6, stage=2, click=None), None, "column 'click' row 6: is null on an exposed candidate"),
    (_set(7, stage=2, click=float("inf")), None, "column 'click' row 7: must be finite"),
    (_set(8, day="2024-13-01"), None, "column 'day' row 8: must be a 'YYYY-MM-DD' day"),
    (lambda rows: rows.append(dict(rows[0])), None, "appears twice in one request"),
    (lambda rows: rows.append(dict(rows[0], item_id="zz", day=lh.DAYS[1] if rows[0]["day"] == lh.DAYS[0] else lh.DAYS[0])),
     None, "a request must lie in one day"),
    (lambda rows: rows.append(dict(rows[0], item_id="zz", hist=["i1"] + rows[0]["hist"])), None, "the history differs"),
], ids=["missing", "dtype", "null", "stage", "null_click", "inf", "day", "duplicate", "two_days", "history"])
def test_bad_input_names_file_row_and_column(tmp_path, edit, cfg, expect):
  message = _bad(tmp_path, edit, cfg)
  assert expect in message and "part0.parquet" in message, message


def test_user_columns_must_be_constant_and_flags_must_not_rise(tmp_path):
  def change_user(rows):
    rows.append(dict(rows[0], item_id="zz", user_id="other"))
  message = _bad(tmp_path / "b", change_user)
  assert "user_id" in message and "constant within a request" in message
  def rising(rows):
    for r in rows:
      r.update(p1=0, p2=1)
  assert "cannot survive a stage" in _bad(tmp_path / "c", rising, dict(stage={"flags": ("p1", "p2")}))


def test_truncated_file_and_config_errors(tmp_path):
  rows = lh.make_rows(7)
  lh.write(rows, str(tmp_path), parts=1)
  path = tmp_path / "cands" / "part0.parquet"
  path.write_bytes(path.read_bytes()[:-100])
  with pytest.raises(ValueError, match="part0.parquet: cannot read it as parquet .*truncated"):
    logs.load(lh.config(str(tmp_path)), lh.S)
  with pytest.raises(ValueError, match="config.data.files: no log file matches"):
    logs.load(lh.config(str(tmp_path), files="nothing/*.parquet"), lh.S)
  lh.write(rows, str(tmp_path / "csv"), "csv", parts=1)  # a CSV cut inside its last field: rejected, not shortened
  csv = tmp_path / "csv" / "cands" / "part0.csv"
  text = csv.read_bytes()
  csv.write_bytes(text[:-2])
  last = text.count(b"\n") - 1  # data rows, the header aside
  with pytest.raises(ValueError, match=rf"part0.csv: row {last} \(the last\) has no newline, so "
                                       "the file was cut short, possibly inside its last field"):
    logs.load(lh.config(str(tmp_path / "csv")), lh.S)
  for bad, match in ((dict(stage={"column": "stage", "flags": ("a",)}), "config.data.stage must hold exactly one"),
                     (dict(vocab={"cat": {"min_count": 0}}), r"config.data.vocab.cat.min_count must be an int >= 1"),
                     (dict(history=dict(length=2, columns={"history": "hist"}, tables={"history": "nope"})),
                      "config.data.history.tables.history must name one of"),
                     (dict(test_days=lh.DAYS[1:]), "overlap"), (dict(label={"colum": "x"}), "unknown option")):
    with pytest.raises(ValueError, match=match):
      data_lib.check_config(lh.config(str(tmp_path), **bad), lh.S)


def test_the_store_holds_vocabularies_and_a_report(tmp_path):
  rows = lh.make_rows(8)
  lh.write(rows, str(tmp_path))
  data = logs.load(lh.config(str(tmp_path)), lh.S)
  store = data.report["store"]
  vocab = logs.Vocabulary.load(os.path.join(store, "vocab"), "item_id")
  rows_of = dict(zip(vocab.values.to_pylist(), range(2, 2 + len(vocab.values))))
  assert vocab.size == {f.name: f.vocab_size for f in data.features}["item_id"]
  assert len(rows_of) == len({r["item_id"] for r in rows if r["day"] in lh.DAYS[:2]} |
                             {v for r in rows if r["day"] in lh.DAYS[:2] for v in r["hist"]})
  with open(os.path.join(store, "reports.jsonl")) as f:
    assert json.loads(f.readline())["requests"] == data.report["conversions"][0]["requests"]
  again = logs.load(lh.config(str(tmp_path)), lh.S)
  assert isinstance(again.splits["train"].label, np.memmap) and len(again.report["conversions"]) == 1


def test_example_log_trains_exports_and_serves_raw_ids(tmp_path):
  from cascadejax import day_report, export, metric_writer, trainer, workdir  # noqa: PLC0415
  from cascadejax.data.logs import example  # noqa: PLC0415
  from configs import logs_example  # noqa: PLC0415

  example.write(str(tmp_path / "log"), requests=128, days=4)
  c = logs_example.get_config()
  c.data.update(dir=str(tmp_path / "log"), cache_dir=str(tmp_path / "cache"), train_days=("2024-01-01", "2024-01-02"),
                test_days=("2024-01-03", "2024-01-03"), vocab_days=("2024-01-01", "2024-01-02"))
  t = c.train
  t.batch_size, t.eval_batch_size, t.steps, t.log_every, t.checkpoint_every, t.eval_every, t.progress_bar = 8, 16, 4, 2, 2, 0, False
  c.optimizer.warmup_steps = 1
  run = str(tmp_path / "run")
  trainer.train_and_evaluate(c, run)
  final = [r for r in metric_writer.read(run) if r.get("final")][0]
  assert final["step"] == 4 and 0.0 <= final["recall_e2e"] <= 1.0
  exp, state = workdir.restore(run)
  out = str(tmp_path / "export")
  export.export_cascade(exp.cascade, state.params["cascade"], out, gt_num=c.cascade.gt_num,
                        vocab_dir=exp.data.report["vocab_dir"])
  served = export.load(out)
  test = pq.read_table(tmp_path / "log" / "candidates" / "2024-01-03.parquet")
  first = exp.data.splits["test"]
  want = np.asarray(first.items["item_id"])[np.asarray(first.mask)]
  got = served.rows("item_id", test["item_id"].to_pylist())
  assert set(np.unique(want)) == set(np.unique(got))  # the rows training used for the test day's items
  assert served.rows("item_id", ["never-seen"])[0] == 1  # the OOV row
  # The streaming protocol: move the days forward and continue the run from its checkpoint.
  c.data.update(train_days=("2024-01-03", "2024-01-03"), test_days=("2024-01-04", "2024-01-04"))
  c.train.steps = 6
  trainer.train_and_evaluate(c, run)
  finals = [r for r in metric_writer.read(run) if r.get("final")]
  assert [(r["step"], r["test_days"]) for r in finals] == [(4, ["2024-01-03", "2024-01-03"]), (6, ["2024-01-04", "2024-01-04"])]
  days = day_report.report([run]).splitlines()
  assert [line.split(" | ")[0] for line in days if line.startswith("| 2024")] == ["| 2024-01-03", "| 2024-01-04"]
  assert [r["step"] for r in metric_writer.read(run) if r.get("split") == "train"] == [2, 4, 6]
  exp2, _ = workdir.restore(run)
  assert exp2.data.report["conversions"][-1]["days"] == ["2024-01-04"]
  assert [f.vocab_size for f in exp2.data.features] == [f.vocab_size for f in exp.data.features]
