"""Log files: which files a config names, their format, and their rows read in record batches with
errors that name the file (and the row where one is at fault).
"""

from __future__ import annotations

import glob
import os
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import numpy as np

from cascadejax.data.logs.config import EXTENSIONS


def resolve(directory: str, patterns, key: str) -> list[str]:
  """The files `patterns` (a glob, a folder or a list of them, relative to `directory`) name, sorted.

  Raises:
    ValueError: naming `key` when nothing matches.
  """
  root = os.path.expanduser(directory or ".")
  out = []
  for pattern in ([patterns] if isinstance(patterns, str) else list(patterns)):
    path = os.path.join(root, os.path.expanduser(pattern))
    if os.path.isdir(path):
      out += [os.path.join(path, f) for f in os.listdir(path) if _extension(f)]
    else:
      out += [p for p in glob.glob(path) if os.path.isfile(p)]
  if not out:
    raise ValueError(f"{key}: no log file matches {patterns!r} under {os.path.abspath(root)!r} "
                     f"(file extensions read: {sorted(EXTENSIONS)})")
  return sorted(dict.fromkeys(os.path.abspath(p) for p in out))


def _extension(name: str) -> str | None:
  for ext in sorted(EXTENSIONS, key=len, reverse=True):
    if name.lower().endswith(ext):
      return ext
  return None


def file_format(path: str, fmt: str) -> str:
  """"parquet", "feather" or "csv" for `path` under `config.data.format` = `fmt`."""
  if fmt != "auto":
    return fmt
  ext = _extension(path)
  if ext is None:
    raise ValueError(f"{path}: cannot tell the format from the extension; set config.data.format")
  return EXTENSIONS[ext]


def _dataset(path: str, fmt: str) -> ds.Dataset:
  kind = file_format(path, fmt)
  if kind == "csv":
    parse = ds.CsvFileFormat(parse_options=pa.csv.ParseOptions(delimiter="\t" if path.endswith(".tsv") else ","))
    return ds.dataset(path, format=parse)
  return ds.dataset(path, format="ipc" if kind == "feather" else "parquet")


def schema(path: str, fmt: str) -> pa.Schema:
  """The file's schema, or a ValueError naming the file (unreadable or truncated)."""
  try:
    return _dataset(path, fmt).schema
  except (pa.ArrowException, OSError) as e:
    raise ValueError(f"{path}: cannot read it as {file_format(path, fmt)} ({e}); is the file truncated?") from None


def require_columns(path: str, have: pa.Schema, names: list[str], key: str = "config.data") -> None:
  """Raises a ValueError naming the file and the missing columns."""
  missing = [n for n in names if n not in have.names]
  if missing:
    raise ValueError(f"{path}: missing column(s) {missing} named in {key}; the file has {have.names}")


def _check_last_newline(path: str) -> None:
  """Raises if a plain CSV's last row has no newline: the file was cut short, possibly inside that
  row's last field, which would otherwise load as a shorter value. (A cut gzip stream fails its own
  check when read.)"""
  with open(path, "rb") as f:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(max(0, size - 4096))
    tail = f.read()
  if tail and not tail.endswith((b"\n", b"\r")):
    rows = max(0, count_lines(path) - 1)  # data rows, the header aside
    raise ValueError(f"{path}: row {rows} (the last) has no newline, so the file was cut short, possibly inside "
                     f"its last field ({tail.splitlines()[-1][-60:].decode('utf-8', 'replace')!r}); CSV writers "
                     "(pandas, polars, pyarrow, Python's csv) end every row with one. Write the file again (or, "
                     "if that row is complete, end it with a newline)")


def count_lines(path: str) -> int:
  """Lines of a plain text file, the last counted whether or not it ends with a newline."""
  lines, last = 0, b"\n"
  with open(path, "rb") as f:
    while chunk := f.read(1 << 22):
      lines, last = lines + chunk.count(b"\n"), chunk[-1:]
  return lines + (last != b"\n")


def batches(path: str, fmt: str, columns: list[str], batch_rows: int) -> Iterator[tuple[int, pa.RecordBatch]]:
  """(first row, record batch) of the named columns, in file order.

  Raises:
    ValueError: naming the file: missing columns, a plain CSV whose last row has no newline (cut
      short), rows that cannot be read (with the rows read before them).
  """
  require_columns(path, schema(path, fmt), columns)
  if file_format(path, fmt) == "csv" and not path.endswith(".gz"):
    _check_last_newline(path)
  row = 0
  try:
    if file_format(path, fmt) == "parquet":  # the dataset scanner decodes far ahead: 1.9 GiB vs 0.26 GiB measured
      source = pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns)
    else:
      source = _dataset(path, fmt).to_batches(columns=columns, batch_size=batch_rows, use_threads=True)
    for batch in source:
      if batch.num_rows:
        yield row, batch
        row += batch.num_rows
  except (pa.ArrowException, OSError) as e:
    raise ValueError(f"{path}: cannot read rows after row {row} ({e}); is the file truncated?") from None


def count_rows(path: str, fmt: str) -> int:
  """Rows in the file (from metadata for Parquet and Feather; CSV files are estimated from their size)."""
  if file_format(path, fmt) == "csv":
    return max(1, os.path.getsize(path) // 40)
  try:
    return _dataset(path, fmt).count_rows()
  except (pa.ArrowException, OSError) as e:
    raise ValueError(f"{path}: cannot read it ({e}); is the file truncated?") from None


def fail(path: str, row0: int, column: str, bad: np.ndarray, values, what: str) -> None:
  """Raises a ValueError naming the file, the column and the first row where `bad` is True."""
  i = int(np.argmax(bad))
  value = values[i] if values is not None else None
  if isinstance(value, pa.Scalar):
    value = value.as_py()
  raise ValueError(f"{path}: column {column!r} row {row0 + i}: {what}" + (f", got {value!r}" if values is not None else ""))


def no_nulls(path: str, row0: int, batch: pa.RecordBatch, names) -> None:
  """Raises naming the first null of the columns `names`."""
  for name in names:
    col = batch.column(name)
    if col.null_count:
      fail(path, row0, name, col.is_null().to_numpy(zero_copy_only=False), None, "is null")


def floats(path: str, row0: int, batch: pa.RecordBatch, name: str, *, null_ok: np.ndarray | None = None,
           fill: float = 0.0) -> np.ndarray:
  """A numeric column as finite float64; nulls raise unless `null_ok` allows them (they become `fill`)."""
  col = batch.column(name)
  if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type)):
    raise ValueError(f"{path}: column {name!r} must be numeric, got {col.type}")
  null = col.is_null().to_numpy(zero_copy_only=False)
  if null.any() and (null_ok is None or (null & ~null_ok).any()):
    fail(path, row0, name, null & ~(null_ok if null_ok is not None else False), None,
         "is null" + (" on an exposed candidate" if null_ok is not None else ""))
  values = pc.fill_null(col.cast(pa.float64()), fill).to_numpy(zero_copy_only=False)
  if not np.isfinite(values).all():
    fail(path, row0, name, ~np.isfinite(values), values, "must be finite")
  return values


def ints(path: str, row0: int, batch: pa.RecordBatch, name: str) -> np.ndarray:
  """An integer (or boolean) column as int64, with no nulls."""
  col = batch.column(name)
  if not (pa.types.is_integer(col.type) or pa.types.is_boolean(col.type)):
    raise ValueError(f"{path}: column {name!r} must hold integers, got {col.type}")
  no_nulls(path, row0, batch, [name])
  return col.to_numpy(zero_copy_only=False).astype(np.int64)


def day_numbers(path: str, row0: int, batch: pa.RecordBatch, *, day: str | None, timestamp: str | None,
                offset_s: int) -> np.ndarray:
  """Each row's day (days since 1970-01-01) from `day` ('YYYY-MM-DD', date or timestamp) or from
  `timestamp` (seconds) at the local offset."""
  if day is None:
    return np.floor_divide(ints(path, row0, batch, timestamp) + offset_s, 86400)
  no_nulls(path, row0, batch, [day])
  col = batch.column(day)
  if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
    parsed = pc.strptime(col, format="%Y-%m-%d", unit="s", error_is_null=True)
    if parsed.null_count:
      fail(path, row0, day, parsed.is_null().to_numpy(zero_copy_only=False), col, "must be a 'YYYY-MM-DD' day")
    col = parsed
  if pa.types.is_date(col.type):
    return col.cast(pa.date32()).cast(pa.int32()).to_numpy().astype(np.int64)
  if pa.types.is_timestamp(col.type):
    seconds = col.cast(pa.timestamp("s")).cast(pa.int64()).to_numpy()
    return np.floor_divide(seconds + offset_s, 86400)
  raise ValueError(f"{path}: column {day!r} must hold days ('YYYY-MM-DD', a date or a timestamp), got {col.type}")
