"""Your logs -> `CascadeData`: the two passes (`scan`, `requests`) over the files a config names, kept
in a `Store` so that a later run converts only the days it has not seen (daily increments).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time

import numpy as np
from absl import logging
from tqdm import tqdm

from cascadejax.data.logs import files, requests, scan
from cascadejax.data.logs.config import LogsSection, day_text
from cascadejax.data.logs.store import Store, key_hash
from cascadejax.data.logs.vocab import Counter, Vocabulary
from cascadejax.data.schema import CascadeBatch, CascadeData, FeatureSpec

FORMAT_VERSION = 1  # of the converted arrays; part of the store's key
_NOT_ARRAYS = ("dir", "files", "cache_dir", "train_days", "test_days", "vocab_days", "partition_rows", "batch_rows")


def _stamp(path: str) -> list:
  st = os.stat(path)
  return [path, st.st_size, st.st_mtime_ns]


def _file_days(s: LogsSection, paths: list[str], index_path: str | None) -> dict[str, list[int]]:
  """path -> the days its rows fall on (read from the day column once per file version)."""
  index = {}
  if index_path and os.path.exists(index_path):
    with open(index_path) as f:
      index = json.load(f)
  out, offset = {}, int(round(s.utc_offset_hours * 3600))
  for path in paths:
    stamp = json.dumps(_stamp(path))
    if stamp not in index:
      days = set()
      for row0, batch in files.batches(path, s.format, [s.day or s.timestamp], s.batch_rows):
        days.update(np.unique(files.day_numbers(path, row0, batch, day=s.day, timestamp=s.timestamp,
                                                offset_s=offset)).tolist())
      index[stamp] = sorted(int(d) for d in days)
    out[path] = index[stamp]
  if index_path:
    tmp = index_path + f".tmp{os.getpid()}"
    with open(tmp, "w") as f:
      json.dump(index, f)
    os.replace(tmp, index_path)
  return out


def features(s: LogsSection, vocabs: dict[str, Vocabulary]) -> tuple[FeatureSpec, ...]:
  """The id features of `s`, each table sized by its vocabulary."""
  h = s.history_options
  out = [FeatureSpec(f, "user", f, vocabs[f].size) for f in s.user_features]
  if h["length"]:
    out += [FeatureSpec(f, "user", t, vocabs[t].size, sequence=True) for f, t in h["tables"].items() if f in h["columns"]]
  return tuple(out + [FeatureSpec(f, "items", f, vocabs[f].size) for f in s.item_features])


def convert(s: LogsSection, num_stages: int, *, progress: bool = False,
            share: tuple[int, int] | None = None) -> CascadeData:
  """Converts (what is new of) the logs `s` names and returns the train and test splits: only the
  requests of `share` = (i, n), those whose request hash is i modulo n, when it is given (every
  process still counts every row into the vocabularies, so all processes build the same tables).

  Raises:
    ValueError: naming the file, row and column of bad input, or the config key that cannot work.
  """
  paths = files.resolve(s.dir, s.files, "config.data.files")
  events = files.resolve(s.dir, s.history_options["events"], "config.data.history.events") \
      if s.history_options["length"] and s.history_options["events"] else []
  root = os.path.expanduser(s.cache_dir) if s.cache_dir else tempfile.mkdtemp(prefix="cascadejax-logs-")
  os.makedirs(root, exist_ok=True)
  try:
    data = _convert(s, num_stages, paths, events, root, progress, share)
    if not s.cache_dir:  # nothing stays on disk: the arrays move into memory
      data = dataclasses.replace(data, splits={k: _in_memory(v) for k, v in data.splits.items()},
                                 request_ids={k: np.array(v) for k, v in data.request_ids.items()})
    return data
  finally:
    if not s.cache_dir:
      shutil.rmtree(root, ignore_errors=True)


def _in_memory(b: CascadeBatch) -> CascadeBatch:
  import jax  # noqa: PLC0415
  return jax.tree.map(np.array, b)


def _convert(s, num_stages, paths, events, root, progress, share) -> CascadeData:
  day_settings = {"day": s.day, "timestamp": s.timestamp, "utc_offset_hours": s.utc_offset_hours, "format": s.format}
  file_days = _file_days(s, paths, os.path.join(root, f"logs-files-{key_hash(day_settings)}.json"))
  ranges = s.num_days
  in_range = lambda d, r: r[0] <= d <= r[1]
  vocab_files = [p for p in paths if any(in_range(d, ranges["vocab"]) for d in file_days[p])]
  settings = {k: v for k, v in dataclasses.asdict(s).items() if k not in _NOT_ARRAYS}
  key = {"version": FORMAT_VERSION, "num_stages": num_stages, "settings": settings, "vocab_days": ranges["vocab"],
         "vocab_files": [_stamp(p) for p in vocab_files], "events": [_stamp(p) for p in events],
         "share": list(share) if share else None}
  store = Store(os.path.join(root, f"logs-{key_hash(key)}"))
  os.makedirs(os.path.join(store.path, "days"), exist_ok=True)
  store.clear_tmp()
  split_days = {split: sorted({d for p in paths for d in file_days[p] if in_range(d, ranges[split])})
                for split in ("train", "test")}
  for split, days in split_days.items():
    if not days:
      raise ValueError(f"config.data.{split}_days: no row of {len(paths)} file(s) falls in {getattr(s, f'{split}_days')}")
  holders = lambda d: sorted(p for p in paths if d in file_days[p])
  todo = [d for days in split_days.values() for d in days
          if (store.day_meta(day_text(d)) or {}).get("files") != [_stamp(p) for p in holders(d)]]
  vocab_dir = os.path.join(store.path, "vocab")
  tables = s.features_with_vocab()
  have_vocab = all(os.path.exists(os.path.join(vocab_dir, f"{t}.json")) for t in tables)
  if todo or not have_vocab:
    _run(s, num_stages, store, paths, events, file_days, todo, None if have_vocab else vocab_files, progress, share)
  vocabs = {t: Vocabulary.load(vocab_dir, t) for t in tables}
  feats = features(s, vocabs)
  names = [f"user.{f.name}" for f in feats if f.side == "user"] + [f"items.{f.name}" for f in feats if f.side == "items"]
  names += ["stage", "label", "mask", "request_ids"] + [f"feedback.{f}" for f in s.feedback]
  splits, request_ids = {}, {}
  for split, days in split_days.items():
    cols = store.split(split, [day_text(d) for d in days], names)
    group = lambda prefix: {k[len(prefix):]: v for k, v in cols.items() if k.startswith(prefix)}
    splits[split] = CascadeBatch(user=group("user."), items=group("items."), stage=cols["stage"], label=cols["label"],
                                 mask=cols["mask"], feedback=group("feedback.") if s.feedback else None)
    request_ids[split] = cols["request_ids"]
  report = _report(store, split_days)
  return CascadeData(features=feats, num_stages=num_stages, splits=splits, request_ids=request_ids, report=report,
                     process_share=tuple(share) if share else None)


def _run(s, num_stages, store, paths, events, file_days, todo, vocab_files, progress, share) -> None:
  """Both passes over the files holding the days `todo` (and the vocabulary files if `vocab_files`)."""
  started = time.time()
  todo_set = set(todo)
  read = [p for p in paths if todo_set & set(file_days[p]) or (vocab_files is not None and p in vocab_files)]
  rows = sum(files.count_rows(p, s.format) for p in read)
  bits = min(10, max(0, math.ceil(math.log2(max(1, rows / s.partition_rows)))))
  counter = Counter() if vocab_files is not None else None
  report: dict = {"files": {}, "dropped": {}}
  vocab_end = (s.num_days["vocab"][1] + 1) * 86400 - int(round(s.utc_offset_hours * 3600))
  with tempfile.TemporaryDirectory(prefix="partitions-", dir=store.path) as tmp:
    parts = scan.Partitions(tmp, bits)
    try:
      for p in tqdm(read, desc="logs: reading", disable=not progress, unit="file"):
        scan.scan_rows(s, num_stages, [(paths.index(p), p)], np.array(sorted(todo_set), np.int64),
                       s.num_days["vocab"], counter, parts, report["files"], share)
      if events:
        scan.scan_events(s, events, vocab_end, counter, parts, report["files"])
    finally:
      parts.close()
    vocab_dir = os.path.join(store.path, "vocab")
    if counter is not None and s.history_options["length"] and not events:
      _count_histories(s, parts, counter, "vocab_history" if share else "history")
    if counter is not None:
      shutil.rmtree(vocab_dir, ignore_errors=True)
      for t in s.features_with_vocab():
        Vocabulary.build(t, counter.counts(t), **s.vocab_options(t)).save(vocab_dir)
    vocabs = {t: Vocabulary.load(vocab_dir, t) for t in s.features_with_vocab()}
    stats: dict = {}
    for p in tqdm(range(parts.count), desc="logs: grouping", disable=not progress, unit="partition"):
      table = parts.read("rows", p)
      if table is None:
        continue
      out = requests.build(s, num_stages, table, vocabs, paths, stats, parts.read("history", p), parts.read("events", p))
      for day, arrays in out.items():
        store.write_part(day_text(day), p, arrays)
  for d in todo:
    text = day_text(d)
    store.finish_day(text, {"files": [_stamp(p) for p in sorted(p for p in paths if d in file_days[p])],
                            "converted": time.time()})
  report["dropped"] = {k: v for k, v in stats.items() if not k.startswith("oov.") and k != "requests"}
  report.update(oov={k[4:]: v for k, v in stats.items() if k.startswith("oov.")}, requests=stats.get("requests", 0),
                days=[day_text(d) for d in todo], seconds=round(time.time() - started, 3), partitions=1 << bits)
  for path, st in report["files"].items():
    for k, v in st.items():
      if k not in ("rows", "rows_of_other_processes"):  # the other processes convert those
        report["dropped"][k] = report["dropped"].get(k, 0) + v
  logging.info("logs: converted %d day(s) from %d file(s) in %.1f s: %s", len(todo), len(read), time.time() - started,
               json.dumps({k: report[k] for k in ("dropped", "oov", "requests")}))
  store.add_report(report)


def _count_histories(s: LogsSection, parts: scan.Partitions, counter: Counter, stream: str) -> None:
  """Counts each vocabulary-day request's history list once (pass 1 wrote one record per request and
  record batch, so a request's records are deduplicated here)."""
  import pyarrow as pa  # noqa: PLC0415
  import pyarrow.compute as pc  # noqa: PLC0415
  h, (first, last) = s.history_options, s.num_days["vocab"]
  for p in range(parts.count):
    hist = parts.read(stream, p)
    if hist is None:
      continue
    day = hist["__day"].to_numpy()
    rows = np.flatnonzero((day >= first) & (day <= last))
    rows = rows[np.unique(hist["__rh"].to_numpy()[rows], return_index=True)[1]]
    for feature, column in h["columns"].items():
      lists = hist[feature].combine_chunks().take(pa.array(rows))
      counter.add(h["tables"][feature], pc.list_flatten(lists), f"column {column!r}")


def _report(store: Store, split_days: dict) -> dict:
  """Every conversion report of the store, summed: dropped rows and OOV ids, and the per-run records."""
  runs = []
  if os.path.exists(os.path.join(store.path, "reports.jsonl")):
    with open(os.path.join(store.path, "reports.jsonl")) as f:
      runs = [json.loads(line) for line in f if line.strip()]
  total = lambda k: {n: sum(r[k].get(n, 0) for r in runs) for n in sorted({n for r in runs for n in r[k]})}
  return {"store": store.path, "vocab_dir": os.path.join(store.path, "vocab"), "dropped": total("dropped"), "oov": total("oov"),
          "days": {k: [day_text(d) for d in v] for k, v in split_days.items()}, "conversions": runs}
