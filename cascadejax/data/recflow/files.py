"""RecFlow's file formats, read with checks: Feather day files column by column and pickles. Every
error names the file, the column and the row.
"""

from __future__ import annotations

import pickle

import numpy as np


def load_pickle(path: str) -> dict:
  """The dict pickled in `path`, or a ValueError naming the file (truncated, not a dict)."""
  try:
    with open(path, "rb") as f:
      obj = pickle.load(f)  # RecFlow ships pickles: only read files from a source you trust
  except Exception as e:  # noqa: BLE001 (truncated files raise EOFError, UnpicklingError, ...)
    raise ValueError(f"{path}: cannot unpickle ({type(e).__name__}: {e}); is the file truncated?") from None
  if not isinstance(obj, dict):
    raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
  return obj


def read_id_cnt(path: str, fields) -> dict[str, int]:
  """`others/id_cnt.pkl` checked to hold a positive int for every field in `fields`."""
  raw = load_pickle(path)
  out = {}
  for f in fields:
    v = raw.get(f)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f"{path}: key {f!r} must be a positive id count, got {v!r} (keys: {sorted(raw)})")
    out[f] = int(v)
  return out


def feather_columns(path: str, names: list[str]):
  """`(rows, column)` of a Feather (Arrow IPC) file: `column(name)` reads one column as int64 NumPy,
  checked to be integer (or bool) and free of nulls and NaN. Columns are read one at a time, so a
  day file of tens of millions of rows never sits in memory whole."""
  try:
    import pyarrow as pa  # noqa: PLC0415 (an optional dependency)
    from pyarrow import feather  # noqa: PLC0415
  except ImportError:
    raise ImportError("reading RecFlow needs pyarrow: pip install 'cascadejax[recflow]'") from None
  try:
    with pa.memory_map(path) as source:
      reader = pa.ipc.open_file(source)
      have, rows = reader.schema.names, reader.count_rows()
  except (pa.ArrowException, OSError) as e:
    raise ValueError(f"{path}: cannot read it as a Feather file ({e}); is the file truncated?") from None
  missing = [n for n in names if n not in have]
  if missing:
    raise ValueError(f"{path}: missing column(s) {missing}; the file has {have}")
  if rows == 0:
    raise ValueError(f"{path}: the file has no rows")

  def column(name: str) -> np.ndarray:
    try:
      col = feather.read_table(path, columns=[name], memory_map=True).column(0)
    except (pa.ArrowException, OSError) as e:
      raise ValueError(f"{path}: cannot read column {name!r} ({e}); is the file truncated?") from None
    if col.null_count:
      row = int(np.argmax(col.is_null().to_numpy(zero_copy_only=False)))
      raise ValueError(f"{path}: column {name!r} row {row} is null")
    a = col.to_numpy()
    if a.dtype.kind == "f" and np.isnan(a).any():
      raise ValueError(f"{path}: column {name!r} row {int(np.argmax(np.isnan(a)))} is NaN")
    if a.dtype.kind not in "iub":
      raise ValueError(f"{path}: column {name!r} must hold integers, got {col.type}")
    return a.astype(np.int64)

  return rows, column


def require(ok: np.ndarray, path: str, col: str, rows: np.ndarray, values: np.ndarray, what: str) -> None:
  """Raises a ValueError naming the file, column, first failing row and its value unless `ok` is all True."""
  if not ok.all():
    i = int(np.argmin(ok))
    raise ValueError(f"{path}: column {col!r} row {int(rows[i])}: {what}, got {values[i]}")
