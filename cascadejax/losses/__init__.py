"""Ranking losses (pointwise, pairwise, listwise; docs/losses.md), with the shared `safe_reduce` and
`ideal_dcg` of `cascadejax.ops.ranking_utils`."""

from cascadejax.losses.listwise import softmax_loss
from cascadejax.losses.pairwise import bpr_loss, hinge_loss, lambdaloss, lambdarank_loss, ndcg_gains, ranknet_loss
from cascadejax.losses.ranking import mse_loss, sigmoid_bce_loss
from cascadejax.ops.ranking_utils import ideal_dcg, safe_reduce

__all__ = ["bpr_loss", "hinge_loss", "ideal_dcg", "lambdaloss", "lambdarank_loss", "mse_loss",
           "ndcg_gains", "ranknet_loss", "safe_reduce", "sigmoid_bce_loss", "softmax_loss"]
