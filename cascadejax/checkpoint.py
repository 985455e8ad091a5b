"""Checkpoints (orbax): the train state and the input pipeline's position, saved together.

A checkpoint directory holds `<step>/state` (parameters, optimizer state, step), `<step>/data`
(the grain iterator's position, one file per process) and `<step>/layout` (how the state was laid
out: device and process counts, shards of row-sharded tables), written atomically: a run killed
mid-save leaves the previous checkpoint intact, and a restored run continues with exactly the
batches it would have seen.

Checkpoints move between device and process counts. orbax reads every array onto the shardings it
is asked for (`Experiment.restore` converts row-sharded tables whose layout depends on the shard
count), and the input position is the same in every process (batch t is a function of the seed
and t, `cascadejax.data.pipeline`), so a run saved by n processes resumes in m.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves every `every` steps, keeps the last `keep`, restores the latest (or a given) step.

  Args:
    directory: where checkpoints live (created if missing).
    every: save interval in steps (`save(..., force=True)` saves regardless).
    keep: number of checkpoints kept.
  """

  def __init__(self, directory: str, *, every: int = 1, keep: int = 3):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None."""
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_iterator: grain.DatasetIterator | None = None, *,
           layout: dict[str, Any] | None = None, force: bool = False) -> bool:
    """Saves (asynchronously) if `step` is on the interval or `force`; returns whether it saved.

    Args:
      step: the checkpoint's step.
      state: a pytree of (possibly sharded) arrays.
      data_iterator: the input iterator whose position is saved with the state.
      layout: JSON-able facts about how `state` is laid out (read back with `layout`).
      force: save even off the interval.
    """
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    if layout is not None:
      items["layout"] = ocp.args.JsonSave(layout)
    return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

  def _step(self, step: int | None) -> int:
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    return step

  def layout(self, step: int | None = None) -> dict[str, Any] | None:
    """The `layout` saved with a checkpoint (default: the latest), or None if it has none."""
    path = os.path.join(self.directory, str(self._step(step)), "layout", "metadata")
    if not os.path.exists(path):
      return None
    with open(path) as f:
      return json.load(f)

  def restore(self, abstract_state: Any, data_iterator: grain.DatasetIterator | None = None,
              step: int | None = None) -> Any:
    """Restores the state (onto the shardings of `abstract_state`) and the iterator's position.

    Args:
      abstract_state: a pytree of `jax.ShapeDtypeStruct` with shardings, shaped like the state.
      data_iterator: if given, set to the saved position.
      step: the checkpoint to restore (default: the latest).
    """
    step = self._step(step)
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    data = os.path.join(self.directory, str(step), "data")
    mine = os.path.join(data, f"process_{jax.process_index()}-of-{jax.process_count()}.json")
    same_processes = os.path.exists(mine)
    if data_iterator is not None and same_processes:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    state = self._manager.restore(step, args=ocp.args.Composite(**items))["state"]
    if data_iterator is not None and not same_processes:
      data_iterator.set_state(_shared_position(data))
      getattr(data_iterator, "start_prefetch", lambda: None)()  # as grain's own restore does
    return state

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager's threads."""
    self._manager.close()


def _shared_position(directory: str) -> dict[str, Any]:
  """The iterator state every process saved in `directory` (saved by another process count)."""
  files = sorted(glob.glob(os.path.join(directory, "process_*-of-*.json")))
  if not files:
    raise FileNotFoundError(f"{directory} holds no input position (process_*-of-*.json)")
  states = {}
  for path in files:
    with open(path) as f:
      states[path] = json.load(f)
  if any(v != states[files[0]] for v in states.values()):
    raise ValueError(f"the processes saved different input positions in {directory} "
                     f"({sorted(set(map(json.dumps, states.values())))}); it can only resume with "
                     "the process count that saved it")
  return states[files[0]]


def abstract(tree: Any) -> Any:
  """`jax.ShapeDtypeStruct`s (with shardings) mirroring a pytree of arrays."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)
