"""RecFlow's behaviour sequences (`seq_effective_50_dict/<day>.pkl`) -> `CascadeBatch.user` sequence fields.

Each day file is a dict request_id -> int array `[steps, >= 8]`: the user's last effective views,
oldest first, left-padded. Columns 0..4 hold video_id, author_id, category_level_two,
category_level_one and upload_type (`HISTORY_COLUMNS`); a step is valid iff column 7, its timestamp,
is positive. `read_history` keeps the last `config.data.history_len` steps of each request, right
aligned, shifts ids by one (0 = padding, as every cascadejax reader) and raises ValueError naming the
file, request, column and step for a missing sequence, a wrong shape, NaN, non-integers or an id
outside `others/id_cnt.pkl`'s range.
"""

from __future__ import annotations

import numpy as np
from ml_collections import ConfigDict

from cascadejax.data.recflow import files

HISTORY_COLUMNS = {"video_id": 0, "author_id": 1, "category_level_two": 2, "category_level_one": 3,
                   "upload_type": 4}
HISTORY_TIME_COLUMN = 7


def history_name(field: str) -> str:
  """The `CascadeBatch.user` key of the behaviour sequence of `field`."""
  return "history" if field == "video_id" else f"history_{field}"


def read_history(cfg: ConfigDict, path: str, day: dict, id_cnt: dict[str, int]) -> dict[str, np.ndarray]:
  """`[R, history_len]` sequences of every `history_fields` field for the day's requests.

  Args:
    cfg: the `config.data` section (`history_len`, `history_fields`).
    path: the day's `seq_effective_50_dict` pickle.
    day: `recflow.read_day`'s output for the same day (its request ids, first rows and path name
      the requests in error messages).
    id_cnt: `others/id_cnt.pkl`, the largest raw id of each field.
  """
  seqs, length, width = files.load_pickle(path), cfg.history_len, HISTORY_TIME_COLUMN + 1
  block = np.zeros((len(day["request_ids"]), length, width), np.int64)  # steps right-aligned
  steps = np.zeros(len(day["request_ids"]), np.int64)  # each file sequence's length, for messages
  where = lambda i: f"{path}: request_id {day['request_ids'][i]} (first row {day['first_rows'][i]} of {day['path']})"
  for i, rid in enumerate(day["request_ids"].tolist()):
    s = seqs.get(rid)
    if s is None:
      raise ValueError(f"{where(i)}: no behaviour sequence for this request")
    s = np.asarray(s)
    if s.ndim != 2 or s.shape[1] < width:
      raise ValueError(f"{where(i)}: sequence must be [steps, >= {width}], got shape {s.shape}")
    if s.dtype.kind not in "iu":
      nan = np.argwhere(np.isnan(s)) if s.dtype.kind == "f" else ()
      raise ValueError(f"{where(i)}: sequence step {nan[0, 0]} holds NaN" if len(nan) else
                       f"{where(i)}: sequence must hold integers, got {s.dtype}")
    steps[i] = len(s)
    s = s[-length:, :width] if length else s[:0, :width]
    block[i, length - len(s):] = s
  valid = block[:, :, HISTORY_TIME_COLUMN] > 0
  out = {}
  for f in cfg.history_fields:
    col = HISTORY_COLUMNS[f]
    ids = block[:, :, col]
    bad = valid & ((ids < 0) | (ids > id_cnt[f]))
    if bad.any():
      i, j = (int(v) for v in np.argwhere(bad)[0])
      raise ValueError(f"{where(i)}: column {col} ({f}) step {int(steps[i]) - length + j}: ids must "
                       f"lie in [0, {id_cnt[f]}] (others/id_cnt.pkl), got {ids[i, j]}")
    out[history_name(f)] = np.where(valid, ids + 1, 0).astype(np.int32)
  return out
