"""Checkpoints (orbax): the train state and the input pipeline's position, saved together.

A checkpoint directory holds `<step>/state` (parameters, optimizer state, step), `<step>/data`
(the grain iterator's position, one file per process) and `<step>/layout` (how the state was laid
out: device and process counts, shards of row-sharded tables), written atomically: a run killed
mid-save leaves the previous checkpoint intact, and a restored run continues with exactly the
batches it would have seen.

Every step is verified: once orbax has finished writing it, a background thread hashes every file
of the step (state arrays, input position, layout) into `<step>/checksums.json`, with the run's
config; that file, written atomically and last, marks a complete verified step. Restoring checks the
hashes (`Checkpointer.intact_step`): a damaged or unfinished newest step is skipped with a warning
naming the step and the file, and the newest intact one restores instead; damaged values are never
restored. Steps written before checksums existed restore unverified, with a warning. A save that
fails (a full disk, no permission), even inside orbax's threads, stops the run from the main thread
with `CheckpointSaveError`, naming the directory, its free space and the last intact step.

Checkpoints move between device and process counts. orbax reads every array onto the shardings it
is asked for (`Experiment.restore` converts row-sharded tables whose layout depends on the shard
count), and the input position is the same in every process (batch t is a function of the seed
and t, `cascadejax.data.pipeline`), so a run saved by n processes resumes in m.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import threading
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from cascadejax import faults
from cascadejax.checksums import read_checksums, verify_step, write_checksums

_BAD_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO)


class CheckpointSaveError(OSError):
  """A checkpoint could not be written (disk full, no permission...); the message says where and what
  is kept."""


class Checkpointer:
  """Saves every `every` steps, keeps the last `keep`, restores the newest intact (or a given) step.

  Args:
    directory: where checkpoints live (created if missing).
    every: save interval in steps (`save(..., force=True)` saves regardless).
    keep: number of checkpoints kept.
    config: the run's config (JSON-able), recorded with every step it saves (`recorded_config`).
  """

  def __init__(self, directory: str, *, every: int = 1, keep: int = 3, config: dict[str, Any] | None = None):
    self.directory = os.path.abspath(directory)
    self.every, self.config = every, config
    self.restored_step: int | None = None  # the step `restore` read, for `trainer._check_finite`
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    self._checked: dict[int, tuple[str, str]] = {}  # step -> `verify_step` result
    self._warned: set[int] = set()  # unverified steps already named in a warning
    self._hashing: threading.Thread | None = None
    self._hash_error: BaseException | None = None

  def latest_step(self) -> int | None:
    """The newest step orbax finished writing (maybe not yet verified), or None."""
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_iterator: grain.DatasetIterator | None = None, *,
           layout: dict[str, Any] | None = None, config: dict[str, Any] | None = None, force: bool = False) -> bool:
    """Saves (asynchronously) if `step` is on the interval or `force`; returns whether it saved.

    Args:
      step: the checkpoint's step.
      state: a pytree of (possibly sharded) arrays.
      data_iterator: the input iterator whose position is saved with the state.
      layout: JSON-able facts about how `state` is laid out (read back with `layout`).
      config: the run's config (JSON-able) to record with the step (default: the checkpointer's).
      force: save even off the interval.

    Raises:
      CheckpointSaveError: if this or the previous save failed in the file layer.
    """
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    if layout is not None:
      items["layout"] = ocp.args.JsonSave(layout)
    self.wait()
    with self._failures(step):
      saved = self._manager.save(step, args=ocp.args.Composite(**items), force=force)
    if saved:
      faults.point("inside_save", step)
      self._hashing = threading.Thread(target=self._hash_when_written, args=(step, config or self.config), daemon=True,
                                       name=f"checksums_{step}")
      self._hashing.start()
    return saved

  def _hash_when_written(self, step: int, config: dict[str, Any] | None) -> None:
    """Waits for orbax to finish `step`, then writes its checksums (process 0; errors kept for `wait`)."""
    try:
      self._manager.wait_until_finished()
      if jax.process_index() == 0 and step in self._manager.all_steps():
        faults.point("before_checksums", step)
        write_checksums(os.path.join(self.directory, str(step)), step, config)
        self._checked[step] = ("ok", "")
    except BaseException as err:  # re-raised on the main thread by `wait`
      self._hash_error = err

  @property
  def _step_being_written(self) -> int | None:
    return int(self._hashing.name.rpartition("_")[2]) if self._hashing is not None else None

  def _failures(self, step: int | None):
    return _SaveFailures(self, step)

  def wait(self) -> None:
    """Blocks until pending saves are on disk and verified.

    Raises:
      CheckpointSaveError: if a save failed in the file layer (e.g. inside orbax's threads).
    """
    step = self._step_being_written
    with self._failures(step):
      if self._hashing is not None:
        self._hashing.join()
        self._hashing = None
      self._manager.wait_until_finished()
      if self._hash_error is not None:
        err, self._hash_error = self._hash_error, None
        raise err

  def close(self) -> None:
    """Waits for pending saves and releases the manager's threads."""
    self.wait()
    self._manager.close()

  # ---- verification ----
  def steps(self) -> list[int]:
    """The steps orbax finished writing, newest first."""
    return sorted(self._manager.all_steps(), reverse=True)

  def check(self, step: int) -> tuple[str, str]:
    """`verify_step` of one step (remembered for this checkpointer's life)."""
    if step not in self._checked:
      self._checked[step] = verify_step(os.path.join(self.directory, str(step)))
    return self._checked[step]

  def intact_step(self) -> int | None:
    """The newest verified step; steps above it are reported in a warning naming the step and the
    file. If no step has checksums (a directory written before they existed), the newest step
    (unverified, with a warning); None if there is no usable step."""
    steps = self.steps()
    if steps and all(self.check(s)[0] == "unverified" for s in steps):
      logging.warning("no checkpoint in %s has checksums (written before they existed, or cut off before "
                      "them): restoring step %d unverified", self.directory, steps[0])
      self._warned.add(steps[0])
      return steps[0]
    for step in steps:
      status, detail = self.check(step)
      if status == "ok":
        return step
      logging.warning("checkpoint step %d in %s is %s (%s): it is not restored; trying the previous step",
                      step, self.directory, status, detail)
    return None

  def set_aside(self, newer_than: int) -> list[str]:
    """Moves the steps after `newer_than` (damaged or unverified ones that `intact_step` skipped) to
    `<directory>.set_aside/` (process 0; every process then rereads the directory), so training can
    write those steps again; returns where they went."""
    moved = []
    for step in (s for s in self.steps() if s > newer_than and jax.process_index() == 0):
      target = os.path.join(self.directory + ".set_aside", str(step))
      while os.path.exists(target):
        target += "+"
      os.makedirs(os.path.dirname(target), exist_ok=True)
      os.rename(os.path.join(self.directory, str(step)), target)
      logging.warning("checkpoint step %d (not intact) moved to %s", step, target)
      moved.append(target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("cascadejax_checkpoint_set_aside")
    self._checked = {s: v for s, v in self._checked.items() if s <= newer_than}
    self._manager.reload()
    return moved

  def recorded_config(self, step: int) -> dict[str, Any] | None:
    """The config recorded with `step` (None for a step without checksums or config)."""
    return read_checksums(os.path.join(self.directory, str(step))).get("config")

  # ---- reading ----
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
      step: the checkpoint to restore (default: the newest intact one, `intact_step`).

    Raises:
      FileNotFoundError: if there is no checkpoint, or none intact.
      ValueError: naming the step and the file, if `step` fails verification.
    """
    chosen = self.intact_step() if step is None else step
    if chosen is None:
      raise FileNotFoundError(f"no intact checkpoint in {self.directory} "
                              f"(steps {self.steps()}; python -m cascadejax.evaluate --verify says why)")
    step, (status, detail) = chosen, self.check(chosen)
    if status == "damaged":
      raise ValueError(f"checkpoint step {step} in {self.directory} is damaged ({detail}); restore another "
                       f"step (python -m cascadejax.evaluate --verify lists them)")
    if status == "unverified" and step not in self._warned:
      self._warned.add(step)
      logging.warning("checkpoint step %d in %s is unverified (%s)", step, self.directory, detail)
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
    self.restored_step = step
    return state


class _SaveFailures:
  """Turns a file-layer failure of a save (any exception caused by ENOSPC, EACCES...) into a
  `CheckpointSaveError` naming the directory, its free space and the last intact step."""

  def __init__(self, checkpointer: Checkpointer, step: int | None):
    self.checkpointer, self.step = checkpointer, step

  def __enter__(self):
    return self

  def __exit__(self, kind, err, tb):
    if err is None or isinstance(err, CheckpointSaveError) or not _file_failure(err):
      return False
    c = self.checkpointer
    try:
      free = f"{shutil.disk_usage(c.directory).free / 2**20:,.1f} MiB free"
    except OSError as e:
      free = f"free space unknown ({e})"
    c._hashing, c._hash_error = None, None
    c._manager.reload()
    intact = [s for s in c.steps() if s != self.step and c.check(s)[0] == "ok"]
    kept = f"the last intact checkpoint, step {intact[0]}, is kept" if intact else "no intact checkpoint is kept"
    raise CheckpointSaveError(
        f"saving checkpoint step {self.step} to {c.directory} failed: {err} ({free} there); {kept}. Free "
        "space (or fix the permissions) and run the same command again to resume") from err


def _file_failure(err: BaseException) -> bool:
  """Whether `err` (or what caused it) is the file layer refusing a write."""
  seen = set()
  while err is not None and id(err) not in seen:
    seen.add(id(err))
    if isinstance(err, OSError) and err.errno in _BAD_ERRNOS:
      return True
    if any(text in str(err) for text in ("No space left", "Permission denied", "Disk quota", "Read-only file")):
      return True
    err = err.__cause__ or err.__context__
  return False


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
