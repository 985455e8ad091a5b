"""Config checks that run before anything is compiled, and config (de)serialisation for workdirs.

Every error names the offending key as it is written on the command line (`config.cascade.prerank.k`).
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any

from ml_collections import ConfigDict

from cascadejax import models
from cascadejax.optimizer import OPTIMIZERS, SCHEDULES
from cascadejax.methods import get_method
from cascadejax.sections import flatten, plain
from cascadejax.data import check_valid_fraction
from cascadejax.embedding.layout import PLACEMENTS, ROUTINGS

# Keys every config must define, with the types they must have.
REQUIRED: dict[str, type | tuple[type, ...]] = {
    "seed": int,
    "data.name": str,
    "data.seed": int,
    "data.list_size": int,
    "cascade.stages": (tuple, list),
    "cascade.gt_num": int,
    "embedding.dim": int,
    "embedding.shared": bool,
    "method.name": str,
    "optimizer.name": str,
    "optimizer.learning_rate": (int, float),
    "optimizer.schedule": str,
    "optimizer.warmup_steps": int,
    "optimizer.weight_decay": (int, float),
    "optimizer.grad_clip": (int, float),
    "train.batch_size": int,
    "train.steps": int,
    "train.log_every": int,
    "train.eval_every": int,
    "train.eval_batch_size": int,
    "train.checkpoint_every": int,
    "train.keep_checkpoints": int,
    "mesh.axes": (tuple, list),
    "mesh.shape": (tuple, list),
}
POSITIVE = ("data.list_size", "cascade.gt_num", "embedding.dim", "train.batch_size", "train.steps",
            "train.log_every", "train.eval_batch_size", "train.checkpoint_every", "train.keep_checkpoints")
# Keys a resumed run may change without changing what it computes (train.steps changes the
# learning-rate schedule's length, which is the user's explicit choice; mesh.shape moves the run
# to another device count, `Experiment.restore`).
RESUMABLE_CHANGES = ("train.steps", "train.log_every", "train.eval_every", "train.eval_batch_size",
                     "train.checkpoint_every", "train.keep_checkpoints", "train.progress_bar", "mesh.shape")


def _get(config: ConfigDict, dotted: str) -> Any:
  node = config
  for part in dotted.split("."):
    if not isinstance(node, (ConfigDict, dict)) or part not in node:
      raise ValueError(f"config is missing required key config.{dotted}")
    node = node[part]
  return node


def validate(config: ConfigDict) -> None:
  """Raises `ValueError` naming the first key of `config` that cannot work.

  Checks required keys and their types, stage definitions (known model, known hyperparameters,
  each k smaller than the candidates the stage receives), `gt_num <= k_S`, the method name and
  options, the optimizer, the mesh spec, and that eval batches pad cleanly.
  """
  for key, typ in REQUIRED.items():
    value = _get(config, key)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
      raise ValueError(f"config.{key} must be of type {typ}, got {value!r}")
  for key in POSITIVE:
    if _get(config, key) < 1:
      raise ValueError(f"config.{key} must be >= 1, got {_get(config, key)}")

  stages = tuple(config.cascade.stages)
  if not stages:
    raise ValueError("config.cascade.stages must name at least one stage")
  if len(set(stages)) != len(stages):
    raise ValueError(f"config.cascade.stages has repeated names: {stages}")
  received, received_from = config.data.list_size, "config.data.list_size (the candidates per request)"
  for name in stages:
    section = _get(config, f"cascade.{name}")
    prefix = f"config.cascade.{name}"
    model, k = _get(config, f"cascade.{name}.model"), _get(config, f"cascade.{name}.k")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
      raise ValueError(f"{prefix}.k must be a positive int, got {k!r}")
    if k >= received:
      raise ValueError(f"{prefix}.k={k} must be smaller than the {received} candidates the stage "
                       f"receives ({received_from}); a later stage must keep fewer than an earlier one")
    models.get_model(model, plain(section.get("model_kwargs", {})), config_key=f"{prefix}.model")
    received, received_from = k, f"{prefix}.k"
  if config.cascade.gt_num > received:
    raise ValueError(f"config.cascade.gt_num={config.cascade.gt_num} exceeds the last stage's "
                     f"k ({received_from}={received}): the cascade could never recall all of it")

  get_method(config)  # raises on unknown names or options

  if config.optimizer.name not in OPTIMIZERS:
    raise ValueError(f"config.optimizer.name: unknown optimizer {config.optimizer.name!r}; available: {OPTIMIZERS}")
  if config.optimizer.schedule not in SCHEDULES:
    raise ValueError(f"config.optimizer.schedule: unknown schedule {config.optimizer.schedule!r}; "
                     f"available: {SCHEDULES}")
  if config.optimizer.learning_rate <= 0:
    raise ValueError(f"config.optimizer.learning_rate must be > 0, got {config.optimizer.learning_rate}")
  if len(config.mesh.axes) != len(config.mesh.shape):
    raise ValueError(f"config.mesh.axes {tuple(config.mesh.axes)} and config.mesh.shape "
                     f"{tuple(config.mesh.shape)} must have the same length")
  if "data" not in config.mesh.axes:
    raise ValueError(f"config.mesh.axes must include a 'data' axis, got {tuple(config.mesh.axes)}")
  _validate_sharded_embedding(config)
  _validate_splits(config)


def _validate_splits(config: ConfigDict) -> None:
  """Checks the optional `config.data.valid_fraction` (absent = 0, no validation split) and
  `config.train.eval_split` (absent = "test"); the trainer checks that the split exists in the data."""
  fraction = config.data.get("valid_fraction", ADDED_KEYS["data.valid_fraction"])
  check_valid_fraction(fraction)
  split = config.train.get("eval_split", ADDED_KEYS["train.eval_split"])
  if not isinstance(split, str) or not split:
    raise ValueError(f"config.train.eval_split must be a split name such as 'test' or 'valid', got {split!r}")
  if split == "valid" and not fraction:
    raise ValueError("config.train.eval_split='valid' needs a validation split: set config.data.valid_fraction "
                     "> 0 (the share of the training requests moved into it)")


def _validate_sharded_embedding(config: ConfigDict) -> None:
  """Checks the optional row-sharding keys of `config.embedding` (absent = not sharded)."""
  emb = config.embedding
  if not isinstance(emb.get("sharded", False), bool):
    raise ValueError(f"config.embedding.sharded must be a bool, got {emb.sharded!r}")
  if not emb.get("sharded", False):
    return
  axes = emb.get("shard_axes", ("model",))
  if not isinstance(axes, (tuple, list)) or not axes or len(set(axes)) != len(axes):
    raise ValueError(f"config.embedding.shard_axes must be a non-empty tuple of distinct mesh axes, got {axes!r}")
  if any(a not in config.mesh.axes for a in axes):
    raise ValueError(f"config.embedding.shard_axes {tuple(axes)} must be axes of config.mesh.axes "
                     f"{tuple(config.mesh.axes)}")
  if emb.get("placement", "mod") not in PLACEMENTS:
    raise ValueError(f"config.embedding.placement must be one of {PLACEMENTS}, got {emb.placement!r}")
  if emb.get("routing", "gather") not in ROUTINGS:
    raise ValueError(f"config.embedding.routing must be one of {ROUTINGS}, got {emb.routing!r}")
  factor = emb.get("capacity_factor", 0.0)
  if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor < 0:
    raise ValueError(f"config.embedding.capacity_factor must be a number >= 0, got {factor!r}")
  below = emb.get("replicate_below", 0)
  if not isinstance(below, int) or isinstance(below, bool) or below < 0:
    raise ValueError(f"config.embedding.replicate_below must be an int >= 0, got {below!r}")


def from_file(path: str) -> ConfigDict:
  """`get_config()` of the Python config file at `path` (as `train.py --config` reads it)."""
  spec = importlib.util.spec_from_file_location("cascadejax_config", path)
  if spec is None or spec.loader is None:
    raise FileNotFoundError(f"cannot load config file {path!r}")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def save(config: ConfigDict, workdir: str) -> None:
  """Writes `workdir/config.json`."""
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json(indent=2, sort_keys=True))


def load(workdir: str) -> ConfigDict:
  """Reads `workdir/config.json` back into a ConfigDict (JSON lists become tuples)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir!r} a cascadejax workdir (made by train.py)?")
  with open(path) as f:
    return ConfigDict(plain(json.load(f)))


# Keys added after runs were already being saved, with the value that reproduces what a run saved
# before them did: a saved config without such a key is read as holding this value, so adding an
# option never makes an old workdir (or a comparison's finished runs) unresumable.
ADDED_KEYS = {
    "embedding.sharded": False, "embedding.shard_axes": ("model",), "embedding.placement": "mod",
    "embedding.routing": "gather", "embedding.replicate_below": 100_000, "embedding.capacity_factor": 0.0,
    "data.valid_fraction": 0.0, "train.eval_split": "test",
}


def differing_keys(saved: ConfigDict | dict, current: ConfigDict | dict) -> list[str]:
  """Sorted flattened keys whose values differ between a saved and a current config (`ADDED_KEYS`
  missing from either count as their listed value: config files need not spell them out either)."""
  a, b = {**ADDED_KEYS, **flatten(saved)}, {**ADDED_KEYS, **flatten(current)}
  return sorted(k for k in set(a) | set(b) if a.get(k, "<missing>") != b.get(k, "<missing>"))


def check_resumable(saved: ConfigDict, current: ConfigDict, workdir: str) -> list[str]:
  """Compares a workdir's saved config with the current one.

  Returns:
    The keys that differ but are allowed to (see `RESUMABLE_CHANGES`).

  Raises:
    ValueError: listing every other differing key, since resuming would mix two experiments.
  """
  a, b = {**ADDED_KEYS, **flatten(saved)}, {**ADDED_KEYS, **flatten(current)}
  changed = differing_keys(saved, current)
  bad = [k for k in changed if k not in RESUMABLE_CHANGES]
  if bad:
    lines = "\n".join(f"  config.{k}: {a.get(k, '<missing>')!r} in the workdir, {b.get(k, '<missing>')!r} now"
                      for k in bad)
    raise ValueError(f"{workdir} holds a run with a different config; resuming would mix two "
                     f"experiments. Use a new --workdir, or restore these values:\n{lines}")
  return changed
