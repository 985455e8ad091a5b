"""LCRON's three-stage RecFlow setup: DSSM retrieval (50 -> 40) -> MLP pre-ranker (40 -> 30) -> DIN
ranker (30 -> 20), ground truth the 10 rerank_pos videos of each request, every method at its
published setting (`config.method.name`, default `lcron`).

Per request 10 videos from each of rerank_pos, rerank_neg, rank_neg, coarse_neg and prerank_neg
(N = 50), k = 40, 30, 20, gt_num = 10; everything else is `configs/reference/recflow_two_stage.py`
(embedding dim 8, batch 1024, Adam 1e-2 constant, one pass over 2024-01-13 .. 2024-02-03, test
2024-02-04).

Run:
  python train.py --config configs/reference/recflow_three_stage.py --workdir /tmp/cascadejax/recflow3 \
      --config.data.dir=/path/to/RecFlow

Result: not measured here (no RecFlow bytes on this machine).
"""

from ml_collections import ConfigDict

from configs import default
from configs.reference import published
from configs.reference.recflow_two_stage import ONE_PASS_STEPS, din, dssm, recflow_data


def get_config() -> ConfigDict:
  """RecFlow, three stages: DSSM (50 -> 40) -> MLP (40 -> 30) -> DIN (30 -> 20), the authors' setup."""
  c = default.get_config()
  c.data = recflow_data(3)
  c.data.label_values = "reference"  # the authors' loader labels: 30 - rerank_index, 8, 7, 6, 5
  c.cascade.stages = ("retrieval", "prerank", "rank")
  c.cascade.retrieval = dssm(40)
  c.cascade.prerank = ConfigDict(dict(model="mlp", k=30, model_kwargs=ConfigDict(dict(hidden=(128, 64)))))
  c.cascade.rank = din(20)
  c.cascade.gt_num = 10
  return published.apply(c, steps=ONE_PASS_STEPS)
