"""The LCRON authors' two-stage RecFlow run: DSSM retrieval (40 -> 30) -> DIN pre-ranker (30 -> 20),
ground truth the 10 rank_pos videos of each request, every method at its published setting.

The setup of LCRON's RecFlow experiments (Wang et al., ICML 2025): per request 10 videos from each of
rank_pos, rank_neg, coarse_neg and prerank_neg (N = 40), k = 30 then 20, gt_num = 10, history 50,
towers of 128; training as the authors' scripts (`configs/reference/published.py`: Adam 1e-2
constant, no clipping, batch 1024, embedding dim 8, one pass over the training days 2024-01-13 ..
2024-02-03, tested on 2024-02-04). Every method's section holds its published defaults;
`config.method.name` picks one (default `lcron`). RecFlow is not shipped: download it by hand
(docs/data.md) and point config.data.dir at it. The first run converts the day files into a
memory-mapped cache under config.data.cache_dir; later runs reuse it.

Run:
  python train.py --config configs/reference/recflow_two_stage.py --workdir /tmp/cascadejax/recflow2 \
      --config.data.dir=/path/to/RecFlow [--config.method.name=arf_v2]
  python -m cascadejax.compare --config configs/reference/recflow_two_stage.py \
      --config.data.dir=/path/to/RecFlow --seeds 5 --out /tmp/cascadejax/recflow2_compare \
      --methods bce,lcron,arf_v2,arf,rankflow,icc,fs_ranknet,fs_lambdaloss

Steps: RecFlow holds about 9.3M requests over 37 days (~250k a day), so one pass over the 22
training days is about 5,400 steps of 1,024; the reader logs each day's request count: set
config.train.steps to their sum / 1024 for exactly one pass. Result: not measured here (no RecFlow
bytes on this machine).
"""

from ml_collections import ConfigDict

from configs import default
from configs.reference import published

ONE_PASS_STEPS = 5_400  # ~5.5M training requests / 1024


def recflow_data(num_stages: int) -> ConfigDict:
  """`config.data` for RecFlow in LCRON's setting for a 2- or 3-stage cascade (cascadejax/data/recflow.py)."""
  groups = {2: ("prerank_neg", "coarse_neg", "rank_neg", "rank_pos"),
            3: ("prerank_neg", "coarse_neg", "rank_neg", "rerank_neg", "rerank_pos")}[num_stages]
  return ConfigDict(dict(
      name="recflow",
      on_device=False,  # True: the training split lives on device (a step moves only row indices)
      dir="../shared/data/recflow",  # holds all_stage/, seq_effective_50_dict/, others/
      cache_dir="~/.cache/cascadejax",  # "" disables the cache
      seed=0,  # which candidates are kept when a group has more than per_group, and slot order
      groups=groups,  # shallowest first; a candidate's stage is min(group index, S)
      per_group=10,
      list_size=10 * len(groups),  # N = len(groups) * per_group
      graded=(groups[-1],),  # the deepest group's labels also order by its logged position
      train_days=("2024-01-13", "2024-02-03"),  # inclusive
      test_days=("2024-02-04", "2024-02-04"),
      user_fields=("user_id", "device_id", "age", "gender", "province", "request_hour", "request_wday"),
      item_fields=("video_id", "author_id", "category_level_one", "category_level_two", "upload_type"),
      history_fields=("video_id",),  # user feature "history", sharing the video_id table
      history_len=50,
      feedback=("effective_view", "long_view", "like", "follow", "forward", "comment"),
      max_requests_per_day=0,  # 0: every request; n: a seeded sample of n per day
      utc_offset_hours=8.0))  # request_hour / request_wday in Beijing time


def dssm(k: int) -> ConfigDict:
  """DSSM retrieval over the mean-pooled history, towers of width 128 as LCRON's."""
  return ConfigDict(dict(model="dssm", k=k, model_kwargs=ConfigDict(dict(hidden=(128,), out_dim=32, pooling="mean"))))


def din(k: int) -> ConfigDict:
  """DIN attending over the video history with the candidate's video_id, output MLP (128, 64)."""
  return ConfigDict(dict(model="din", k=k, model_kwargs=ConfigDict(dict(
      sequence="history", target="video_id", attention=(36,), hidden=(128, 64), chunk=16))))


def get_config() -> ConfigDict:
  """RecFlow, two stages: DSSM (40 -> 30) -> DIN (30 -> 20), the authors' training setup."""
  c = default.get_config()
  c.data = recflow_data(2)
  c.data.label_values = "reference"  # the authors' loader labels: 30 - rank_index, 7, 6, 5
  c.cascade.stages = ("retrieval", "prerank")
  c.cascade.gt_num = 10
  c.cascade.retrieval = dssm(30)
  c.cascade.prerank = din(20)
  return published.apply(c, steps=ONE_PASS_STEPS)
