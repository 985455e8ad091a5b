"""GroupLens text files read with checks: whole-file decoding (plain or gzip), field splitting and
typed columns. Every error names the file, the 1-based row and the column (see `movielens`).
"""

from __future__ import annotations

import gzip
import zlib

import numpy as np

DOWNLOAD = "https://grouplens.org/datasets/movielens/"


def _salvage(raw: bytes) -> bytes:
  """Every byte a damaged gzip stream (`raw`, the file's bytes) still decompresses to, members in order."""
  out: list[bytes] = []
  while raw:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
      for i in range(0, len(raw), 1 << 16):
        out.append(d.decompress(raw[i:i + (1 << 16)]))
        if d.eof:
          break
    except zlib.error:
      break
    if not d.eof:
      break
    raw = d.unused_data
  return b"".join(out)


def read_lines(path: str) -> list[str]:
  """The file's lines (gzip if the name ends in .gz), decoded as latin-1.

  Raises:
    ValueError: naming the file, for an empty file; a truncated or corrupt gzip stream (with the
      number of complete rows it still holds); a last row without its newline (every GroupLens
      file ends each row with one, so the file was cut short, possibly inside the row's last field).
  """
  chunks: list[bytes] = []
  try:
    with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as f:
      while chunk := f.read(1 << 22):
        chunks.append(chunk)
  except (EOFError, zlib.error, gzip.BadGzipFile) as e:
    with open(path, "rb") as f:
      rows = _salvage(f.read()).count(b"\n")
    raise ValueError(f"{path}: truncated or corrupt gzip stream ({e}): it holds {rows} complete rows, so row "
                     f"{rows + 1} onwards is missing. Download the file again from {DOWNLOAD}") from e
  text = b"".join(chunks).decode("latin-1")
  lines = text.splitlines()
  if not any(line.strip() for line in lines):
    raise ValueError(f"{path}: empty file (no rows)")
  if not text.endswith(("\n", "\r")):
    raise ValueError(f"{path}: row {len(lines)} has no newline, so the file was cut short, possibly inside that "
                     f"row's last field ({lines[-1]!r}); every GroupLens file ends each row with one. Download the "
                     f"file again from {DOWNLOAD} (or, if that row is complete, end it with a newline)")
  return lines


def split_fields(lines: list[str], path: str, sep: str, names: tuple[str, ...], first_row: int = 1,
                 maxsplit: int = -1) -> list[list[str]]:
  """Each line split on `sep`, checking that it has exactly one field per name."""
  fields = [line.split(sep, maxsplit) for line in lines]
  for i, f in enumerate(fields):
    if len(f) != len(names):
      what = (f"missing column {names[len(f)]!r}" if len(f) < len(names) else
              f"{len(f)} fields where {len(names)} are expected")
      raise ValueError(f"{path}: row {first_row + i}: {what} (expected {sep.join(names)}), got {lines[i]!r}")
  return fields


def column(fields: list[list[str]], j: int, path: str, name: str, first_row: int = 1,
           kind: str = "id") -> np.ndarray:
  """Field `j` of every row as int64 ("id": > 0, "int": >= 0) or float64 ("float": finite)."""
  values = [f[j].strip() for f in fields]
  try:
    out = np.array(values, dtype=np.float64 if kind == "float" else np.int64)
  except (ValueError, OverflowError):
    for i, v in enumerate(values):
      try:
        float(v) if kind == "float" else np.int64(int(v))
      except (ValueError, OverflowError):
        want = "a number" if kind == "float" else "an integer"
        raise ValueError(f"{path}: row {first_row + i}, column {name!r}: {v!r} is not {want}") from None
    raise
  bad = ~np.isfinite(out) if kind == "float" else out <= 0 if kind == "id" else out < 0
  if bad.any():
    i = int(np.argmax(bad))
    why = {"float": "is not a finite number", "id": "is not a positive id (MovieLens ids start at 1)",
           "int": "is negative"}[kind]
    raise ValueError(f"{path}: row {first_row + i}, column {name!r}: {values[i]!r} {why}")
  return out


def unique_ids(ids: np.ndarray, path: str, name: str, first_row: int = 1) -> None:
  """Raises if an id of a side file (users, movies) is listed twice, naming both rows."""
  _, index, counts = np.unique(ids, return_index=True, return_counts=True)
  if (counts > 1).any():
    dup = ids[index[counts > 1][0]]
    rows = np.flatnonzero(ids == dup)[:2] + first_row
    raise ValueError(f"{path}: row {rows[1]}, column {name!r}: id {dup} is listed again (first at row {rows[0]})")
