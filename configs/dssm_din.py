"""LCRON's two-stage model choice on the synthetic default: DSSM retrieval (40 -> 20) -> DIN pre-ranker
(20 -> 10), trained with the `independent` method.

LCRON (Wang et al., ICML 2025) runs its two-stage RecFlow experiments with a DSSM retriever and a DIN
ranker over the user's behaviour sequence; here they read the simulator's behaviour history (item ids
sharing the candidates' `item_id` table). Everything else is `configs/default.py`, so the result
compares directly with its two-tower -> MLP cascade (test recall_e2e 0.702).

Run:
  python train.py --config configs/dssm_din.py --workdir /tmp/cascadejax/dssm_din --config.train.progress_bar=False

Result (2-core CPU, benchmarks/RESULTS.md, measured 2026-11-24 while other jobs kept the load average
at 6-7): test recall_e2e 0.6968 against 0.2882 for random selection (the default two-tower -> MLP
cascade: 0.7019); DIN pre-rank Recall@10@10 0.653 (default's MLP: 0.669); 19 min 50 s wall time,
peak RSS 1.33 GB, 921 requests/s mean logged train throughput.
"""

from ml_collections import ConfigDict

from configs import default


def get_config() -> ConfigDict:
  """The default config with DSSM retrieval and a DIN pre-ranker."""
  c = default.get_config()
  c.cascade.retrieval = ConfigDict(dict(
      model="dssm", k=20, model_kwargs=ConfigDict(dict(hidden=(64,), out_dim=16, pooling="mean"))))
  # chunk=16: the attention runs in blocks of 16 requests, recomputed in backward (faster on CPU).
  c.cascade.prerank = ConfigDict(dict(
      model="din", k=10, model_kwargs=ConfigDict(dict(attention=(36,), hidden=(128, 64), chunk=16))))
  return c
