"""The LCRON authors' three-stage RecFlow run, on the simulator's RecFlow layout: DSSM retrieval
(50 -> 40) -> MLP pre-ranker (40 -> 30) -> DIN ranker (30 -> 20), ground truth the 10 exposed items.

As `configs/reference/simulator_two_stage.py` with five groups of 10 per request (RecFlow's
prerank_neg, coarse_neg, rank_neg, rerank_neg and rerank_pos: a simulated production cascade of four
filters, `cascadejax/data/synthetic_recflow.py`), stage = min(group, 3), and LCRON's three-stage
models; training as `configs/reference/published.py`.

Run:
  python -m cascadejax.compare --config configs/reference/simulator_three_stage.py --seeds 5 \
      --out /tmp/cj/sim3_compare --methods bce,lcron,arf_v2,arf,rankflow,icc,fs_ranknet,fs_lambdaloss,independent

Result: docs/results.md ("As published: the simulator's RecFlow layout").
"""

from ml_collections import ConfigDict

from configs import default
from configs.reference import published
from configs.reference.simulator_two_stage import STEPS, din, dssm, simulator_data


def get_config() -> ConfigDict:
  """The simulator's RecFlow layout, three stages, the authors' models and training setup."""
  c = default.get_config()
  c.data = simulator_data(3)
  c.cascade.stages = ("retrieval", "prerank", "rank")
  c.cascade.gt_num = 10
  c.cascade.retrieval = dssm(40)
  c.cascade.prerank = ConfigDict(dict(model="mlp", k=30, model_kwargs=ConfigDict(dict(hidden=(128, 64)))))
  c.cascade.rank = din(20)
  return published.apply(c, steps=STEPS)
