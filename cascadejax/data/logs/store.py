"""The converted logs on disk: vocabularies and one folder per converted day, appended to as days come.

    <cache_dir>/logs-<hash16>/          hash of every setting that changes the arrays (not the days)
                                        and of the files holding the vocabulary days
      vocab/<table>.arrow, .json        `Vocabulary.save`
      days/<YYYY-MM-DD>/meta.json       requests, the files the day was read from (name, size, mtime)
      days/<YYYY-MM-DD>/part-<p>/*.npy  the day's requests, partition by partition, in order
      splits/<split>-<hash16>/*.npy     a split's days concatenated (memory-mapped by training)
      reports.jsonl                     one conversion report per run

Days are written to a temporary sibling and renamed into place, and a day's `meta.json` is written
last, so a killed conversion never leaves a day that a later run would read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np

from cascadejax.data.cache import canonical


def key_hash(key) -> str:
  """16 hex digits of the SHA-256 of `key`'s canonical JSON."""
  return hashlib.sha256(json.dumps(canonical(key), sort_keys=True).encode()).hexdigest()[:16]


def _fields(day: dict) -> dict[str, np.ndarray]:
  out = {f"user.{k}": v for k, v in day["user"].items()}
  out.update({f"items.{k}": v for k, v in day["items"].items()})
  out.update({f"feedback.{k}": v for k, v in day["feedback"].items()})
  out.update(stage=day["stage"], label=day["label"], mask=day["mask"], request_ids=day["request_ids"])
  return out


class Store:
  """One store directory (see the module docstring)."""

  def __init__(self, path: str):
    self.path = path

  def day_dir(self, day: str) -> str:
    return os.path.join(self.path, "days", day)

  def day_meta(self, day: str) -> dict | None:
    """The day's meta.json, or None if the day is not (completely) converted."""
    try:
      with open(os.path.join(self.day_dir(day), "meta.json")) as f:
        return json.load(f)
    except (OSError, ValueError):
      return None

  def write_part(self, day: str, part: int, arrays: dict) -> None:
    """Writes one partition's requests of `day` into the day's temporary folder."""
    d = os.path.join(self.path, "days", f".tmp-{day}", f"part-{part:05d}")
    os.makedirs(d, exist_ok=True)
    for name, a in _fields(arrays).items():
      np.save(os.path.join(d, f"{name}.npy"), np.ascontiguousarray(a), allow_pickle=False)

  def finish_day(self, day: str, meta: dict) -> None:
    """Moves the day's temporary folder into place (replacing an older conversion) and writes its meta."""
    tmp = os.path.join(self.path, "days", f".tmp-{day}")
    os.makedirs(tmp, exist_ok=True)
    with open(os.path.join(tmp, "meta.json"), "w") as f:
      json.dump(meta, f, indent=1, sort_keys=True)
    final = self.day_dir(day)
    if os.path.exists(final):
      shutil.rmtree(final)
    os.rename(tmp, final)

  def clear_tmp(self) -> None:
    days = os.path.join(self.path, "days")
    for name in os.listdir(days) if os.path.isdir(days) else ():
      if name.startswith(".tmp-"):
        shutil.rmtree(os.path.join(days, name), ignore_errors=True)

  def split(self, name: str, days: list[str], fields: list[str]) -> dict[str, np.ndarray]:
    """The fields of `days` concatenated in order, memory-mapped (assembled once per day list)."""
    parts = [os.path.join(self.day_dir(d), p) for d in days for p in sorted(os.listdir(self.day_dir(d)))
             if p.startswith("part-")]
    stamps = [(d, self.day_meta(d)["converted"]) for d in days]
    out_dir = os.path.join(self.path, "splits", f"{name}-{key_hash(stamps)}")
    if not os.path.exists(os.path.join(out_dir, "done")):
      tmp = out_dir + ".tmp"
      shutil.rmtree(tmp, ignore_errors=True)
      os.makedirs(tmp)
      for field in fields:
        chunks = [np.load(os.path.join(p, f"{field}.npy"), mmap_mode="r") for p in parts]
        total = sum(len(c) for c in chunks)
        out = np.lib.format.open_memmap(os.path.join(tmp, f"{field}.npy"), mode="w+", dtype=chunks[0].dtype,
                                        shape=(total, *chunks[0].shape[1:]))
        at = 0
        for c in chunks:
          out[at:at + len(c)] = c
          at += len(c)
        out.flush()
        del out
      open(os.path.join(tmp, "done"), "w").close()
      shutil.rmtree(out_dir, ignore_errors=True)
      os.rename(tmp, out_dir)
    return {f: np.load(os.path.join(out_dir, f"{f}.npy"), mmap_mode="r") for f in fields}

  def add_report(self, report: dict) -> None:
    with open(os.path.join(self.path, "reports.jsonl"), "a") as f:
      f.write(json.dumps(report, sort_keys=True) + "\n")
