"""Checksums of checkpoint steps: `<step>/checksums.json` holds the sha256 of every file of the step
(the state's array data and metadata, the input position, the layout) and the run's config, sealed by a
sha256 over both, so damage to any file, including checksums.json itself, is found and named.

Written atomically and last (`cascadejax.checkpoint.Checkpointer` writes it once orbax has finished the
step), its presence marks a complete verified step.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from cascadejax import files

CHECKSUMS = "checksums.json"


def _digest(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      h.update(block)
  return h.hexdigest()


def _files(step_dir: str) -> list[str]:
  """Every file of a step directory but its checksums, as sorted relative paths."""
  out = []
  for root, _, names in os.walk(step_dir):
    out += [os.path.relpath(os.path.join(root, n), step_dir) for n in names]
  return sorted(p for p in out if p not in (CHECKSUMS, CHECKSUMS + ".tmp"))


def _seal(record: dict[str, Any]) -> str:
  return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def write_checksums(step_dir: str, step: int, config: dict[str, Any] | None = None) -> None:
  """Writes `<step_dir>/checksums.json`: the sha256 of every file, the config, and a seal over both."""
  record = {"step": step, "files": {p: _digest(os.path.join(step_dir, p)) for p in _files(step_dir)},
            "config": config}
  files.write_atomic(os.path.join(step_dir, CHECKSUMS), json.dumps({**record, "seal": _seal(record)}, indent=1))


def read_checksums(step_dir: str) -> dict[str, Any]:
  """A step's checksums record without its seal: `{}` if it has none, `{"damaged": "checksums.json"}`
  if the file is unreadable or its seal does not match."""
  path = os.path.join(step_dir, CHECKSUMS)
  if not os.path.exists(path):
    return {}
  try:
    with open(path, "rb") as f:
      record = json.loads(f.read().decode())
    seal = record.pop("seal")
  except (ValueError, KeyError, AttributeError, TypeError):
    return {"damaged": CHECKSUMS}
  return record if _seal(record) == seal else {"damaged": CHECKSUMS}


def verify_step(step_dir: str) -> tuple[str, str]:
  """`("ok", "")`, `("damaged", what)` naming the file, or `("unverified", why)` for a step without
  checksums (its save was cut off before them, or it predates them)."""
  record = read_checksums(step_dir)
  if not record:
    return "unverified", f"no {CHECKSUMS}: its save did not finish, or it predates checksums"
  if "damaged" in record:
    return "damaged", f"{record['damaged']} is damaged"
  for rel, digest in record["files"].items():
    path = os.path.join(step_dir, rel)
    if not os.path.exists(path):
      return "damaged", f"{rel} is missing"
    if _digest(path) != digest:
      return "damaged", f"{rel} differs from its checksum"
  return "ok", ""


def verify_directory(directory: str) -> list[tuple[int, str, str]]:
  """`(step, status, detail)` of every step directory in `directory`, newest first (`verify_step`)."""
  steps = sorted((int(n) for n in os.listdir(directory) if n.isdigit()), reverse=True) \
      if os.path.isdir(directory) else []
  return [(s, *verify_step(os.path.join(directory, str(s)))) for s in steps]
