"""The LCRON authors' two-stage RecFlow run, on the simulator's RecFlow layout: DSSM retrieval (40 -> 30)
-> DIN pre-ranker (30 -> 20), ground truth the 10 exposed items of each request.

`config.data.layout = "recflow"` (`cascadejax/data/synthetic_recflow.py`) samples each request the
way LCRON's RecFlow protocol does: 10 candidates from each group of a simulated production cascade
(dropped by its first, second and third filter, and kept by the third: RecFlow's prerank_neg,
coarse_neg, rank_neg and rank_pos), stage = min(group, 2), labels graded inside the deepest group and
tied inside the others, no padding. The models are LCRON's (DSSM over the mean-pooled history, DIN
over the history, towers of 128) reading the simulator's features; the training is the authors'
(`configs/reference/published.py`: Adam 1e-2 constant, no clipping, batch 1024, embedding dim 8,
one pass over the training requests, every method at its published defaults, `config.method.name`
default `lcron`).

Run:
  python train.py --config configs/reference/simulator_two_stage.py --workdir /tmp/cj/sim2 \
      [--config.method.name=bce]
  python -m cascadejax.compare --config configs/reference/simulator_two_stage.py --seeds 5 \
      --out /tmp/cj/sim2_compare --methods bce,lcron,arf_v2,arf,rankflow,icc,fs_ranknet,fs_lambdaloss,independent

Result: docs/results.md ("As published: the simulator's RecFlow layout").
"""

from ml_collections import ConfigDict

from cascadejax.data import synthetic_recflow
from configs import default
from configs.reference import published

STEPS = 1_000  # one pass over NUM_TRAIN requests at batch 1024
NUM_TRAIN = STEPS * published.BATCH_SIZE


def dssm(k: int) -> ConfigDict:
  """DSSM retrieval over the mean-pooled history, towers of width 128 as LCRON's."""
  return ConfigDict(dict(model="dssm", k=k, model_kwargs=ConfigDict(dict(hidden=(128,), out_dim=32,
                                                                          pooling="mean"))))


def din(k: int) -> ConfigDict:
  """DIN attending over the item history with the candidate's item_id, output MLP (128, 64)."""
  return ConfigDict(dict(model="din", k=k, model_kwargs=ConfigDict(dict(
      sequence="history", target="item_id", attention=(36,), hidden=(128, 64), chunk=16))))


def simulator_data(num_stages: int) -> ConfigDict:
  """`config.data`: the simulator's RecFlow layout for an S-stage cascade, NUM_TRAIN requests."""
  data = default.get_config().data
  synthetic_recflow.configure(data, num_stages)
  data.num_train = NUM_TRAIN
  data.label_values = "reference"  # the authors' loader labels: 30 - position, then 8, 7, 6, 5
  data.cache_dir = "~/.cache/cascadejax"  # the runs of a seed share one simulation ("" = off)
  return data


def get_config() -> ConfigDict:
  """The simulator's RecFlow layout, two stages, the authors' models and training setup."""
  c = default.get_config()
  c.data = simulator_data(2)
  c.cascade.stages = ("retrieval", "prerank")
  c.cascade.gt_num = 10
  c.cascade.retrieval = dssm(30)
  c.cascade.prerank = din(20)
  return published.apply(c, steps=STEPS)
