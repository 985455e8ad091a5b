"""An on-disk cache of processed datasets: raw files are converted once, later runs memory-map the result.

`cached(reader, key, build, cache_dir=...)` names an entry by a hash of `key` (everything that
determines the output: the reader's config, the source files' names, sizes and modification times,
a format version) and either loads it or calls `build()` and writes it:

    <cache_dir>/<reader>-<hash16>/
      meta.json                       format version, the key, feature specs, splits and their fields
      <split>/<field>.npy             one NumPy array per field: user.<name>, items.<name>, stage,
                                      label, mask, feedback.<name>, request_ids

Why `.npy` and not ArrayRecord: a `CascadeBatch` split is a handful of fixed-shape columns and every
consumer (the grain pipeline's `split.take(indices)`, evaluation's slices, `validate`) reads columns,
not records; `np.load(mmap_mode="r")` gives those columns back as memory-mapped arrays with no
decoding, so the operating system pages in only the rows a batch touches and a dataset larger than
memory still trains. ArrayRecord would serialise per-request records and need a decode per row.

Writes are atomic: the entry is written to a temporary sibling directory `.tmp-<reader>-<hash16>-*`
and renamed into place once complete, so a crash or an exception mid-write never leaves an entry
that a later run would load (the temporary directory is removed on exceptions; one left by a killed
process is never read and can be deleted). An entry whose `meta.json` is missing, unreadable or
written by another format version is rebuilt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Mapping

import numpy as np
from absl import logging

from cascadejax.data.schema import CascadeBatch, CascadeData, FeatureSpec

FORMAT_VERSION = 1  # of the entry layout; bump when it changes


def canonical(value: Any, where: str = "key") -> Any:
  """`value` as plain JSON types (dicts with str keys, lists, str/int/float/bool/None).

  Raises:
    TypeError: naming the path inside the key of a value with no JSON form.
  """
  if isinstance(value, Mapping):
    return {str(k): canonical(v, f"{where}.{k}") for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
  if isinstance(value, np.generic):
    return value.item()
  if value is None or isinstance(value, (str, int, float, bool)):
    return value
  raise TypeError(f"cache {where}: {type(value).__name__} {value!r} has no JSON form; pass plain values")


def key_hash(key: Mapping[str, Any]) -> str:
  """The 16 hex digit name of `key`: SHA-256 of its canonical JSON (sorted keys)."""
  text = json.dumps(canonical(key), sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def entry_path(reader: str, key: Mapping[str, Any], cache_dir: str) -> str:
  """The directory the entry for (`reader`, `key`) lives in under `cache_dir`."""
  return os.path.join(os.path.expanduser(cache_dir), f"{reader}-{key_hash(key)}")


def _columns(batch: CascadeBatch) -> dict[str, Any]:
  cols = {f"user.{k}": v for k, v in batch.user.items()}
  cols.update({f"items.{k}": v for k, v in batch.items.items()})
  cols.update(stage=batch.stage, label=batch.label, mask=batch.mask)
  if batch.feedback is not None:
    cols.update({f"feedback.{k}": v for k, v in batch.feedback.items()})
  return cols


def _write(data: CascadeData, key: Mapping[str, Any], path: str) -> None:
  splits = {}
  for split, batch in data.splits.items():
    os.makedirs(os.path.join(path, split))
    cols = _columns(batch)
    cols["request_ids"] = data.request_ids[split]
    for name, array in cols.items():
      np.save(os.path.join(path, split, f"{name}.npy"), np.asarray(array), allow_pickle=False)
    splits[split] = {"fields": sorted(cols), "has_feedback": batch.feedback is not None,
                     "requests": int(batch.batch_size)}
  meta = {"format_version": FORMAT_VERSION, "key": canonical(key), "num_stages": data.num_stages,
          "features": [dataclasses.asdict(f) for f in data.features], "splits": splits, "report": data.report}
  with open(os.path.join(path, "meta.json"), "w") as f:  # written last: its presence marks completion
    json.dump(meta, f, indent=1, sort_keys=True)


def _read(path: str) -> CascadeData:
  with open(os.path.join(path, "meta.json")) as f:
    meta = json.load(f)
  if meta.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"format version {meta.get('format_version')}, this code reads {FORMAT_VERSION}")
  splits, request_ids = {}, {}
  for split, info in meta["splits"].items():
    cols = {name: np.load(os.path.join(path, split, f"{name}.npy"), mmap_mode="r", allow_pickle=False)
            for name in info["fields"]}
    group = lambda prefix: {k[len(prefix):]: v for k, v in cols.items() if k.startswith(prefix)}
    splits[split] = CascadeBatch(
        user=group("user."), items=group("items."), stage=cols["stage"], label=cols["label"],
        mask=cols["mask"], feedback=group("feedback.") if info["has_feedback"] else None)
    request_ids[split] = cols["request_ids"]
  features = tuple(FeatureSpec(**f) for f in meta["features"])
  return CascadeData(features=features, num_stages=meta["num_stages"], splits=splits, request_ids=request_ids,
                     report=meta.get("report", {}))


def load_entry(path: str) -> CascadeData | None:
  """The cached dataset at `path` with memory-mapped arrays, or None if there is no usable entry."""
  if not os.path.exists(os.path.join(path, "meta.json")):
    return None
  try:
    return _read(path)
  except (OSError, ValueError, KeyError, TypeError) as e:
    logging.warning("cache: ignoring unusable entry %s (%s); rebuilding it", path, e)
    return None


def cached(reader: str, key: Mapping[str, Any], build: Callable[[], CascadeData], *,
           cache_dir: str | None) -> CascadeData:
  """`build()`'s dataset, from the cache when an entry for (`reader`, `key`) exists.

  Args:
    reader: the reader's name (the entry directory's prefix), e.g. "recflow".
    key: everything that determines the output, as plain values (Mappings, sequences, str, numbers,
      bool, None): the reader config, the source files' names, sizes and mtimes, a format version.
    build: computes the dataset; called only on a miss.
    cache_dir: directory holding the entries (`~` is expanded); None disables caching.

  Returns:
    The dataset. On a hit, and after a miss that wrote an entry, every array is a read-only
    `np.memmap` of the entry's `.npy` files.
  """
  if cache_dir is None:
    return build()
  path = entry_path(reader, key, cache_dir)
  data = load_entry(path)
  if data is not None:
    logging.info("cache hit: %s", path)
    dropped = {k: v for k, v in data.report.get("dropped", {}).items() if v}
    if dropped:  # repeated on every hit: a cached run drops exactly what the build did
      logging.warning("%s: built with these rows dropped by documented filters: %s", path,
                      ", ".join(f"{k} {v:,}" for k, v in sorted(dropped.items())))
    return data
  logging.info("cache miss: building %s", path)
  built = build()
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(path)}-", dir=parent)
  try:
    _write(built, key, tmp)
    if os.path.exists(path):  # an unusable entry, or another process finished first
      if load_entry(path) is None:
        shutil.rmtree(path, ignore_errors=True)
    try:
      os.rename(tmp, path)
    except OSError:
      if load_entry(path) is None:  # not another writer's complete entry: a real failure
        raise
      logging.info("cache: another process wrote %s first; using its entry", path)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  logging.info("cache: wrote %s", path)
  return _read(path)
