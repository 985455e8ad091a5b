"""Bad RecFlow input: every broken file, column, row and config key is named in the error."""

import os
import pickle

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
import pyarrow.feather as feather  # noqa: E402

from cascadejax import data as data_lib  # noqa: E402
from tests.data_recflow_helpers import ID_CNT, data_config, row, seq, write_day  # noqa: E402


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
        lambda d: _pickle(d / SEQS, {7: seq([1])}),
        r"2024-01-13.pkl: request_id 9 \(first row 8 of .*2024-01-13.feather\): no behaviour sequence"),
    "NaN in a sequence": (
        lambda d: _pickle(d / SEQS, {7: seq([1]) * np.r_[np.ones(49), np.nan][:, None], 9: seq([])}),
        r"request_id 7 .*sequence step 49 holds NaN"),
    "out-of-vocabulary sequence id": (
        lambda d: _pickle(d / SEQS, {7: seq([1, 301]), 9: seq([])}),
        r"request_id 7 .*column 0 \(video_id\) step 49: ids must lie in \[0, 300\].*got 301"),
    "id_cnt without a field": (lambda d: _pickle(d / "others" / "id_cnt.pkl", {k: ID_CNT[k] for k in ID_CNT if k != "age"}),
                               r"id_cnt.pkl: key 'age' must be a positive id count, got None"),
    "request in two days": (lambda d: write_day(d, "2024-01-14", [row(9, 40, ["rank_pos"], rank_index=0)]),
                            r"2024-01-14.feather: request_id 9 also appears in .*2024-01-13.feather"),
    "missing day file": (lambda d: os.remove(d / "all_stage" / "2024-01-14.feather"),
                         r"config.data.dir=.*1 RecFlow file\(s\) missing, e.g. \[.*all_stage/2024-01-14.feather"),
    "only requests without candidates": (lambda d: write_day(d, "2024-01-14", [row(40, 40, ["realshow"])]),
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
