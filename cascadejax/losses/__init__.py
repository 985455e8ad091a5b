"""Ranking losses (pointwise, pairwise, listwise; docs/losses.md), sampled softmax with the logQ
correction for retrieval against the corpus, and the shared `safe_reduce` and `ideal_dcg` of
`cascadejax.ops.ranking_utils`."""

from cascadejax.losses.listwise import softmax_loss
from cascadejax.losses.pairwise import bpr_loss, hinge_loss, lambdaloss, lambdarank_loss, ndcg_gains, ranknet_loss
from cascadejax.losses.ranking import mse_loss, sigmoid_bce_loss
from cascadejax.losses.sampled_softmax import (FrequencyEstimate, in_batch_softmax_loss, log_q_from_counts,
                                               sampled_softmax_loss)
from cascadejax.ops.ranking_utils import ideal_dcg, safe_reduce

__all__ = ["FrequencyEstimate", "bpr_loss", "hinge_loss", "ideal_dcg", "in_batch_softmax_loss", "lambdaloss",
           "lambdarank_loss", "log_q_from_counts", "mse_loss", "ndcg_gains", "ranknet_loss", "safe_reduce",
           "sampled_softmax_loss", "sigmoid_bce_loss", "softmax_loss"]
