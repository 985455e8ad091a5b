"""`independent`: every stage trained alone on the logged survival of its own stage.

For stage s (1-based) and valid candidate i, with st(i) the deepest stage i reached in the logs:

    y_s(i) = 1[st(i) >= s]                      (i survived the logged stage s)
    L_s    = mean_{i in W_s}  BCE(sigmoid(score_s(i)), y_s(i))
    L      = sum_s L_s

Option `train_on`, the candidates W_s stage s is trained on: "all" (every valid candidate: what
it will face when the stages before it are learned too) or "reached" (only the candidates the
logged cascade showed it, st(i) >= s - 1: the classic sample-selection-biased setting).

This imitates the logged cascade stage by stage. The "BCE" baseline of the LCRON paper (Wang et
al., ICML 2025, arXiv 2503.09492) trains every stage on the ground truth instead: that is `bce`
(`cascadejax/methods/bce.py`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cascadejax.data.schema import CascadeBatch
from cascadejax.methods.base import CascadeMethod
from cascadejax.losses.ranking import sigmoid_bce_loss


class Independent(CascadeMethod):
  """Per-stage pointwise BCE on "survived this stage in the logs"."""

  name = "independent"
  defaults = {"train_on": "all"}
  train_on_choices = ("all", "reached")

  def __init__(self, options, **kwargs):
    super().__init__(options, **kwargs)
    if self.options["train_on"] not in self.train_on_choices:
      raise ValueError(f"config.method.{self.name}.train_on must be one of {self.train_on_choices}, "
                       f"got {self.options['train_on']!r}")

  def covered(self, batch: CascadeBatch, stage: int) -> jax.Array:
    """`[B, N]` bool: the candidates W_s that stage `stage` (0-based) is trained on."""
    if self.options["train_on"] == "reached":
      return batch.mask & (batch.stage >= stage)
    return batch.mask

  def targets(self, batch: CascadeBatch, stage: int) -> jax.Array:
    """`[B, N]` bool BCE targets of stage `stage` (0-based): survived it in the logs."""
    return batch.stage > stage

  def loss(self, params, stage_scores: jax.Array, batch: CascadeBatch, *, rng: jax.Array):
    """Sum over stages of each stage's BCE; aux holds each stage's term."""
    del params, rng
    terms = {f"loss/{name}": sigmoid_bce_loss(stage_scores[s], self.targets(batch, s),
                                              where=self.covered(batch, s))
             for s, name in enumerate(self.stage_names)}
    return jnp.sum(jnp.stack(list(terms.values()))), terms
