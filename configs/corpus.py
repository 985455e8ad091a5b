"""The synthetic default evaluated from the whole item corpus (docs/corpus.md): the two-tower
retrieval stage retrieves its 20 from all 4,000 items of the simulated world, the MLP pre-ranker keeps
10 of those, and the final report carries `corpus:<stage>/recall@G@k`, `ndcg@k` and
`corpus_recall_e2e` beside the logged-candidate metrics.

Run:
  python train.py --config configs/corpus.py --workdir /tmp/cascadejax/corpus
  python train.py --config configs/corpus.py --workdir /tmp/cascadejax/corpus_neg \
      --config.corpus.negatives=sampled          # retrieval also against sampled corpus negatives

Result: docs/results.md, "From the whole corpus" (compare runs of independent and lcron, with and
without corpus negatives).
"""

from ml_collections import ConfigDict

from configs import default


def get_config() -> ConfigDict:
  """The default config with full-corpus evaluation on (and corpus negatives available)."""
  c = default.get_config()
  c.corpus = ConfigDict(dict(evaluate=True, negatives="none", num_negatives=1024, weight=1.0, temperature=1.0))
  return c
