"""`config.data` for your own logs (`config.data.name = "logs"`): every column named, none hard-coded.

`LogsSection.parse(config.data)` checks every key before a file is read and fills the defaults;
docs/data.md ("Your own logs") explains each key and `configs/logs_example.py` sets all of them.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from cascadejax.sections import Section

FORMATS = ("auto", "parquet", "feather", "csv")
EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".feather": "feather", ".arrow": "feather",
              ".ipc": "feather", ".csv": "csv", ".csv.gz": "csv", ".tsv": "csv"}
STAGE_KEYS = ("column", "flags", "groups")
LABEL_DEFAULTS = {"column": None, "add": {}, "position": None}
HISTORY_DEFAULTS = {"length": 0, "columns": {}, "tables": {}, "events": None, "events_user": None,
                    "events_time": None}
VOCAB_DEFAULTS = {"min_count": 1, "oov_buckets": 1, "hash_buckets": 0}


def day_number(text: Any, key: str) -> int:
  """'YYYY-MM-DD' -> days since 1970-01-01, or a ValueError naming `key`."""
  try:
    return (datetime.date.fromisoformat(str(text)) - datetime.date(1970, 1, 1)).days
  except ValueError:
    raise ValueError(f"{key} must hold dates as 'YYYY-MM-DD', got {text!r}") from None


def day_text(number: int) -> str:
  """Days since 1970-01-01 -> 'YYYY-MM-DD'."""
  return str(datetime.date(1970, 1, 1) + datetime.timedelta(days=int(number)))


def _day_range(pair: Any, key: str) -> tuple[int, int]:
  if not isinstance(pair, (tuple, list)) or len(pair) != 2:
    raise ValueError(f"{key} must be (first, last) dates as 'YYYY-MM-DD', got {pair!r}")
  first, last = day_number(pair[0], key), day_number(pair[1], key)
  if last < first:
    raise ValueError(f"{key}: last day {pair[1]} is before first day {pair[0]}")
  return first, last


def _options(given: Any, defaults: dict, key: str) -> dict:
  given = dict(given or {})
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise ValueError(f"{key}: unknown option(s) {unknown}; it takes {sorted(defaults)}")
  return {**defaults, **given}


@dataclasses.dataclass(frozen=True)
class LogsSection(Section):
  """`config.data` of the logs reader. Column names are the file's; feature names are the columns'.

  Attributes:
    name, seed, list_size: as every reader (`list_size` = N, the most candidates kept per request).
    dir: the folder holding the logs; `files` are globs relative to it (a folder means its files).
    files: glob(s) of the candidate rows: one row per (request, candidate).
    format: "auto" (from the extension), "parquet", "feather" (Arrow IPC) or "csv".
    cache_dir: where converted days and vocabularies are kept ("" keeps nothing on disk).
    request: the column(s) that identify a request.
    day: a column holding the request's day ('YYYY-MM-DD' strings, dates or timestamps), or None
      to take the day of `timestamp`.
    timestamp: a column holding the request time in seconds (the events join needs it), or None.
    utc_offset_hours: the local time the day of `timestamp` is taken in.
    train_days, test_days: inclusive (first, last) days of the splits.
    vocab_days: the days whose rows build the vocabularies (None = train_days); pin it to keep the
      vocabularies, and so the embedding tables, fixed while days are appended.
    user_features: per-request id columns (constant within a request).
    item_features: per-candidate id columns; the first identifies the item (no item twice per request).
    stage: {"column": c} (an int column, the deepest stage reached, 0..S), {"flags": (f1..fS)} (0/1
      columns, f_s = survived stage s, non-increasing) or {"groups": (g0, g1, ...)} (exclusive 0/1
      group columns, shallowest first, stage = min(index, S); rows in no group are counted and dropped).
    label: {"column": c} (graded, finite) or None for the stage; plus `add` {column: weight} terms and
      `position` (a column p: + 1 / (2 + p) where p is not null, RecFlow's position grading).
    feedback: float columns kept as `CascadeBatch.feedback` (null allowed on non-exposed rows: 0).
    history: {"length": L, "columns": {feature: column}, "tables": {feature: item feature}} with the
      columns lists on the rows (oldest first, constant within a request), or with "events" (a glob
      of an events table), "events_user" and "events_time": the last L events strictly before the
      request's `timestamp`. A feature shares its table with the item feature `tables` names.
    vocab: {"min_count", "oov_buckets", "hash_buckets"} defaults, and per feature overrides under
      its name: {"user_id": {"hash_buckets": 1_000_000}}.
    require_exposed: drop (and count) requests with no exposed candidate (stage S).
    partition_rows: about how many rows one partition of the conversion holds (bounds its memory).
    batch_rows: rows per record batch read from a file.
  """

  KEY = "data"
  name: str
  seed: int
  list_size: int
  dir: str
  files: Any
  request: tuple[str, ...]
  train_days: tuple[str, ...]
  test_days: tuple[str, ...]
  user_features: tuple[str, ...]
  item_features: tuple[str, ...]
  stage: Any
  format: str = "auto"
  cache_dir: str = ""
  day: str | None = None
  timestamp: str | None = None
  utc_offset_hours: float = 0.0
  vocab_days: tuple[str, ...] | None = None
  label: Any = None
  feedback: tuple[str, ...] = ()
  history: Any = None
  vocab: Any = None
  require_exposed: bool = True
  partition_rows: int = 1_000_000
  batch_rows: int = 65_536

  def check(self) -> None:
    if self.format not in FORMATS:
      raise ValueError(f"config.data.format must be one of {FORMATS}, got {self.format!r}")
    if not self.files:
      raise ValueError("config.data.files must name the candidate files (a glob, a folder or a list)")
    if not self.request:
      raise ValueError("config.data.request must name the request key column(s)")
    if self.day is None and self.timestamp is None:
      raise ValueError("config.data.day or config.data.timestamp must name the column the day is read from")
    if not self.item_features:
      raise ValueError("config.data.item_features must name at least the item id column")
    for key in ("list_size", "partition_rows", "batch_rows"):
      if getattr(self, key) < 1:
        raise ValueError(f"config.data.{key} must be >= 1, got {getattr(self, key)}")
    days = {k: _day_range(getattr(self, k), f"config.data.{k}") for k in ("train_days", "test_days")}
    if self.vocab_days is not None:
      _day_range(self.vocab_days, "config.data.vocab_days")
    (a, b), (c, d) = days["train_days"], days["test_days"]
    if a <= d and c <= b:
      raise ValueError("config.data.train_days and config.data.test_days overlap")
    stage = dict(self.stage or {})
    if len(stage) != 1 or next(iter(stage)) not in STAGE_KEYS:
      raise ValueError(f"config.data.stage must hold exactly one of {STAGE_KEYS}, got {stage}")
    label = self.label_options
    for column, weight in label["add"].items():
      if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise ValueError(f"config.data.label.add.{column} must be a number, got {weight!r}")
    h = self.history_options
    if h["length"] < 0:
      raise ValueError(f"config.data.history.length must be >= 0, got {h['length']}")
    if h["length"]:
      if not h["columns"]:
        raise ValueError("config.data.history.columns must map each history feature to its column")
      for feature in h["columns"]:
        if h["tables"].get(feature) not in self.item_features:
          raise ValueError(f"config.data.history.tables.{feature} must name one of config.data.item_features "
                           f"{self.item_features} (the table it shares), got {h['tables'].get(feature)!r}")
      if h["events"] is not None and (not h["events_user"] or not h["events_time"] or self.timestamp is None):
        raise ValueError("config.data.history.events needs history.events_user, history.events_time and "
                         "config.data.timestamp (events strictly before the request time are joined)")
      if h["events"] is not None and len(self.user_features) == 0:
        raise ValueError("config.data.history.events needs a user feature: the first of "
                         "config.data.user_features is the user the events are joined on")
    names = list(self.user_features) + list(self.item_features) + list(h["columns"] if h["length"] else ())
    if len(set(names)) != len(names):
      raise ValueError(f"config.data: feature names must be distinct, got {names}")
    for feature in self.features_with_vocab():
      self.vocab_options(feature)
    unknown = sorted(set(self.vocab or {}) - set(VOCAB_DEFAULTS) - set(names))
    if unknown:
      raise ValueError(f"config.data.vocab: {unknown} are neither options {sorted(VOCAB_DEFAULTS)} nor features")

  # ---- derived views ----
  @property
  def num_days(self) -> dict[str, tuple[int, int]]:
    """Split -> (first, last) day numbers, and "vocab" -> the vocabulary days."""
    out = {k: _day_range(getattr(self, f"{k}_days"), f"config.data.{k}_days") for k in ("train", "test")}
    out["vocab"] = _day_range(self.vocab_days, "config.data.vocab_days") if self.vocab_days else out["train"]
    return out

  @property
  def label_options(self) -> dict:
    return _options(self.label, LABEL_DEFAULTS, "config.data.label")

  @property
  def history_options(self) -> dict:
    return _options(self.history, HISTORY_DEFAULTS, "config.data.history")

  @property
  def stage_mode(self) -> tuple[str, Any]:
    """("column", name) or ("flags" | "groups", names)."""
    (mode, value), = dict(self.stage).items()
    return mode, (value if mode == "column" else tuple(value))

  def features_with_vocab(self) -> tuple[str, ...]:
    """The features that own a table: user and item features (history features share an item's)."""
    return tuple(self.user_features) + tuple(self.item_features)

  def vocab_options(self, feature: str) -> dict:
    """`min_count`, `oov_buckets`, `hash_buckets` of `feature`'s table, checked."""
    vocab = dict(self.vocab or {})
    defaults = {k: vocab.get(k, v) for k, v in VOCAB_DEFAULTS.items()}
    o = _options(vocab.get(feature), defaults, f"config.data.vocab.{feature}")
    for k, lowest in (("min_count", 1), ("oov_buckets", 1), ("hash_buckets", 0)):
      if isinstance(o[k], bool) or not isinstance(o[k], int) or o[k] < lowest:
        raise ValueError(f"config.data.vocab.{feature}.{k} must be an int >= {lowest}, got {o[k]!r}")
    return o

  def columns(self) -> list[str]:
    """Every column read from the candidate files."""
    mode, stage = self.stage_mode
    label, h = self.label_options, self.history_options
    cols = [*self.request, self.day, self.timestamp, *self.user_features, *self.item_features,
            *([stage] if mode == "column" else stage), label["column"], *label["add"], label["position"],
            *self.feedback, *(h["columns"].values() if h["length"] and h["events"] is None else ())]
    return list(dict.fromkeys(c for c in cols if c is not None))
