"""Config trees: ConfigDict sections as plain, hashable Python values, and their flattened keys.

The bottom layer every config reader shares (it imports nothing from cascadejax): stage models
receive their hyperparameters as `plain` tuples and dicts (Flax module fields must be hashable),
and workdirs compare a saved config with the current one key by key through `flatten`.
"""

from __future__ import annotations

from typing import Any

from ml_collections import ConfigDict


def plain(x: Any) -> Any:
  """ConfigDicts -> dicts and lists -> tuples (hashable, as Flax module fields must be)."""
  if isinstance(x, (ConfigDict, dict)):
    return {k: plain(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return tuple(plain(v) for v in x)
  return x


def flatten(config: ConfigDict | dict, prefix: str = "") -> dict[str, Any]:
  """`{"a.b.c": value}` for every leaf, lists as tuples."""
  out = {}
  for k, v in (config.items() if isinstance(config, (ConfigDict, dict)) else ()):
    if isinstance(v, (ConfigDict, dict)):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = plain(v)
  return out
