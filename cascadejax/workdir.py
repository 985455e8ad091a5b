"""What every command that reads a run shares: its saved config, its final report, its checkpoint
restored into an `Experiment`, and the flags that name them (`--workdir`, `--step`, `--mesh_shape`).

A workdir is what `train.py --workdir W` writes: `W/config.json`, `W/checkpoints/`, `W/metrics.jsonl`
and `W/tensorboard/`. The commands (`cascadejax.evaluate`, `cascadejax.export`,
`cascadejax.compare`) register their flags only when run as programs (each one's `define_flags`),
so importing them as libraries, e.g. `export.load` in a serving binary with its own `--workdir`,
registers none and cannot collide with the importer's flags.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import jax
from absl import flags
from ml_collections import ConfigDict

from cascadejax import configuration, metric_writer, mesh as mesh_lib
from cascadejax.checkpoint import Checkpointer
from cascadejax.experiment import Experiment
from cascadejax.steps import TrainState


def saved_config(workdir: str) -> ConfigDict | None:
  """The config `workdir` was trained with (`workdir/config.json`), or None if it holds no run yet."""
  if not os.path.exists(os.path.join(workdir, "config.json")):
    return None
  return configuration.load(workdir)


def final_report(workdir: str) -> dict[str, Any] | None:
  """The last final evaluation report (`"final": true`) of `workdir/metrics.jsonl`, or None if the run
  has not finished (or has not started)."""
  if not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
    return None
  finals = [line for line in metric_writer.read(workdir) if line.get("final")]
  return finals[-1] if finals else None


def restore(workdir: str, step: int | None = None, mesh_shape: tuple[int, ...] | None = None, *,
            devices: Sequence[jax.Device] | None = None) -> tuple[Experiment, TrainState]:
  """`(experiment, state)` of a workdir's checkpoint (latest unless `step` is given).

  Args:
    workdir: a workdir written by train.py.
    step: the checkpoint's step (default: the latest).
    mesh_shape: overrides the saved `config.mesh.shape`, to read a checkpoint on another device
      count, e.g. `(1, 1)` for one written on a (2 data x 4 model) mesh (`Experiment.restore`).
    devices: the devices to lay the mesh over (default: all of this process's).

  Raises:
    FileNotFoundError: if the workdir holds no config or no checkpoint.
    ValueError: for a saved mesh this machine's devices cannot hold (the message names
      `--mesh_shape`), or another bad config key.
  """
  config = configuration.load(workdir)
  if mesh_shape is not None:
    config.mesh.shape = tuple(mesh_shape)
  directory = os.path.join(workdir, "checkpoints")
  checkpointer = Checkpointer(directory)
  if checkpointer.latest_step() is None:
    raise FileNotFoundError(f"no checkpoint in {directory}: train first with train.py --workdir {workdir}")
  try:
    configuration.validate(config)
    exp = Experiment.build(config, mesh_lib.make_mesh(config.mesh, devices))
  except ValueError as e:
    if "config.mesh.shape" not in str(e):
      raise
    raise ValueError(f"{e}; the checkpoint in {directory} can be read on this machine's devices with "
                     "--mesh_shape (e.g. --mesh_shape=1,1 or -1)") from e
  state = exp.restore(checkpointer, step=step)
  checkpointer.close()
  return exp, state


def mesh_shape_arg(text: str) -> tuple[int, ...]:
  """Parses a `--mesh_shape` flag: comma-separated axis sizes, e.g. "1,1" or "-1,4".

  Raises:
    ValueError: naming the flag, for anything but comma-separated ints.
  """
  try:
    return tuple(int(v) for v in text.split(","))
  except ValueError:
    raise ValueError(f"--mesh_shape expects comma-separated ints, got {text!r}") from None


class MeshShapeParser(flags.ArgumentParser):
  """absl parser of `--mesh_shape` values (`mesh_shape_arg`); a bad value fails flag parsing."""

  def parse(self, argument: str | Sequence[int]) -> tuple[int, ...]:
    """`"2,4"` -> `(2, 4)`; a sequence of ints (a default set in code) is taken as it is."""
    return mesh_shape_arg(argument) if isinstance(argument, str) else tuple(int(v) for v in argument)

  def flag_type(self) -> str:
    """The type shown in `--help`."""
    return "comma-separated ints"


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Registers the flags of a command that reads a workdir: `--workdir` (required), `--step` and
  `--mesh_shape`. Called by the commands' `define_flags`, only when they run as programs."""
  flags.DEFINE_string("workdir", None, "A workdir written by train.py.", flag_values=flag_values)
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).", flag_values=flag_values)
  flags.DEFINE(MeshShapeParser(), "mesh_shape", None,
               "Mesh axis sizes overriding the saved config.mesh.shape, e.g. 1,1 or -1,4, to read a checkpoint "
               "written on more devices than this machine has (default: as saved; docs/sharding.md).",
               flag_values=flag_values, serializer=flags.ListSerializer(","))
  flags.mark_flag_as_required("workdir", flag_values=flag_values)
