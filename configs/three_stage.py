"""Three-stage cascade on the synthetic default: two-tower retrieval (50 -> 30) -> MLP pre-ranker
(30 -> 20) -> DCN-v2 ranker (20 -> 10), trained with the `independent` method.

Run:
  python train.py --config configs/three_stage.py --workdir /tmp/cascadejax/three_stage

Result (2-core CPU, benchmarks/RESULTS.md): test recall_e2e 0.786 against 0.223 for random selection
on the same requests (a noiseless oracle cascade reaches 0.870), in 10 min wall time: the DCN-v2
ranker scoring all 50 candidates dominates the step.
"""

from ml_collections import ConfigDict

from configs import default


def get_config() -> ConfigDict:
  """The default config with a third stage and a three-stage production cascade in the logs."""
  c = default.get_config()
  c.data.list_size = 50  # LCRON's three-stage RecFlow setting
  c.data.min_candidates = 40
  c.data.production.ks = (30, 20, 10)
  c.data.production.noise = (0.5, 0.6, 0.3)
  c.cascade.stages = ("retrieval", "prerank", "rank")
  c.cascade.retrieval.k = 30
  c.cascade.prerank.k = 20
  c.cascade.rank = ConfigDict(dict(
      model="dcn", k=10, model_kwargs=ConfigDict(dict(num_cross=2, deep=(128, 64)))))
  return c
