"""Full-corpus retrieval: blocked exact and approximate top-k of query x item inner products over the
whole item table (one device, or the table's rows split over mesh axes), and recall / NDCG of the
retrieved items against each request's ground truth.

    scores, index = exact_top_k(queries [B, d], items [num_items, d], k)        # [B, k], [B, k]
    scores, index = sharded_top_k(queries, items, k, mesh=mesh, item_axes="model")
    recall = retrieval_recall(index, targets [B, G], where=target_mask)

Every function is pure and jittable; none forms a `[B, num_items]` matrix (see `topk`).

On top of them, for a cascade: `evaluation` (the cascade evaluated from the whole corpus,
`config.corpus`) and `training` (the retrieval stage against in-batch or sampled corpus negatives
with the logQ correction). docs/corpus.md walks through both and the exported index.
"""

from cascadejax.corpus.metrics import retrieval_hits, retrieval_ndcg, retrieval_recall
from cascadejax.corpus.sharded import pad_corpus, sharded_top_k
from cascadejax.corpus.topk import DEFAULT_CHUNK, approx_top_k, auto_group_size, exact_top_k

__all__ = ["DEFAULT_CHUNK", "approx_top_k", "auto_group_size", "exact_top_k", "pad_corpus", "retrieval_hits",
           "retrieval_ndcg", "retrieval_recall", "sharded_top_k"]
