"""Losses: ranking losses (pointwise, pairwise, listwise; docs/losses.md) and cascade training
methods (`cascade`)."""

from cascadejax.losses.listwise import softmax_loss
from cascadejax.losses.pairwise import (bpr_loss, hinge_loss, ideal_dcg, lambdaloss, lambdarank_loss,
                                        ndcg_gains, ranknet_loss)
from cascadejax.losses.ranking import mse_loss, safe_reduce, sigmoid_bce_loss

__all__ = ["bpr_loss", "hinge_loss", "ideal_dcg", "lambdaloss", "lambdarank_loss", "mse_loss",
           "ndcg_gains", "ranknet_loss", "safe_reduce", "sigmoid_bce_loss", "softmax_loss"]
