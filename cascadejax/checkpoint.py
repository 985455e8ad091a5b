"""Checkpoints (orbax): the train state and the input pipeline's position, saved together.

A checkpoint directory holds `<step>/state` (parameters, optimizer state, step) and `<step>/data`
(the grain iterator's position), written atomically: a run killed mid-save leaves the previous
checkpoint intact, and a restored run continues with exactly the batches it would have seen.
"""

from __future__ import annotations

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
           force: bool = False) -> bool:
    """Saves (asynchronously) if `step` is on the interval or `force`; returns whether it saved."""
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, abstract_state: Any, data_iterator: grain.DatasetIterator | None = None,
              step: int | None = None) -> Any:
    """Restores the state (onto the shardings of `abstract_state`) and the iterator's position.

    Args:
      abstract_state: a pytree of `jax.ShapeDtypeStruct` with shardings, shaped like the state.
      data_iterator: if given, set to the saved position.
      step: the checkpoint to restore (default: the latest).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    return self._manager.restore(step, args=ocp.args.Composite(**items))["state"]

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager's threads."""
    self._manager.close()


def abstract(tree: Any) -> Any:
  """`jax.ShapeDtypeStruct`s (with shardings) mirroring a pytree of arrays."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)
