"""Vocabularies: raw ids (strings or sparse integers) -> dense embedding rows.

Rows of a table with a vocabulary:

    0                               padding (empty sequence steps)
    1 .. oov_buckets                out-of-vocabulary ids, spread by a stable hash of the raw id
    oov_buckets + 1 + i             the i-th known id, known ids ordered by count (descending), then value

Known ids are those seen at least `min_count` times in the vocabulary days. A table with
`hash_buckets` > 0 keeps no vocabulary: every id maps to row 1 + hash(id) % hash_buckets, for
features whose vocabulary is unbounded. `Vocabulary.save`/`load` write `<dir>/<table>.arrow` (the
known ids and their counts) and `<dir>/<table>.json`; the export copies both, so serving maps raw ids
exactly as training did.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cascadejax.data.hashing import arrow_hash

_COMPACT_EVERY = 1 << 20  # pending (value, count) rows before they are summed


def normalise(array: pa.Array, where: str) -> pa.Array:
  """Integers as int64 and strings as large_string (so tables from different files agree), or a
  ValueError naming `where` for any other type."""
  if isinstance(array, pa.ChunkedArray):
    array = array.combine_chunks()
  if pa.types.is_dictionary(array.type):
    array = array.cast(array.type.value_type)
  if pa.types.is_integer(array.type):
    return array.cast(pa.int64())
  if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
    return array.cast(pa.large_string())
  raise ValueError(f"{where}: ids must be integers or strings, got {array.type}")


class Counter:
  """Counts raw ids per table across record batches, in bounded memory (the distinct ids)."""

  def __init__(self):
    self._tables: dict[str, list[pa.Table]] = {}
    self._pending: dict[str, int] = {}

  def add(self, table: str, values: pa.Array, where: str) -> None:
    """Counts `values` (no nulls) into `table`; `where` names the file and column in errors."""
    values = normalise(values, where)
    parts = self._tables.setdefault(table, [])
    if parts and parts[0].schema.field("value").type != values.type:
      raise ValueError(f"{where}: ids of table {table!r} are {values.type} here but "
                       f"{parts[0].schema.field('value').type} elsewhere; use one type per table")
    counts = pc.value_counts(values)
    parts.append(pa.table({"value": counts.field("values"), "count": counts.field("counts").cast(pa.int64())}))
    self._pending[table] = self._pending.get(table, 0) + len(counts)
    if self._pending[table] > _COMPACT_EVERY:
      self._tables[table] = [self._sum(table)]
      self._pending[table] = len(self._tables[table][0])

  def _sum(self, table: str) -> pa.Table:
    t = pa.concat_tables(self._tables[table]).group_by("value").aggregate([("count", "sum")])
    return pa.table({"value": t["value"], "count": t["count_sum"]})

  def counts(self, table: str) -> pa.Table | None:
    """(value, count) of every id counted into `table`, or None if nothing was."""
    return self._sum(table) if self._tables.get(table) else None


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """One table's id -> row mapping (see the module docstring for the row layout).

  Attributes:
    table: the table (feature) name.
    values: the known ids in row order (int64 or large_string), None for a hashed table.
    counts: each known id's count in the vocabulary days.
    oov_buckets: rows shared by unknown ids.
    hash_buckets: > 0 for a hashed table (no known ids).
  """

  table: str
  values: pa.Array | None
  counts: np.ndarray
  oov_buckets: int = 1
  hash_buckets: int = 0

  @classmethod
  def build(cls, table: str, counted: pa.Table | None, *, min_count: int, oov_buckets: int,
            hash_buckets: int) -> "Vocabulary":
    """The vocabulary of the ids `counted` (a `Counter.counts` table) under the options."""
    if hash_buckets:
      return cls(table, None, np.zeros(0, np.int64), oov_buckets, hash_buckets)
    if counted is None:
      counted = pa.table({"value": pa.array([], pa.int64()), "count": pa.array([], pa.int64())})
    counted = counted.filter(pc.greater_equal(counted["count"], min_count))
    order = pc.sort_indices(counted, sort_keys=[("count", "descending"), ("value", "ascending")])
    counted = counted.take(order)
    return cls(table, counted["value"].combine_chunks(), counted["count"].to_numpy(), oov_buckets, 0)

  @property
  def size(self) -> int:
    """Rows of the embedding table: padding, OOV buckets and known ids (or the hash buckets)."""
    return 1 + (self.hash_buckets or self.oov_buckets + len(self.values))

  def lookup(self, ids: pa.Array, where: str) -> tuple[np.ndarray, int]:
    """Rows of `ids` (no nulls) as int32, and how many were out of vocabulary."""
    ids = normalise(ids, where)
    if self.hash_buckets:
      return (1 + arrow_hash(ids) % np.uint64(self.hash_buckets)).astype(np.int32), 0
    if len(self.values) and ids.type != self.values.type:
      raise ValueError(f"{where}: ids are {ids.type} but table {self.table!r} was built from {self.values.type}")
    index = pc.index_in(ids, value_set=self.values) if len(self.values) else pa.nulls(len(ids), pa.int32())
    known = index.is_valid().to_numpy(zero_copy_only=False)
    rows = (1 + self.oov_buckets + index.fill_null(0).to_numpy(zero_copy_only=False)).astype(np.int32)
    unknown = np.flatnonzero(~known)
    if len(unknown):  # only unknown ids are hashed, and not at all with one OOV row
      rows[unknown] = 1 if self.oov_buckets == 1 else 1 + arrow_hash(ids.take(pa.array(unknown))) % np.uint64(self.oov_buckets)
    return rows, len(unknown)

  def save(self, directory: str) -> None:
    """Writes `<directory>/<table>.arrow` and `<table>.json`."""
    os.makedirs(directory, exist_ok=True)
    values = self.values if self.values is not None else pa.array([], pa.int64())
    with pa.OSFile(os.path.join(directory, f"{self.table}.arrow"), "wb") as sink:
      t = pa.table({"value": values, "count": pa.array(self.counts, pa.int64())})
      with pa.ipc.new_file(sink, t.schema) as writer:
        writer.write_table(t)
    meta = {"table": self.table, "oov_buckets": self.oov_buckets, "hash_buckets": self.hash_buckets,
            "size": self.size, "known": len(values)}
    with open(os.path.join(directory, f"{self.table}.json"), "w") as f:
      json.dump(meta, f, indent=1, sort_keys=True)

  @classmethod
  def load(cls, directory: str, table: str) -> "Vocabulary":
    """The vocabulary `save` wrote, or a ValueError naming the file."""
    path = os.path.join(directory, f"{table}.json")
    try:
      with open(path) as f:
        meta = json.load(f)
      with pa.memory_map(os.path.join(directory, f"{table}.arrow")) as source:
        t = pa.ipc.open_file(source).read_all()
    except (OSError, ValueError, pa.ArrowException) as e:
      raise ValueError(f"{path}: cannot read the vocabulary of table {table!r} ({e})") from None
    hashed = meta["hash_buckets"] > 0
    return cls(table, None if hashed else t["value"].combine_chunks(), t["count"].to_numpy(),
               meta["oov_buckets"], meta["hash_buckets"])
