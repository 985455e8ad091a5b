"""Ranking operators: relaxed sorting and soft top-k (`soft_sort`, `soft_topk` with the `dftopk`,
`lapsum`, `sparse_topk` and sum-to-k threshold operators it dispatches to), hard selection
(`selection`), the pairwise-loss kernel (`lambdarank`) and the shared gains, discounts, DCG, masks
and list means (`ranking_utils`)."""

from cascadejax.ops.soft_sort import masked_softmax, neural_sort, soft_sort
from cascadejax.ops.soft_topk import soft_topk
from cascadejax.ops.dftopk import dftopk, dftopk_logits
from cascadejax.ops.lapsum import lapsum_topk
from cascadejax.ops.sparse_topk import sparse_topk
from cascadejax.ops.lambdarank import PairSpec, count_label_pairs, tiled_pairwise_loss

__all__ = ["masked_softmax", "neural_sort", "soft_sort", "soft_topk", "dftopk", "dftopk_logits", "lapsum_topk",
           "sparse_topk", "PairSpec", "count_label_pairs", "tiled_pairwise_loss"]
