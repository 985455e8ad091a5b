"""Per-task losses of multi-task stage models (e.g. `mmoe`), trained beside the cascade method.

A training method ranks the `[S, B, N]` stage scores. A multi-task stage model also predicts each
of its tasks (click, like, long view, ...: the keys of `CascadeBatch.feedback`) as auxiliary outputs
of the same forward pass (`CascadeOutput.aux`). With `config.multitask.weight` w > 0 the train step
adds their losses to the method's:

    total = L_method + w * sum_{stage, t} c_t L_task(stage, t)       (c_t = config.multitask.task_weights[t], default 1)

Feedback exists only for exposed candidates (those that survived every logged stage), so each
task's BCE is averaged over the valid candidates with `stage >= S`:

    L_task(stage, t) = mean_{i exposed} BCE(sigmoid(l_t(i)), feedback_t(i))

Each term is logged as `task/<stage>/<task>` (and the weighted sum as `loss/tasks`) in metrics.jsonl.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from cascadejax.data.schema import CascadeBatch
from cascadejax.losses.ranking import sigmoid_bce_loss
from cascadejax.sections import Section


@dataclasses.dataclass(frozen=True)
class MultitaskSection(Section):
  """`config.multitask`: whether and how much the task heads of multi-task stages are trained.

  Attributes:
    weight: w, the task losses' weight beside the method's loss; 0 = off (the task heads then learn
      only through the stage score they combine into).
    task_weights: task name -> c_t (tasks not listed weigh 1).
  """

  KEY = "multitask"
  ADDED = ("weight",)  # an empty task_weights flattens to no key at all
  weight: float = 0.0
  task_weights: Any = dataclasses.field(default_factory=dict)

  def check(self) -> None:
    if not 0.0 <= self.weight < float("inf"):
      raise ValueError(f"config.multitask.weight must be >= 0 (0 = off), got {self.weight}")
    if not isinstance(self.task_weights, dict) or any(
        isinstance(v, bool) or not isinstance(v, (int, float)) for v in self.task_weights.values()):
      raise ValueError(f"config.multitask.task_weights must map task names to numbers, got {self.task_weights!r}")
    for task, value in self.task_weights.items():
      if not 0.0 <= value < float("inf"):
        raise ValueError(f"config.multitask.task_weights.{task} must be a finite number >= 0, got {value}")


def task_losses(task_logits: Mapping[str, jax.Array], batch: CascadeBatch, *,
                num_stages: int) -> dict[str, jax.Array]:
  """BCE of each task's logits against its feedback, on exposed valid candidates.

  Args:
    task_logits: task name (a key of `batch.feedback`) -> `[B, N]` logits.
    batch: the batch (its `feedback`, `stage` and `mask` are read).
    num_stages: S; a candidate is exposed when `stage >= S`.

  Returns:
    task name -> scalar mean BCE (0 when the batch has no exposed candidate).

  Raises:
    ValueError: naming a task that has no feedback in the batch.
  """
  feedback = batch.feedback or {}
  missing = [t for t in task_logits if t not in feedback]
  if missing:
    raise ValueError(f"tasks {missing} have no feedback in the batch (it has {sorted(feedback)}); for the "
                     "synthetic data, request them with config.data.feedback")
  exposed = batch.mask & (batch.stage >= num_stages)
  return {t: sigmoid_bce_loss(logits, feedback[t], where=exposed) for t, logits in task_logits.items()}


def loss(stage_task_logits: Mapping[str, Mapping[str, jax.Array]], batch: CascadeBatch, *,
         num_stages: int, weights: Mapping[str, float] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted sum of every multi-task stage's per-task losses.

  Args:
    stage_task_logits: stage name -> task name -> `[B, N]` logits (`CascadeOutput.aux`).
    batch: the batch.
    num_stages: S.
    weights: optional task name -> weight (default 1 for every task).

  Returns:
    `(total, {"task/<stage>/<task>": loss})`.
  """
  terms = {}
  for stage, logits in stage_task_logits.items():
    for t, value in task_losses(logits, batch, num_stages=num_stages).items():
      terms[f"task/{stage}/{t}"] = value
  total = sum(((weights or {}).get(k.rsplit("/", 1)[1], 1.0) * v for k, v in terms.items()), jnp.float32(0.0))
  return total, terms
