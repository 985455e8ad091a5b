"""Stable 64-bit hashes of NumPy and Arrow columns: the same value hashes the same on every run,
machine and process (unlike Python's `hash`), so readers can sample, order and partition with them.

`mix` is splitmix64's finaliser; `seeded_hash` combines columns element by element; `arrow_hash`
hashes an Arrow array of integers or strings without a Python loop (strings by a polynomial hash of
their bytes, computed with cumulative products and `np.add.reduceat`).
"""

from __future__ import annotations

import numpy as np

_MASK = 0xFFFFFFFFFFFFFFFF
_BASE = 0x100000001B3  # FNV-1a's 64-bit prime: odd, so it has an inverse modulo 2^64
_STRING_SALT = np.uint64(0x5851F42D4C957F2D)  # keeps the string "12" and the integer 12 apart


def mix(x: np.ndarray) -> np.ndarray:
  """splitmix64's finaliser on uint64 arrays: a fixed, well-spread hash for seeded sampling."""
  with np.errstate(over="ignore"):
    x = (x + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(_MASK)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def seeded_hash(seed: int, *cols: np.ndarray) -> np.ndarray:
  """A uint64 hash of `seed` and the columns, element by element (same values on every run)."""
  h = np.full(cols[0].shape, mix(np.array([seed], np.uint64))[0])
  for c in cols:
    h = mix(h ^ c.astype(np.uint64))
  return h


def _powers(base: int, n: int) -> np.ndarray:
  out = np.full(n, base, np.uint64)
  if n:
    out[0] = 1
  with np.errstate(over="ignore"):
    return np.cumprod(out, dtype=np.uint64)  # wraps modulo 2^64, as the hash wants


def string_hash(offsets: np.ndarray, data: np.ndarray) -> np.ndarray:
  """uint64 hashes of the strings `data[offsets[i]:offsets[i + 1]]` (bytes, uint8).

  h = mix(sum_j byte_j * BASE^j + len * SALT), j the byte's position in its string and the sum
  modulo 2^64: each byte is weighted by the power of its position (a table as long as the longest
  string) and each string's sum is taken with `np.add.reduceat`, so no Python loop runs per string.
  """
  offsets = offsets.astype(np.int64)
  starts, lengths = offsets[:-1] - offsets[0], np.diff(offsets)
  data = data[offsets[0]:offsets[-1]]
  if not len(data):
    return mix(lengths.astype(np.uint64) * _STRING_SALT)
  position = np.arange(len(data), dtype=np.int64) - np.repeat(starts, lengths)
  with np.errstate(over="ignore"):
    weighted = np.append(data.astype(np.uint64) * _powers(_BASE, int(lengths.max()))[position], np.uint64(0))
    sums = np.add.reduceat(weighted, np.minimum(starts, len(data))) if len(starts) else np.zeros(0, np.uint64)
    sums = np.where(lengths > 0, sums, np.uint64(0))
    return mix(sums + lengths.astype(np.uint64) * _STRING_SALT)


def arrow_hash(array) -> np.ndarray:
  """uint64 hashes of an Arrow array (or chunked array) of integers, booleans or strings, with no
  nulls; dictionary-encoded arrays hash as their values."""
  import pyarrow as pa  # noqa: PLC0415 (an optional dependency)
  if isinstance(array, pa.ChunkedArray):
    array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
  if pa.types.is_dictionary(array.type):
    return arrow_hash(array.dictionary)[array.indices.to_numpy(zero_copy_only=False)]
  if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
    width = np.int64 if pa.types.is_large_string(array.type) else np.int32
    buffers = array.buffers()
    offsets = np.frombuffer(buffers[1], width)[array.offset:array.offset + len(array) + 1]
    data = np.frombuffer(buffers[2], np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
    return string_hash(offsets, data)
  if pa.types.is_integer(array.type) or pa.types.is_boolean(array.type):
    return mix(array.to_numpy(zero_copy_only=False).astype(np.int64).view(np.uint64))
  raise TypeError(f"cannot hash Arrow type {array.type}; ids must be integers or strings")


def combine(*hashes: np.ndarray) -> np.ndarray:
  """One uint64 hash per element of several aligned hash columns (order matters)."""
  h = hashes[0]
  with np.errstate(over="ignore"):
    for other in hashes[1:]:
      h = mix(h * np.uint64(_BASE) ^ other)
  return h
