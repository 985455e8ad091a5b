"""A shipped config evaluated from the whole item corpus (docs/corpus.md): the first stage (a
retrieval model) retrieves its k_1 from every item of the corpus, the later stages rank those, and the
final report carries `corpus:<stage>/recall@G@k`, `ndcg@k` and `corpus_recall_e2e` beside the
logged-candidate metrics.

The base config is the synthetic default (two-tower 40 -> 20 -> MLP 10, retrieving from the world's
4,000 items) unless a config module of `configs/` is named after the file, e.g.
`configs/corpus.py:three_stage` or `configs/corpus.py:movielens_two_stage` (MovieLens-1M's corpus: the
movies of its logged candidates).

Run:
  python train.py --config configs/corpus.py --workdir /tmp/cascadejax/corpus
  python train.py --config configs/corpus.py --workdir /tmp/cascadejax/corpus_neg \
      --config.corpus.negatives=sampled          # retrieval also against sampled corpus negatives
  python -m cascadejax.compare --config configs/corpus.py:three_stage --methods independent,lcron \
      --seeds 3 --out /tmp/cj/corpus3_plain

Result: docs/results.md, "From the whole corpus" (compare runs of independent and lcron, with and
without corpus negatives).
"""

import importlib

from ml_collections import ConfigDict


def get_config(base: str = "default") -> ConfigDict:
  """`configs/<base>.py`'s config with full-corpus evaluation on (and corpus negatives available)."""
  try:
    module = importlib.import_module(f"configs.{base}")
  except ModuleNotFoundError as err:
    if err.name != f"configs.{base}":  # the module exists but something it imports does not
      raise
    raise ValueError(f"configs/corpus.py:{base}: no config module configs/{base}.py") from None
  c = module.get_config()
  c.corpus = ConfigDict(dict(evaluate=True, negatives="none", num_negatives=1024, weight=1.0, temperature=1.0))
  return c
