"""One-line errors for the `--config.<key>=<value>` overrides of every command that takes them.

ml_collections' `config_flags` answers an override of a key the config does not have with a deep
traceback that never names the key, and one of the wrong type with the flag but not the type it
wants. `parse_flags` is the `flags_parser` that `train.py` (and `compare`, `convert`) hand to
`absl.app.run`: it parses the command line exactly as absl does and, when an override is at fault,
prints one line and exits with status 2:

  train.py: unknown config key config.train.stpes (did you mean config.train.steps?)
  train.py: config.train.steps must be an integer, got 'abc'

Any other error of the command line keeps absl's own message (and a broken config file its
traceback). This module imports nothing from cascadejax.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import sys
import textwrap
from typing import Any, Sequence

from absl import flags
from ml_collections import ConfigDict

_PART = re.compile(r"([^\[\]]+)((?:\[\d+\])*)")
_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
               tuple: "a tuple, e.g. '(1, 2)' or repeated flags"}


def dotted_keys(config: Any, prefix: str = "") -> list[str]:
  """Every key of `config` as a dotted path ("train", "train.steps", ...), sections included."""
  out = []
  for key, value in (config.items() if isinstance(config, (ConfigDict, dict)) else ()):
    out.append(f"{prefix}{key}")
    out.extend(dotted_keys(value, f"{prefix}{key}."))
  return out


def unknown_key(config: ConfigDict, path: str, name: str = "config") -> str | None:
  """The message for an override of `path` (dotted, as after `--config.`) that `config` lacks, or
  None when every part of `path` exists (or lies below a None placeholder config_flags fills in)."""
  holder: Any = config
  walked = name
  for part in path.split("."):
    match = _PART.fullmatch(part)
    key, indices = (match.group(1), match.group(2)) if match else (part, "")
    if holder is None:
      return None
    if not isinstance(holder, (ConfigDict, dict)):
      return f"unknown config key {name}.{path}: {walked} is a value ({holder!r}), not a section"
    if key not in holder:
      plain_path = re.sub(r"\[\d+\]", "", path)
      close = difflib.get_close_matches(plain_path, dotted_keys(config), n=1, cutoff=0.6)
      if close:
        hint = f"did you mean {name}.{close[0]}?"
      else:
        hint = f"{walked} has the keys {', '.join(sorted(holder))}"
      return f"unknown config key {name}.{path} ({hint})"
    holder = holder[key]
    walked = f"{walked}.{key}"
    for index in re.findall(r"\d+", indices):
      if not isinstance(holder, (tuple, list)) or int(index) >= len(holder):
        return f"unknown config key {name}.{path}: {walked} has no item [{index}]"
      holder = holder[int(index)]
      walked = f"{walked}[{index}]"
  return None


def _field_type(config: ConfigDict, path: str) -> type | None:
  parent, _, key = path.rpartition(".")
  holder: Any = config
  for part in parent.split(".") if parent else ():
    holder = holder[part] if isinstance(holder, (ConfigDict, dict)) and part in holder else None
  if isinstance(holder, ConfigDict) and key in holder:
    return holder.get_type(key)
  return None


def load_config(arg: str) -> Any:
  """`get_config()` of the config file `arg` names, as `--config` reads it ("file.py" or
  "file.py:argument", the argument passed to `get_config`)."""
  path, *args = arg.split(":", 1)
  spec = importlib.util.spec_from_file_location("cascadejax_override_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


def _overrides(argv: Sequence[str], name: str) -> tuple[str | None, list[tuple[str, str | None]]]:
  """The config file's argument and the `(path, value or None)` of every override in `argv`."""
  path, found = None, []
  for i, arg in enumerate(argv):
    if re.fullmatch(rf"--?{name}", arg) and i + 1 < len(argv):
      path = argv[i + 1]
    elif m := re.fullmatch(rf"--?{name}=(.*)", arg, re.S):
      path = m.group(1)
    elif m := re.fullmatch(rf"--?(?:no)?{name}\.([^=]+)(?:=(.*))?", arg, re.S):
      found.append((m.group(1), m.group(2)))
  return path, found


def diagnose(argv: Sequence[str], error: Exception, name: str = "config") -> str | None:
  """The one-line message for `error`, raised while parsing `argv`, when an override caused it: an
  unknown key (with the closest valid key) or a value of the wrong type; else None."""
  try:
    argv = flags.FLAGS.read_flags_from_files(list(argv), force_gnu=False)
  except Exception:  # pylint: disable=broad-except
    pass
  config_arg, found = _overrides(argv[1:], name)
  if config_arg is None or not found:
    return None
  try:
    config = load_config(config_arg)
  except Exception:  # pylint: disable=broad-except  (a broken config file keeps its own error)
    return None
  if not isinstance(config, ConfigDict):
    return None
  for path, _ in found:
    if message := unknown_key(config, path, name):
      return message
  if isinstance(error, flags.Error):
    for path, value in found:
      prefix = f"flag --{name}.{path}="
      if str(error).startswith(prefix):
        if value is None:
          value = str(error)[len(prefix):].split(": ", 1)[0]
        field_type = _field_type(config, path)
        wanted = _TYPE_NAMES.get(field_type, getattr(field_type, "__name__", "another type"))
        return f"{name}.{path} must be {wanted}, got {value!r}"
  return None


def parse_flags(argv: Sequence[str], *, name: str = "config", flag_values: flags.FlagValues = flags.FLAGS
                ) -> list[str]:
  """Parses `argv` into `flag_values` as absl's default does and returns the remaining arguments;
  a faulty override prints one line naming its key (`diagnose`) and exits with status 2."""
  prog = os.path.basename(argv[0]) if argv else "cascadejax"
  try:
    return flag_values(argv)
  except Exception as err:  # pylint: disable=broad-except
    message = diagnose(argv, err, name)
    if message is not None:
      print(f"{prog}: {message}", file=sys.stderr)
      sys.exit(2)
    if not isinstance(err, flags.Error):
      raise
    text = str(err)  # as absl.app.parse_flags_with_usage words it
    text = f"\n{textwrap.indent(text, '  ')}\n" if "\n" in text else f" {text}\n"
    sys.stderr.write(f"FATAL Flags parsing error:{text}Pass --helpshort or --helpfull to see help on flags.\n")
    sys.exit(1)
