"""`config.optimizer` as optax: the learning-rate schedule and the gradient transformation.

Both the dense update path and the row-sparse one (`cascadejax.embedding.update`) read the same
schedule, so sharded tables and every other parameter move on one learning rate.
"""

from __future__ import annotations

import dataclasses
import math

import optax

from cascadejax.sections import Section

OPTIMIZERS = ("adam", "adamw", "sgd", "adagrad")
SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class OptimizerSection(Section):
  """`config.optimizer`: the update rule, its learning-rate schedule, decay and clipping.

  Attributes:
    name: one of `OPTIMIZERS`.
    learning_rate: the peak learning rate (finite, > 0).
    schedule: "constant" or "cosine" (decay to 0 over the run), after `warmup_steps` of linear warmup.
    warmup_steps: >= 0 (0 = no warmup).
    weight_decay: finite, >= 0 (0 = none); decoupled for adamw, added to the gradient otherwise.
    grad_clip: global-norm clipping threshold, finite, >= 0; 0 = no clipping (the only way to turn it
      off: a negative value is refused, never read as "off").
  """

  KEY = "optimizer"
  name: str
  learning_rate: float
  schedule: str
  warmup_steps: int
  weight_decay: float
  grad_clip: float

  def check(self) -> None:
    if self.name not in OPTIMIZERS:
      raise ValueError(f"config.optimizer.name: unknown optimizer {self.name!r}; available: {OPTIMIZERS}")
    if self.schedule not in SCHEDULES:
      raise ValueError(f"config.optimizer.schedule: unknown schedule {self.schedule!r}; available: {SCHEDULES}")
    if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
      raise ValueError(f"config.optimizer.learning_rate must be > 0 and finite, got {self.learning_rate}")
    for key, off in (("warmup_steps", "no warmup"), ("weight_decay", "no decay"), ("grad_clip", "no clipping")):
      value = getattr(self, key)
      if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"config.optimizer.{key} must be >= 0 and finite (0 = {off}), got {value}")


def learning_rate(cfg: OptimizerSection, total_steps: int) -> optax.Schedule:
  """The learning-rate schedule of `config.optimizer` (warmup, then constant or cosine decay)."""
  peak, warmup = cfg.learning_rate, cfg.warmup_steps
  if cfg.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total_steps, warmup + 1))
  return optax.join_schedules([optax.linear_schedule(0.0, peak, max(warmup, 1)), optax.constant_schedule(peak)],
                              [max(warmup, 1)]) if warmup else optax.constant_schedule(peak)


def make_optimizer(cfg: OptimizerSection, total_steps: int, *, clip: bool = True) -> optax.GradientTransformation:
  """The optimizer of `config.optimizer`: optional clipping, then the named rule on a schedule.

  Args:
    cfg: the parsed `config.optimizer`.
    total_steps: the run's length (the cosine schedule's horizon).
    clip: apply `cfg.grad_clip` here; the row-sparse path passes False and clips both its parts
      together instead.
  """
  lr = learning_rate(cfg, total_steps)
  rule = {"adam": lambda: optax.adam(lr), "sgd": lambda: optax.sgd(lr, momentum=0.9),
          "adamw": lambda: optax.adamw(lr, weight_decay=cfg.weight_decay),
          "adagrad": lambda: optax.adagrad(lr)}[cfg.name]()
  parts = [optax.clip_by_global_norm(cfg.grad_clip)] if clip and cfg.grad_clip > 0 else []
  if cfg.weight_decay and cfg.name != "adamw":
    parts.append(optax.add_decayed_weights(cfg.weight_decay))
  return optax.chain(*parts, rule)
