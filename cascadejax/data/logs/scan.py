"""Pass 1 of the conversion: read every log file once, in record batches, check each row, count the
vocabularies and write the rows into P on-disk partitions by a hash of the request (or, with an
events table, of the user), so that pass 2 holds one partition, never the whole log, in memory.

A partition is a contiguous range of the hash's top bits, and pass 2 orders a day's requests by
(partition hash, request hash): the order, and so the converted data, does not depend on P.
Partition files are Arrow IPC files of normalised columns (ids int64 or large_string, numbers
float64) plus the bookkeeping columns `__file`, `__row` (where a row came from, for error
messages), `__day`, `__stage`, `__rh` (request hash), `__ph` (partition hash), `__ih` (item hash)
and, with list histories, `__hh` (the history's hash: it must be constant within a request). The
"history" stream holds each request's lists; on a multi-host run "vocab_history" holds those of
every process's requests of the vocabulary days, for the counts every process must agree on.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cascadejax.data import hashing
from cascadejax.data.logs import files
from cascadejax.data.logs.config import LogsSection
from cascadejax.data.logs.vocab import Counter, normalise


class Partitions:
  """P Arrow IPC writers per stream ("rows", "history", "events"), opened on first use."""

  def __init__(self, directory: str, bits: int):
    self.directory, self.bits, self.count = directory, bits, 1 << bits
    self._writers: dict[tuple[str, int], pa.ipc.RecordBatchFileWriter] = {}
    self._sinks: dict[tuple[str, int], pa.OSFile] = {}
    self._schemas: dict[str, pa.Schema] = {}

  def path(self, stream: str, p: int) -> str:
    return os.path.join(self.directory, f"{stream}-{p:05d}.arrow")

  def index(self, h: np.ndarray) -> np.ndarray:
    return (h >> np.uint64(64 - self.bits)).astype(np.int64) if self.bits else np.zeros(len(h), np.int64)

  def write(self, stream: str, h: np.ndarray, batch: pa.RecordBatch, where: str) -> None:
    """Appends each row of `batch` to the partition of its hash `h`."""
    known = self._schemas.setdefault(stream, batch.schema)
    if not known.equals(batch.schema):
      diff = [f"{a.name}: {a.type} vs {b.type}" for a, b in zip(known, batch.schema) if a.type != b.type]
      raise ValueError(f"{where}: column types differ from the earlier files ({', '.join(diff)}); "
                       "use one type per column across files")
    p = self.index(h)
    order = np.argsort(p, kind="stable")
    bounds = np.searchsorted(p[order], np.arange(self.count + 1))
    for q in np.flatnonzero(np.diff(bounds)):
      part = batch.take(pa.array(order[bounds[q]:bounds[q + 1]]))
      key = (stream, int(q))
      if key not in self._writers:
        self._sinks[key] = pa.OSFile(self.path(stream, int(q)), "wb")
        self._writers[key] = pa.ipc.new_file(self._sinks[key], batch.schema)
      self._writers[key].write_batch(part)

  def close(self) -> None:
    for key, writer in self._writers.items():
      writer.close()
      self._sinks[key].close()
    self._writers.clear()

  def read(self, stream: str, p: int) -> pa.Table | None:
    """Partition `p` of `stream`, or None if no row went there."""
    path = self.path(stream, p)
    if not os.path.exists(path):
      return None
    with pa.memory_map(path) as source:
      return pa.ipc.open_file(source).read_all()


def stage_of(s: LogsSection, num_stages: int, path: str, row0: int, batch: pa.RecordBatch) -> np.ndarray:
  """Each row's stage (0..S), or -1 for rows in no group (`stage.groups` only)."""
  mode, names = s.stage_mode
  if mode == "column":
    stage = files.ints(path, row0, batch, names)
    bad = (stage < 0) | (stage > num_stages)
    if bad.any():
      files.fail(path, row0, names, bad, stage, f"stages must lie in [0, {num_stages}] for a {num_stages}-stage cascade")
    return stage
  flags = []
  for name in names:
    f = files.ints(path, row0, batch, name)
    if ((f != 0) & (f != 1)).any():
      files.fail(path, row0, name, (f != 0) & (f != 1), f, "flags must be 0 or 1")
    flags.append(f)
  flags = np.stack(flags, axis=1)
  if mode == "flags":
    if len(names) != num_stages:
      raise ValueError(f"config.data.stage.flags: {len(names)} flags for a {num_stages}-stage cascade; give one per stage")
    rising = (np.diff(flags, axis=1) > 0).any(axis=1)
    if rising.any():
      files.fail(path, row0, names[int(np.argmax(np.diff(flags, axis=1)[np.argmax(rising)] > 0)) + 1], rising, None,
                 "a candidate cannot survive a stage it was not passed by the stage before")
    return flags.sum(axis=1)
  many = flags.sum(axis=1) > 1
  if many.any():
    files.fail(path, row0, names[0], many, None, f"a row may belong to one group of {names} only")
  return np.where(flags.any(axis=1), np.minimum(np.argmax(flags, axis=1), num_stages), -1)


def _as_item_lists(col, item_type: pa.DataType, where: str) -> pa.Array:
  """A list column as large_list<item_type> (a file whose lists are all empty has list<null>)."""
  col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
  values = pc.list_flatten(col)
  values = values.cast(item_type) if pa.types.is_null(values.type) else normalise(values, where)
  if values.type != item_type:
    raise ValueError(f"{where}: history ids are {values.type} but the item ids they share a table with are {item_type}")
  offsets = np.asarray(col.offsets).astype(np.int64)
  return pa.LargeListArray.from_arrays(pa.array(offsets - offsets[0]), values)


def list_hashes(col: pa.Array) -> np.ndarray:
  """One uint64 hash per list of a list column (order-sensitive)."""
  col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
  values = normalise(pc.list_flatten(col), "history")
  offsets = np.asarray(col.offsets)
  return hashing.string_hash(offsets - offsets[0], hashing.arrow_hash(values))


def scan_rows(s: LogsSection, num_stages: int, paths: list[tuple[int, str]], days: np.ndarray,
              vocab_days: tuple[int, int], counter: Counter | None, parts: Partitions, report: dict,
              share: tuple[int, int] | None = None) -> None:
  """Pass 1 over the candidate files ((index, path) pairs; the index is stored as `__file`): rows of
  `days` (of requests in `share` = (i, n): request hash = i mod n) go to `parts`; every row of the
  vocabulary days is counted into `counter`."""
  h = s.history_options
  list_history = h["length"] > 0 and h["events"] is None
  columns, label = s.columns(), s.label_options
  offset = int(round(s.utc_offset_hours * 3600))
  for file_index, path in paths:
    stats = report.setdefault(path, {"rows": 0, "rows_outside_days": 0, "rows_in_no_group": 0})
    for row0, batch in files.batches(path, s.format, columns, s.batch_rows):
      stats["rows"] += batch.num_rows
      files.no_nulls(path, row0, batch, [*s.request, *s.user_features, *s.item_features])
      day = files.day_numbers(path, row0, batch, day=s.day, timestamp=s.timestamp, offset_s=offset)
      stage = stage_of(s, num_stages, path, row0, batch)
      exposed = stage == num_stages
      out = {"__file": np.full(batch.num_rows, file_index, np.int32), "__row": row0 + np.arange(batch.num_rows),
             "__day": day.astype(np.int32), "__stage": stage.astype(np.int32)}
      for name in [label["column"], *label["add"], label["position"], *s.feedback]:
        if name is not None and name not in out:
          null_ok = None if name == label["column"] else (np.ones_like(exposed) if name == label["position"] else ~exposed)
          out[name] = files.floats(path, row0, batch, name, null_ok=null_ok, fill=-1.0 if name == label["position"] else 0.0)
      if label["position"] is not None:
        p = batch.column(label["position"]).is_valid().to_numpy(zero_copy_only=False)
        bad = p & (out[label["position"]] < 0)
        if bad.any():
          files.fail(path, row0, label["position"], bad, out[label["position"]], "positions must be >= 0")
      if s.timestamp is not None and s.timestamp not in out:
        out[s.timestamp] = files.ints(path, row0, batch, s.timestamp)
      ids = {c: normalise(batch.column(c), f"{path}: column {c!r}") for c in [*s.request, *s.user_features, *s.item_features]}
      rh = hashing.combine(*(hashing.arrow_hash(ids[c]) for c in s.request))
      ph = hashing.arrow_hash(ids[s.user_features[0]]) if h["events"] is not None else rh
      out.update(__rh=rh, __ph=ph, __ih=hashing.arrow_hash(ids[s.item_features[0]]))
      if list_history:
        for feature, column in h["columns"].items():
          col = batch.column(column)
          if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
            raise ValueError(f"{path}: column {column!r} (config.data.history.columns.{feature}) must be a list column, got {col.type}")
          files.no_nulls(path, row0, batch, [column])
          if pc.list_flatten(col).null_count:
            raise ValueError(f"{path}: column {column!r}: a list holds a null id (rows near {row0})")
        lists = {f: _as_item_lists(batch.column(c), ids[h["tables"][f]].type, f"{path}: column {c!r}")
                 for f, c in h["columns"].items()}
        out["__hh"] = hashing.combine(*(list_hashes(lists[f]) for f in h["columns"]))
      in_days = np.isin(day, days)
      stats["rows_outside_days"] += int((~in_days).sum())
      stats["rows_in_no_group"] += int((in_days & (stage < 0)).sum())
      mine = (rh % np.uint64(share[1]) == np.uint64(share[0])) if share else True
      stats["rows_of_other_processes"] = stats.get("rows_of_other_processes", 0) + int((in_days & ~mine).sum())
      keep = np.flatnonzero(in_days & (stage >= 0) & mine)
      if counter is not None:  # vocabulary days need not be converted days
        vocab = np.flatnonzero((day >= vocab_days[0]) & (day <= vocab_days[1]) & (stage >= 0))
        for c in [*s.user_features, *s.item_features]:
          counter.add(c, ids[c].take(pa.array(vocab)), f"{path}: column {c!r}")
      if counter is not None and list_history and share:  # every process counts every request's history
        first = vocab[np.unique(rh[vocab], return_index=True)[1]]
        counted = {"__rh": pa.array(rh[first]), "__day": pa.array(out["__day"][first])}
        counted.update({f: lists[f].take(pa.array(first)) for f in h["columns"]})
        parts.write("vocab_history", ph[first], pa.RecordBatch.from_pydict(counted), path)
      if not len(keep):
        continue
      take = pa.array(keep)
      arrays = {k: pa.array(v[keep]) for k, v in out.items()}
      arrays.update({c: ids[c].take(take) for c in ids})
      parts.write("rows", ph[keep], pa.RecordBatch.from_pydict(arrays), path)
      if list_history:  # each request's history once per record batch (pass 2 picks one)
        first = keep[np.unique(rh[keep], return_index=True)[1]]
        hist = {"__rh": pa.array(rh[first]), "__hh": pa.array(out["__hh"][first]), "__day": pa.array(out["__day"][first])}
        hist.update({f: lists[f].take(pa.array(first)) for f in h["columns"]})
        parts.write("history", ph[first], pa.RecordBatch.from_pydict(hist), path)


def scan_events(s: LogsSection, paths: list[str], vocab_end_s: int, counter: Counter | None,
                parts: Partitions, report: dict) -> None:
  """Pass 1 over the events table: each event goes to its user's partition; events before the end of
  the vocabulary days are counted into their tables."""
  h = s.history_options
  user, time = h["events_user"], h["events_time"]
  columns = list(dict.fromkeys([user, time, *h["columns"].values()]))
  for path in paths:
    stats = report.setdefault(path, {"rows": 0})
    for row0, batch in files.batches(path, s.format, columns, s.batch_rows):
      stats["rows"] += batch.num_rows
      files.no_nulls(path, row0, batch, [user, *h["columns"].values()])
      t = files.ints(path, row0, batch, time)
      u = normalise(batch.column(user), f"{path}: column {user!r}")
      out = {"__user": u, "__time": pa.array(t)}
      for feature, column in h["columns"].items():
        out[feature] = normalise(batch.column(column), f"{path}: column {column!r}")
        if counter is not None:
          counter.add(h["tables"][feature], out[feature].filter(pa.array(t < vocab_end_s)), f"{path}: column {column!r}")
      parts.write("events", hashing.arrow_hash(u), pa.RecordBatch.from_pydict(out), path)
