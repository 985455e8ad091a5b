"""The train step: one pure body, compiled one step per call or K steps per call (`lax.scan`).

`make_step` is the whole of a training step: the cascade's forward pass, the method's loss (plus
the multi-task heads and the corpus-negatives term when configured), the gradient through the
update path, and the update, skipped when anything is not finite. `scan_steps` runs that same
body K times over stacked batches, adding each step's metrics to running sums in the order
`trainer.accumulate` adds them, so K steps per dispatch equal K dispatches bit for bit.
`cascadejax.experiment.Experiment` jits both with the run's shardings.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp

from cascadejax import multitask
from cascadejax.cascade import Cascade
from cascadejax.corpus import training as corpus_training
from cascadejax.data.schema import CascadeBatch
from cascadejax.embedding import update as update_lib
from cascadejax.methods import CascadeMethod


@flax.struct.dataclass
class TrainState:
  """The whole training state, a pytree (what checkpoints hold).

  Attributes:
    step: number of train steps taken.
    params: {"cascade": the stage models' parameters, "method": the method's own parameters}.
    opt_state: the optimizer's state.
    nonfinite_step: -1, or the first step whose loss, gradient or gradient norm was not finite (its
      update was skipped; the trainer stops when it sees this).
  """

  step: jax.Array
  params: Any
  opt_state: Any
  nonfinite_step: jax.Array


def _all_finite(tree: Any) -> jax.Array:
  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)] or [jnp.bool_(True)]))


def update_is_finite(loss: jax.Array, grads: Any, grad_norm: jax.Array) -> jax.Array:
  """Whether a step's update may be applied: loss, every gradient and their global norm finite.

  The norm is checked too because finite gradients whose global norm exceeds about 1.8e19 overflow
  float32's sum of squares: global-norm clipping then divides by infinity and silently zeroes every
  update, so a diverged run would go on without learning.
  """
  return jnp.isfinite(loss) & _all_finite(grads) & jnp.isfinite(grad_norm)


StepFn = Callable[[TrainState, CascadeBatch, Any], tuple[TrainState, dict[str, jax.Array]]]


def make_step(cascade: Cascade, method: CascadeMethod, update: update_lib.Update, sections: Any, *,
              train_key: jax.Array, corpus_key: str | None = None) -> StepFn:
  """The pure train step `(state, batch, corpus arrays or None) -> (state, metrics)`.

  Args:
    cascade: the stage models.
    method: the training method (its `loss` gives the loss and its named terms).
    update: the update path (`cascadejax.embedding.update`: dense optax or row-sparse tables).
    sections: the run's parsed config (`configuration.Sections`): `multitask`, `corpus` and
      `cascade.gt_num` are read.
    train_key: the run's training key; each step folds in its step number (dropout, the method's
      randomness), so a resumed run draws exactly what the uninterrupted one drew.
    corpus_key: the corpus's key feature, for the corpus-negatives term (its arrays are the step's
      third argument; None there switches the term off).
  """

  def step(state: TrainState, batch: CascadeBatch, arrays: Any = None):
    dropout_rng, method_rng = jax.random.split(jax.random.fold_in(train_key, state.step))

    def loss_fn(params, variables):  # variables: extra collections of the update path (or None)
      out = cascade.apply({"params": params["cascade"], **(variables or {})}, batch.user, batch.items,
                          train=True, rngs={"dropout": dropout_rng})
      loss, aux = method.loss(params["method"], out.scores, batch, rng=method_rng)
      tasks = sections.multitask
      if tasks.weight:  # the task heads of multi-task stages (`cascadejax.multitask`)
        task_loss, terms = multitask.loss(out.aux, batch, num_stages=len(cascade.stages), weights=tasks.task_weights)
        loss, aux = loss + tasks.weight * task_loss, {**aux, **terms, "loss/tasks": task_loss}
      c = sections.corpus
      if arrays is not None:  # the retrieval stage against corpus negatives (`cascadejax.corpus.training`)
        corpus_loss = corpus_training.loss(
            cascade, {"params": params["cascade"], **(variables or {})}, batch, arrays, key=corpus_key,
            gt_num=sections.cascade.gt_num, negatives=c.negatives, num_negatives=c.num_negatives,
            temperature=c.temperature, log_q=c.log_q, rng=jax.random.fold_in(method_rng, 1))
        loss, aux = loss + c.weight * corpus_loss, {**aux, "loss/corpus": corpus_loss}
      return loss, aux

    (loss, aux), grads = update.value_and_grad(loss_fn, state.params, batch)
    grad_norm = update.global_norm(grads)
    finite = update_is_finite(loss, grads, grad_norm)
    params, opt_state = jax.lax.cond(finite, lambda _: update.apply(grads, state.opt_state, state.params),
                                     lambda _: (state.params, state.opt_state), None)
    first_bad = jnp.where((state.nonfinite_step < 0) & ~finite, state.step, state.nonfinite_step)
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, nonfinite_step=first_bad)
    return new_state, {"loss": loss, "grad_norm": grad_norm, **aux}

  return step


def scan_steps(step: StepFn, k: int, *, gather: bool, batch_sharding: Any = None):
  """`(state, batches, sums, split, arrays) -> (state, sums)`: `k` applications of `step`.

  Args:
    step: the body (`make_step`).
    k: steps per call; `batches` has a leading axis of `k`.
    gather: whether `batches` are `[k, B]` row indices into `split` (the training split on
      device) rather than stacked batches; each step's batch is then gathered inside the scan and
      constrained to `batch_sharding`.
    batch_sharding: the sharding of one batch (used with `gather`).
  """

  def steps(state: TrainState, batches: Any, sums: dict[str, jax.Array], split: Any, arrays: Any):
    def body(carry, batch):
      state, sums = carry
      if gather:
        batch = jax.lax.with_sharding_constraint(split.take(batch), batch_sharding)
      state, metrics = step(state, batch, arrays)
      return (state, jax.tree.map(jnp.add, sums, metrics)), None

    return jax.lax.scan(body, (state, sums), batches, length=k)[0]

  return steps
