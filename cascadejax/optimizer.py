"""`config.optimizer` as optax: the learning-rate schedule and the gradient transformation.

Both the dense update path and the row-sparse one (`cascadejax.embedding.update`) read the same
schedule, so sharded tables and every other parameter move on one learning rate.
"""

from __future__ import annotations

import optax
from ml_collections import ConfigDict

OPTIMIZERS = ("adam", "adamw", "sgd", "adagrad")
SCHEDULES = ("constant", "cosine")


def learning_rate(cfg: ConfigDict, total_steps: int) -> optax.Schedule:
  """The learning-rate schedule of `config.optimizer` (warmup, then constant or cosine decay)."""
  peak, warmup = cfg.learning_rate, cfg.warmup_steps
  if cfg.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total_steps, warmup + 1))
  return optax.join_schedules([optax.linear_schedule(0.0, peak, max(warmup, 1)), optax.constant_schedule(peak)],
                              [max(warmup, 1)]) if warmup else optax.constant_schedule(peak)


def make_optimizer(cfg: ConfigDict, total_steps: int, *, clip: bool = True) -> optax.GradientTransformation:
  """The optimizer of `config.optimizer`: optional clipping, then the named rule on a schedule.

  Args:
    cfg: the `config.optimizer` section.
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
