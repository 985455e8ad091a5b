"""Per-task losses for multi-task stage models (e.g. `mmoe`), beside a cascade training method.

A training method sees only `[S, B, N]` stage scores. A multi-task stage model also predicts each of
its tasks (click, like, long view, ...: the keys of `CascadeBatch.feedback`); its task logits are
sown during the forward pass, so one `cascade.apply` gives both:

    scores, tasks = multitask.cascade_outputs(cascade, params, batch.user, batch.items, train=True,
                                              rngs={"dropout": rng})
    loss, aux = method.loss(method_params, scores, batch, rng=method_rng)
    task_loss, task_aux = multitask.loss(tasks, batch, num_stages=len(cascade.stages))
    total = loss + task_weight * task_loss

Feedback exists only for exposed candidates (those that survived every logged stage), so each
task's BCE is averaged over the valid candidates with `stage >= S`:

    L_task(stage, t) = mean_{i exposed} BCE(sigmoid(l_t(i)), feedback_t(i))
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from cascadejax import models
from cascadejax.data.schema import CascadeBatch
from cascadejax.losses.ranking import sigmoid_bce_loss


def cascade_outputs(cascade, params: Any, user: Mapping[str, jax.Array], items: Mapping[str, jax.Array], *,
                    train: bool = False, rngs: Mapping[str, jax.Array] | None = None
                    ) -> tuple[jax.Array, dict[str, dict[str, jax.Array]]]:
  """One forward pass of a `Cascade`: its stage scores and every multi-task stage's task logits.

  Args:
    cascade: a `cascadejax.cascade.Cascade`.
    params: its parameters (the `params` collection's contents).
    user, items: the batch's id features.
    train: training mode (dropout).
    rngs: PRNG keys for `apply` (e.g. `{"dropout": key}`).

  Returns:
    `(scores [S, B, N], {stage name: {task: logits [B, N]}})` for the stages whose model sows
    `task_logits` (the values the stage score was combined from) and names its `tasks`.
  """
  scores, state = cascade.apply({"params": params}, user, items, train=train, rngs=rngs or {},
                                mutable=["intermediates"])
  sown = state.get("intermediates", {})
  out = {}
  for s in cascade.stages:
    if "task_logits" in sown.get(f"stage_{s.name}", {}):
      names = models.get_model(s.model, dict(s.model_kwargs)).tasks
      logits = sown[f"stage_{s.name}"]["task_logits"][-1]
      out[s.name] = {t: logits[i] for i, t in enumerate(names)}
  return scores, out


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
    stage_task_logits: stage name -> task name -> `[B, N]` logits (from `cascade_outputs`).
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
