"""The run's config: every section parsed and checked before anything is built, and workdir I/O.

`validate(config)` parses each section into the frozen dataclass of the layer that owns it
(`DataSection`, `CascadeSection`, `EmbeddingSection`, the method, `OptimizerSection`, `TrainSection`,
`MeshSection`, `RerankSection`, `MultitaskSection`), runs the checks that span sections, and returns them all as
`Sections`. Defaults live in those dataclasses only; `ADDED_KEYS` is derived from them. Every error
names the offending key as it is written on the command line (`config.cascade.prerank.k`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from typing import Any

from ml_collections import ConfigDict

from cascadejax import data as data_lib
from cascadejax.cascade import RETRIEVAL_MODELS, CascadeSection
from cascadejax.corpus.evaluation import CorpusSection
from cascadejax.embedding.collection import EmbeddingSection
from cascadejax import models
from cascadejax.mesh import MeshSection
from cascadejax.multitask import MultitaskSection
from cascadejax.methods import METHODS, CascadeMethod, get_method
from cascadejax.optimizer import OptimizerSection
from cascadejax.rerank import RerankSection
from cascadejax import faults, files
from cascadejax.sections import Section, flatten, plain

# Keys a resumed run may change without changing what it computes (train.steps changes the
# learning-rate schedule's length, which is the user's explicit choice; mesh.shape moves the run
# to another device count, `Experiment.restore`).
# Moving a run's days forward (train on days < t, test on day t, move t) continues it on the new days;
# the vocabularies (`data.vocab_days`) and so the tables' sizes must stay.
NEW_DATA_KEYS = ("data.train_days", "data.files")
# Keys that change how a run executes, never its results (K steps per dispatch and the split on device
# are bit-identical to one step per call, tests/test_steps_per_call.py): a comparison's finished runs
# stay comparable when they change (`cascadejax.compare`).
EXECUTION_KEYS = ("train.steps_per_call", "data.on_device", "train.progress_bar")
RESUMABLE_CHANGES = ("train.steps", "train.log_every", "train.eval_every", "train.eval_batch_size",
                     "train.checkpoint_every", "train.keep_checkpoints", "mesh.shape", *EXECUTION_KEYS,
                     *NEW_DATA_KEYS, "data.test_days")


@dataclasses.dataclass(frozen=True)
class TrainSection(Section):
  """`config.train`: the training loop's batch sizes, length, logging, evaluation and checkpoints.

  Attributes:
    batch_size, eval_batch_size: global batch sizes (divisible by the mesh's data axis).
    steps: train steps of the whole run.
    log_every, eval_every, checkpoint_every: periods in steps (eval_every 0 = only the final one).
    keep_checkpoints: how many recent checkpoints to keep.
    progress_bar: show a tqdm bar on the main process.
    eval_split: the split the periodic and final evaluations read ("valid" needs
      `config.data.valid_fraction` > 0).
    steps_per_call: train steps run inside one jitted call (`lax.scan` over that many batches,
      `Experiment.train_steps`), to take the host's per-step dispatch out of the loop; results are
      bit for bit those of 1, and logs, evaluations and checkpoints still fall on their own steps.
  """

  KEY = "train"
  ADDED = ("progress_bar", "eval_split", "steps_per_call")
  batch_size: int
  steps: int
  log_every: int
  eval_every: int
  eval_batch_size: int
  checkpoint_every: int
  keep_checkpoints: int
  progress_bar: bool = True
  eval_split: Any = "test"  # a split name, checked below
  steps_per_call: int = 1

  def check(self) -> None:
    for key in ("batch_size", "steps", "log_every", "eval_batch_size", "checkpoint_every", "keep_checkpoints",
                "steps_per_call"):
      if getattr(self, key) < 1:
        raise ValueError(f"config.train.{key} must be >= 1, got {getattr(self, key)}")
    if self.eval_every < 0:
      raise ValueError(f"config.train.eval_every must be >= 0 (0 = only the final evaluation), got {self.eval_every}")
    if not isinstance(self.eval_split, str) or not self.eval_split:
      raise ValueError(f"config.train.eval_split must be a split name such as 'test' or 'valid', got "
                       f"{self.eval_split!r}")


SECTIONS: tuple[type[Section], ...] = (data_lib.DataSection, EmbeddingSection, OptimizerSection, TrainSection,
                                       MeshSection, RerankSection, MultitaskSection, CorpusSection)


@dataclasses.dataclass(frozen=True)
class Sections:
  """Every section of a validated config (`validate`)."""

  seed: int
  data: data_lib.DataSection
  cascade: CascadeSection
  embedding: EmbeddingSection
  method: CascadeMethod
  optimizer: OptimizerSection
  train: TrainSection
  mesh: MeshSection
  rerank: RerankSection
  multitask: MultitaskSection
  corpus: CorpusSection


def _section(config: ConfigDict, key: str) -> ConfigDict:
  if key not in config or not isinstance(config[key], (ConfigDict, dict)):
    raise ValueError(f"config is missing required key config.{key} (a section)")
  return config[key]


def validate(config: ConfigDict) -> Sections:
  """Parses and checks every section of `config`, and the checks that span sections; returns them.

  Raises:
    ValueError: naming the first key of `config` that cannot work: a missing or ill-typed key,
      unknown options, stage definitions (known model and hyperparameters, each k smaller than the
      candidates the stage receives, `gt_num <= k_S`), the method, the optimizer, the mesh, the
      sharded-table axes, the evaluation split and the re-ranking stage.
  """
  seed = config.get("seed", None)
  if not isinstance(seed, int) or isinstance(seed, bool):
    raise ValueError(f"config.seed must be of type int, got {seed!r}")
  data = data_lib.DataSection.parse(_section(config, "data"))
  cascade = CascadeSection.parse(_section(config, "cascade"), data.list_size)
  data_lib.check_config(config.data, len(cascade.stages))
  embedding = EmbeddingSection.parse(_section(config, "embedding"))
  method_section = _section(config, "method")
  if not isinstance(method_section.get("name", None), str):
    raise ValueError(f"config.method.name must be of type str, got {method_section.get('name', None)!r}")
  method = get_method(config)  # raises on unknown names or options
  optimizer = OptimizerSection.parse(_section(config, "optimizer"))
  train = TrainSection.parse(_section(config, "train"))
  mesh = MeshSection.parse(_section(config, "mesh"))
  rerank = RerankSection.parse(config.get("rerank", None))
  rerank.check_cascade(cascade.stages[-1].k)
  multitask = MultitaskSection.parse(config.get("multitask", None))
  with_tasks = [s.name for s in cascade.stages if hasattr(type(models.get_model(s.model, dict(s.model_kwargs))), "outputs")]
  if multitask.weight and not with_tasks:
    raise ValueError(f"config.multitask.weight={multitask.weight} trains the task heads of multi-task stages, but "
                     f"no stage model has any (config.cascade.<stage>.model, e.g. 'mmoe')")
  if embedding.sharded and any(a not in mesh.axes for a in embedding.shard_axes):
    raise ValueError(f"config.embedding.shard_axes {embedding.shard_axes} must be axes of config.mesh.axes "
                     f"{mesh.axes}")
  if train.eval_split == "valid" and not data.valid_fraction:
    raise ValueError("config.train.eval_split='valid' needs a validation split: set config.data.valid_fraction "
                     "> 0 (the share of the training requests moved into it)")
  corpus = CorpusSection.parse(config.get("corpus", None))
  first = cascade.stages[0]
  for key, on in (("evaluate", corpus.evaluate), ("negatives", corpus.negatives != "none")):
    if on and first.model not in RETRIEVAL_MODELS:
      raise ValueError(f"config.corpus.{key} retrieves from the corpus with the first stage, but "
                       f"config.cascade.{first.name}.model={first.model!r} is not one of {RETRIEVAL_MODELS}")
  return Sections(seed=seed, data=data, cascade=cascade, embedding=embedding, method=method, optimizer=optimizer,
                  train=train, mesh=mesh, rerank=rerank, multitask=multitask, corpus=corpus)


def from_file(path: str) -> ConfigDict:
  """`get_config()` of the Python config file at `path` (as `train.py --config` reads it: "file.py",
  or "file.py:argument" to pass `argument` to `get_config`, e.g. `configs/corpus.py:three_stage`)."""
  path, *args = path.split(":", 1)
  spec = importlib.util.spec_from_file_location("cascadejax_config", path)
  if spec is None or spec.loader is None:
    raise FileNotFoundError(f"cannot load config file {path!r}")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


def save(config: ConfigDict, workdir: str) -> None:
  """Writes `workdir/config.json` atomically (`files.write_atomic`), unless it already holds `config`.

  A resume with the same config leaves the file untouched; one with allowed changes
  (`RESUMABLE_CHANGES`, e.g. new days) replaces it whole, so a kill or a full disk leaves the old file
  or the new one, never an empty or half-written one.
  """
  path = os.path.join(workdir, "config.json")
  text = config.to_json(indent=2, sort_keys=True)
  if os.path.exists(path):
    with open(path) as f:
      if f.read() == text:
        return
  files.write_atomic(path, text, midway=lambda: faults.point("config_write"))


def load(workdir: str) -> ConfigDict:
  """Reads `workdir/config.json` back into a ConfigDict (JSON lists become tuples).

  Raises:
    FileNotFoundError: if there is none.
    ValueError: naming the file and what to do, if it is empty or not JSON.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir!r} a cascadejax workdir (made by train.py)?")
  with open(path, "rb") as f:
    raw = f.read()
  try:
    return ConfigDict(plain(json.loads(raw.decode())))
  except (UnicodeDecodeError, json.JSONDecodeError) as err:
    what = "is empty" if not raw.strip() else f"is not valid JSON ({err})"
    raise ValueError(f"{path} {what}: the run's config was damaged. Its checkpoints are intact: restore "
                     "config.json from a copy, or delete it and run train.py again with the run's original "
                     "--config and overrides (each checkpoint records its config and refuses a different one)"
                     ) from None


# Keys added after runs were already being saved, with the value that reproduces what a run saved
# before them did (each section's `ADDED` keys at their defaults): a saved config without such a key
# is read as holding this value, so adding an option never makes an old workdir (or a comparison's
# finished runs) unresumable.
ADDED_KEYS = {k: v for section in SECTIONS for k, v in section.added_keys().items()}


def comparable(config: ConfigDict | dict) -> dict[str, Any]:
  """`config` flattened as runs are compared: `ADDED_KEYS` missing from it at their listed value, and
  of `config.method` only the name and the run's own method's options, defaults filled in (the
  options of the other methods do not change the run, and an option added to a method later holds
  its default, which computes what the method did before it existed)."""
  flat = {**ADDED_KEYS, **flatten(config)}
  name = flat.get("method.name")
  if name not in METHODS:
    return flat
  options = {**METHODS[name].defaults, **{k[len(f"method.{name}."):]: v for k, v in flat.items()
                                          if k.startswith(f"method.{name}.")}}
  flat = {k: v for k, v in flat.items() if not k.startswith("method.") or k == "method.name"}
  return {**flat, **{f"method.{name}.{k}": plain(v) for k, v in options.items()}}


def differing_keys(saved: ConfigDict | dict, current: ConfigDict | dict) -> list[str]:
  """Sorted flattened keys whose values differ between a saved and a current config (`comparable`:
  added keys at their defaults, only the run's own method's options)."""
  a, b = comparable(saved), comparable(current)
  return sorted(k for k in set(a) | set(b) if a.get(k, "<missing>") != b.get(k, "<missing>"))


def check_resumable(saved: ConfigDict, current: ConfigDict, workdir: str) -> list[str]:
  """Compares a workdir's saved config with the current one.

  Returns:
    The keys that differ but are allowed to (see `RESUMABLE_CHANGES`).

  Raises:
    ValueError: listing every other differing key, since resuming would mix two experiments.
  """
  a, b = comparable(saved), comparable(current)
  changed = differing_keys(saved, current)
  bad = [k for k in changed if k not in RESUMABLE_CHANGES]
  if bad:
    lines = "\n".join(f"  config.{k}: {a.get(k, '<missing>')!r} in the workdir, {b.get(k, '<missing>')!r} now"
                      for k in bad)
    raise ValueError(f"{workdir} holds a run with a different config; resuming would mix two "
                     f"experiments. Use a new --workdir, or restore these values:\n{lines}")
  return changed
