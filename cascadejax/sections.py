"""Config sections: `Section` (a section parsed once into a frozen dataclass), plain values, flat keys.

The bottom layer every config reader shares (it imports nothing from cascadejax). Each layer that
owns a config section defines its `Section` next to the code it configures (`OptimizerSection` in
`cascadejax.optimizer`, `EmbeddingSection` in `cascadejax.embedding.collection`, ...), and
`cascadejax.configuration.validate` parses them all before anything is built. Stage models receive
their hyperparameters as `plain` tuples and dicts (Flax module fields must be hashable), and
workdirs compare a saved config with the current one key by key through `flatten`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, ClassVar

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


class Section:
  """A config section parsed once into a frozen dataclass that owns its defaults and its checks.

  Subclasses are `@dataclasses.dataclass(frozen=True)` classes whose fields are the section's keys:
  a field without a default is required, a field with one takes it when the key is absent. They set
  `KEY` (the section's path, e.g. "optimizer") and list in `ADDED` the keys added after runs were
  already being saved: a saved config without such a key is read as holding its default, so adding
  an option never makes an old workdir unresumable (`added_keys`). `check` holds the value checks;
  every error names the key as it is written on the command line (`config.optimizer.grad_clip`).
  `OPEN` sections (data) let reader-specific keys through to their reader's own checks.
  """

  KEY: ClassVar[str] = ""
  ADDED: ClassVar[tuple[str, ...]] = ()
  OPEN: ClassVar[bool] = False

  @classmethod
  def parse(cls, cfg: ConfigDict | dict | None):
    """The section `cfg` (`config.<KEY>`) as this dataclass: defaults filled, types and values checked.

    Raises:
      ValueError: naming the missing, unknown or ill-typed key, or the value `check` rejects.
    """
    given = dict(cfg.items()) if cfg is not None else {}
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(given) - set(fields))
    if unknown and not cls.OPEN:
      raise ValueError(f"config.{cls.KEY}: unknown option(s) {unknown}; "
                       f"it takes {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
      if name in given:
        values[name] = _typed(given[name], hints[name], f"config.{cls.KEY}.{name}")
      elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        raise ValueError(f"config is missing required key config.{cls.KEY}.{name}")
    section = cls(**values)
    section.check()
    return section

  def check(self) -> None:
    """Raises `ValueError` naming the key whose value cannot work (types are checked already)."""

  @classmethod
  def added_keys(cls) -> dict[str, Any]:
    """`{"<KEY>.<name>": default}` of the keys in `ADDED`."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    return {f"{cls.KEY}.{name}": defaults[name] for name in cls.ADDED}


def _typed(value: Any, hint: Any, key: str) -> Any:
  """`value` as the annotated type `hint` (lists become tuples, ints floats where a float is asked
  for), or a `ValueError` naming `key`."""
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if origin in (typing.Union, types.UnionType):
    for option in args:
      try:
        return _typed(value, option, key)
      except ValueError:
        pass
    raise ValueError(f"{key} must be of type {hint}, got {value!r}")
  if hint is type(None):
    if value is None:
      return None
  elif origin is tuple:
    if isinstance(value, (tuple, list)):
      inner = args[0] if args else Any
      return tuple(v if inner is Any else _typed(v, inner, key) for v in value)
  elif hint is Any:
    return plain(value)
  elif hint is float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
  elif hint is int:
    if isinstance(value, int) and not isinstance(value, bool):
      return value
  elif isinstance(value, hint):
    return value
  raise ValueError(f"{key} must be of type {getattr(hint, '__name__', hint)}, got {value!r}")
