"""`bce`: every stage trained alone with BCE on the ground truth, as the LCRON paper's baseline.

The BCE baseline of Wang et al. (*Learning Cascade Ranking as One Network*, ICML 2025, arXiv
2503.09492), as the authors' code (kwai/LCRON) computes it. With y(i) = 1 if i is among the
request's top `gt_num` labels:

    L_s = mean_{i in W_s}  BCE(sigmoid(score_s(i)), y(i)),        L = sum_s L_s

Each stage is trained on its own candidates W_s and gets no gradient from the others. The
published code covers, per stage, fixed groups of RecFlow's logs: the first stage every candidate,
a middle stage the candidates it saw (logged stage >= s - 1 for 1-based stage s), and the last
stage only the candidates that survived it (the exposed ones, logged stage = S), not the ones it
saw and dropped (two stages: retrieval all 40 candidates, pre-rank the 20 that reached rank;
three stages: retrieval 50, pre-rank 40, rank 20).

Option `train_on`: "published" (default, the coverage above), "all" (every valid candidate at
every stage) or "reached" (every stage on what the logged cascade showed it).

Unlike `independent`, which imitates the logged cascade (y_s = survived logged stage s), every
stage here learns the same target: the final ground truth.
"""

from __future__ import annotations

import jax

from cascadejax.data.schema import CascadeBatch
from cascadejax.methods.independent import Independent
from cascadejax.ops.selection import ground_truth


class BCE(Independent):
  """Per-stage pointwise BCE on the ground truth (the top `gt_num` labels)."""

  name = "bce"
  defaults = {"train_on": "published"}
  train_on_choices = ("published", "all", "reached")

  def covered(self, batch: CascadeBatch, stage: int) -> jax.Array:
    """`[B, N]` bool: the candidates W_s that stage `stage` (0-based) is trained on."""
    if self.options["train_on"] != "published":
      return super().covered(batch, stage)
    last = stage == self.num_stages - 1
    return batch.mask & (batch.stage >= (self.num_stages if last else stage))

  def targets(self, batch: CascadeBatch, stage: int) -> jax.Array:
    """`[B, N]` bool BCE targets: the ground truth, the same at every stage."""
    del stage
    return ground_truth(batch.label, self.gt_num, where=batch.mask)
