"""`independent`: every stage trained alone on the logged survival of its own stage.

For stage s (1-based) and valid candidate i, with st(i) the deepest stage i reached in the logs:

    y_s(i) = 1[st(i) >= s]                      (i survived the logged stage s)
    L_s    = mean_i  BCE(sigmoid(score_s(i)), y_s(i))
    L      = sum_s L_s

Option `train_on`: "all" trains every stage on every valid candidate (what it will face when the
stages before it are learned too); "reached" trains stage s only on the candidates the logged
cascade showed it (st(i) >= s - 1), the classic sample-selection-biased setting.

This is the "BCE" baseline of LCRON (Wang et al., ICML 2025, arXiv 2503.09492) and of RankFlow
(Qin et al., SIGIR 2022).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cascadejax.data.schema import CascadeBatch
from cascadejax.losses.cascade.base import CascadeMethod
from cascadejax.losses.ranking import sigmoid_bce_loss


class Independent(CascadeMethod):
  """Per-stage pointwise BCE on "survived this stage in the logs"."""

  name = "independent"
  defaults = {"train_on": "all"}

  def __init__(self, options, **kwargs):
    super().__init__(options, **kwargs)
    if self.options["train_on"] not in ("all", "reached"):
      raise ValueError("config.method.independent.train_on must be 'all' or 'reached', "
                       f"got {self.options['train_on']!r}")

  def loss(self, params, stage_scores: jax.Array, batch: CascadeBatch, *, rng: jax.Array):
    """Sum over stages of the BCE on logged survival; aux holds each stage's term."""
    del params, rng
    terms = {}
    for s, name in enumerate(self.stage_names):
      where = batch.mask if self.options["train_on"] == "all" else batch.mask & (batch.stage >= s)
      terms[f"loss/{name}"] = sigmoid_bce_loss(stage_scores[s], batch.stage > s, where=where)
    return jnp.sum(jnp.stack(list(terms.values()))), terms
