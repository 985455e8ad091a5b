"""`train_and_evaluate(config, workdir)`: the training loop.

Read top to bottom: workdir and config, experiment (mesh, data, model, optimizer, sharding, steps),
input iterator, checkpoint (restore if the workdir holds one), loop (step, log, evaluate, save),
final evaluation. A run killed at any point and started again with the same command resumes from
its last checkpoint and ends with exactly the metrics of an uninterrupted run.
"""

from __future__ import annotations

import json
import logging as py_logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging
from jax.sharding import Mesh
from ml_collections import ConfigDict
from tqdm import tqdm

from cascadejax import configuration, faults, mesh as mesh_lib, workdir as workdir_lib, workdir_lock
from cascadejax.checkpoint import Checkpointer
from cascadejax.data import pipeline
from cascadejax.experiment import Experiment
from cascadejax.steps import TrainState
from cascadejax.metric_writer import MetricWriter


def _quiet(record: py_logging.LogRecord) -> bool:
  return record.levelno >= py_logging.WARNING or not any(
      f"/{lib}/" in record.pathname for lib in ("orbax", "grain"))


def quiet_library_logs() -> None:
  """Drops the per-save INFO lines of orbax and grain from absl's log; their warnings still show."""
  logging.get_absl_handler().addFilter(_quiet)


@jax.jit
def accumulate(sums: dict[str, jax.Array] | None, metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """`sums + metrics` key by key in one dispatch (eager per-key adds cost twice the host time)."""
  return metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN or infinite loss, gradient or gradient norm at (1-based) `step`."""

  def __init__(self, message: str, step: int):
    super().__init__(message)
    self.step = step


def _check_finite(state: TrainState, checkpointer: Checkpointer) -> None:
  bad = int(jax.device_get(state.nonfinite_step))
  if bad >= 0:
    checkpointer.wait()
    last = checkpointer.latest_step()
    kept = (f"The last good checkpoint (step {last}) is kept in {checkpointer.directory}. " if last is not None
            else "No checkpoint was saved before it (see config.train.checkpoint_every). ")
    restored = checkpointer.restored_step
    if restored is not None and bad + 1 - restored <= checkpointer.every:
      workdir = os.path.dirname(checkpointer.directory)
      kept = (f"This run resumed from step {restored} only {bad + 1 - restored} step(s) before: the restored "
              f"checkpoint may be damaged (check every step with python -m cascadejax.evaluate --verify "
              f"--workdir {workdir}). The last checkpoint (step {last}) is kept in {checkpointer.directory}. ")
    raise NonFiniteLossError(
        f"non-finite loss or gradient at step {bad + 1} (or a gradient norm above float32's range, about "
        f"1.8e19); training stopped and that update was not applied. {kept}"
        "Lower config.optimizer.learning_rate, enable config.optimizer.grad_clip, or check the data.", bad + 1)


def _chunk(step: int, cfg: Any) -> int:
  """Steps the next call runs: `cfg.steps_per_call`, unless a log line, evaluation, checkpoint or the
  end falls inside them; then 1 (so every event stays on its own step and only two steps compile)."""
  k = cfg.steps_per_call
  if k == 1:
    return 1
  periods = [p for p in (cfg.log_every, cfg.eval_every, cfg.checkpoint_every) if p]
  next_event = min([cfg.steps] + [(step // p + 1) * p for p in periods])
  return k if next_event - step >= k else 1


def _advance(exp: Experiment, state: TrainState, batches: Any, sums: Any, k: int) -> tuple[TrainState, Any]:
  """`k` train steps on the next `k` batches of `batches`: `(state, running metric sums)`."""
  gather = exp.sections.data.on_device
  if k == 1 and not gather:
    state, metrics = exp.train_step(state, mesh_lib.put_batch(next(batches), exp.mesh))
    return state, accumulate(sums, metrics)
  inputs = exp.stack_batches([next(batches) for _ in range(k)])  # batches, or row indices with on_device
  return exp.train_steps(k)(state, inputs, exp.zero_sums() if sums is None else sums)


def train_and_evaluate(config: ConfigDict, workdir: str, *, mesh: Mesh | None = None) -> dict[str, Any]:
  """Trains the cascade of `config`, evaluating and checkpointing into `workdir`.

  The run holds `workdir`'s lock (`cascadejax.workdir_lock`, one per process) throughout: a second
  run started on the same workdir fails at once (`WorkdirLockedError`) naming this one.

  Args:
    config: a validated-on-entry `ConfigDict` (see `configs/default.py`).
    workdir: output directory: `config.json`, `checkpoints/`, `metrics.jsonl`, `tensorboard/`.
      If it already holds a checkpoint of the same config, training resumes from it.
    mesh: the device mesh (default: `config.mesh` over every device; see `Experiment.build`).

  Returns:
    The final evaluation report on split `config.train.eval_split` (default "test"; also the last
    line of `metrics.jsonl`, with `"final": true` and `"split"` naming it).

  Raises:
    ValueError: for a bad config (naming the key) or a workdir holding a different run.
    NonFiniteLossError: if a loss or gradient is not finite; the last good checkpoint is kept.
    WorkdirLockedError: if another process is training in `workdir`.
    CheckpointSaveError: if a checkpoint cannot be written (disk full, permissions), naming the
      directory, its free space and the last intact step.
  """
  configuration.validate(config)
  os.makedirs(workdir, exist_ok=True)
  with workdir_lock.hold(workdir, jax.process_index()):
    return _train_and_evaluate(config, workdir, mesh=mesh)


def _train_and_evaluate(config: ConfigDict, workdir: str, *, mesh: Mesh | None = None) -> dict[str, Any]:
  """`train_and_evaluate` with the workdir's lock held."""
  # ---- workdir and config ----
  is_main = jax.process_index() == 0
  saved = workdir_lib.saved_config(workdir)
  changed = configuration.check_resumable(saved, config, workdir) if saved is not None else []
  for key in changed:
    logging.warning("resuming with a changed config.%s", key)
  new_days = any(k in configuration.NEW_DATA_KEYS for k in changed)  # continue on new days: a fresh input stream
  test_days = list(config.data.test_days) if "test_days" in config.data else None

  # ---- experiment: mesh, data, model and optimizer, sharding, jitted steps ----
  exp = Experiment.build(config, mesh)
  cfg = exp.sections.train
  eval_split = cfg.eval_split
  if eval_split not in exp.data.splits:  # before anything is compiled or trained
    raise ValueError(f"config.train.eval_split: unknown split {eval_split!r}; the data has "
                     f"{sorted(exp.data.splits)} ('valid' needs config.data.valid_fraction > 0)")
  if exp.sections.data.on_device and jax.process_count() > 1:
    raise ValueError(f"config.data.on_device keeps the whole training split on one process's devices; this run "
                     f"has {jax.process_count()} processes (set it to False)")
  ds = pipeline.train_dataset(exp.data.splits["train"], global_batch_size=cfg.batch_size, seed=config.seed,
                              process_index=jax.process_index(), process_count=jax.process_count(),
                              local_share=exp.data.process_share is not None, indices=exp.sections.data.on_device)
  batches = pipeline.train_iterator(ds)

  # ---- checkpoint: restore the state and the input position if there is one ----
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), every=cfg.checkpoint_every,
                              keep=cfg.keep_checkpoints, config=json.loads(config.to_json()))
  restore_step = checkpointer.intact_step()  # the newest verified step; damaged or unfinished ones are named
  resumed = restore_step is not None
  if not resumed and checkpointer.steps():
    raise ValueError(f"no checkpoint in {checkpointer.directory} is intact (steps {checkpointer.steps()}; the "
                     f"warnings above name the damaged files): move that directory away to train from the start")
  if resumed:
    checkpointer.set_aside(restore_step)  # steps after it failed verification: train them again
  saved_layout = (checkpointer.layout(restore_step) or {}) if resumed else {}
  reshared = (saved_layout.get("process_shares", False) or exp.data.process_share is not None) and \
      saved_layout.get("processes") != jax.process_count()  # each process's share of the data changed
  state = exp.restore(checkpointer, None if new_days or reshared else batches, restore_step) if resumed \
      else exp.init_state()
  start = int(jax.device_get(state.step))
  if start > cfg.steps:
    raise ValueError(f"config.train.steps={cfg.steps} is below step {start} of the checkpoint in "
                     f"{checkpointer.directory}; raise it or use a new --workdir")
  if resumed:
    logging.info("resumed from step %d of %s (saved with layout %s, now %s)", start, checkpointer.directory,
                 checkpointer.layout(start), exp.layout())
  if resumed and reshared:
    logging.info("the processes' shares of the data changed (%s processes, now %d): the input pipeline "
                 "starts over on this process's share", saved_layout.get("processes"), jax.process_count())
  if resumed and new_days:
    logging.info("the training data changed (%s): training continues from step %d on it, from its start",
                 ", ".join(k for k in changed if k in configuration.NEW_DATA_KEYS), start)
  if is_main:
    configuration.save(config, workdir)
  # From the restored step, or from 0: a run killed before its first checkpoint left reports that are redone
  writer = MetricWriter(workdir, resume_step=start, enabled=is_main, test_days=test_days)

  # ---- loop ----
  faults.point("before_compile", start)
  bar = tqdm(total=cfg.steps, initial=start, unit="step", disable=not (cfg.progress_bar and is_main))
  sums, count, step = None, 0, start
  while step < cfg.steps:
    k = _chunk(step, cfg)  # K steps in one dispatch, or one when an event is nearer than K steps
    state, sums = _advance(exp, state, batches, sums, k)
    count, done = count + k, step + k
    bar.update(k)
    if step == start:  # throughput is measured from the end of the first (compiling) call
      jax.block_until_ready(state.step)
      tick, tick_step = time.perf_counter(), done
    if done % cfg.log_every == 0 or done == cfg.steps:
      _check_finite(state, checkpointer)
      means = {k: float(v) / count for k, v in jax.device_get(sums).items()}
      if done > tick_step:
        means["requests_per_s"] = (done - tick_step) * cfg.batch_size / (time.perf_counter() - tick)
        bar.set_postfix(loss=f"{means['loss']:.4f}", req_s=f"{means['requests_per_s']:,.0f}")
      writer.write(done, means, split="train")
      sums, count = None, 0
    if cfg.eval_every and done % cfg.eval_every == 0 and done != cfg.steps:
      writer.write(done, exp.evaluate(state.params["cascade"], eval_split), split=eval_split, final=False)
    if done % cfg.checkpoint_every == 0 or done == cfg.steps:
      _check_finite(state, checkpointer)
      checkpointer.save(done, state, batches, layout=exp.layout(), force=done == cfg.steps)
    if done % cfg.log_every == 0:
      tick, tick_step = time.perf_counter(), done  # throughput excludes evaluation and saving
    step = done
    faults.point("after_step", done)
  bar.close()

  # ---- final evaluation ----
  faults.point("final_eval", cfg.steps)
  final = exp.evaluate(state.params["cascade"], eval_split)
  if exp.sections.corpus.evaluate:  # the cascade as it serves: retrieval from every item
    final.update(exp.evaluate_corpus(state.params["cascade"], eval_split))
  report = writer.write(cfg.steps, final, split=eval_split,
                        final=True, **({"test_days": test_days} if test_days else {}))
  checkpointer.wait()
  checkpointer.close()
  writer.close()
  # The numbers go to metrics.jsonl and, from train.py, to stdout as a table (`metric_writer.table`).
  logging.info("final %s evaluation at step %d written to %s", eval_split, cfg.steps, writer.path)
  return report
