"""LCRON's three-stage model choice on the synthetic three-stage default: DSSM retrieval (50 -> 30) ->
MLP pre-ranker (30 -> 20) -> DIN ranker (20 -> 10), trained with the `independent` method, with an
MMR re-ranking stage applied in evaluation.

LCRON (Wang et al., ICML 2025) runs its three-stage RecFlow experiments with DSSM, an MLP and DIN.
Everything else is `configs/three_stage.py`, so the result compares directly with its
two-tower -> MLP -> DCN-v2 cascade (test recall_e2e 0.783).

`config.rerank` (see `cascadejax/rerank.py`) is not used in training; `python -m cascadejax.evaluate`
applies it to the ranker's 10 survivors and reports the shown list without (`shown/...`) and with
(`rerank/...`) it.

Run:
  python train.py --config configs/dssm_mlp_din.py --workdir /tmp/cascadejax/dssm_mlp_din --config.train.progress_bar=False
  python -m cascadejax.evaluate --workdir /tmp/cascadejax/dssm_mlp_din

Result (2-core CPU, benchmarks/RESULTS.md, measured 2026-11-24 while other jobs kept the load average
at 7-9): test recall_e2e 0.7141 against 0.2234 for random selection (three_stage's DCN-v2 ranker:
0.7832); DIN rank Recall@10@10 0.685 (DCN-v2: 0.792); 30 min 49 s wall time, peak RSS 1.61 GB,
594 requests/s mean logged train throughput. The MMR re-ranker (k = 5, lambda = 0.7, category
similarity) changes the shown 5: see benchmarks/RESULTS.md for its effect on recall, NDCG and
distinct categories, and for DPP and the creator cap.
"""

from ml_collections import ConfigDict

from configs import three_stage


def get_config() -> ConfigDict:
  """The three-stage config with DSSM retrieval, MLP pre-rank and a DIN ranker."""
  c = three_stage.get_config()
  c.cascade.retrieval = ConfigDict(dict(
      model="dssm", k=30, model_kwargs=ConfigDict(dict(hidden=(64,), out_dim=16, pooling="mean"))))
  c.cascade.rank = ConfigDict(dict(
      model="din", k=10, model_kwargs=ConfigDict(dict(attention=(36,), hidden=(128, 64), chunk=16))))
  # Evaluation only: show 5 of the ranker's 10, diversified over categories by MMR.
  c.rerank = ConfigDict(dict(method="mmr", k=5, mmr_lambda=0.7, similarity="category", feature="category"))
  return c
