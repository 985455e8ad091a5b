"""LCRON's two-stage RecFlow setup: DSSM retrieval (40 -> 30) -> DIN pre-ranker (30 -> 20), ground truth
the 10 rank_pos videos of each request, trained with `lcron` at its published options.

The setup of LCRON's RecFlow experiments (Wang et al., ICML 2025): per request 10 videos from each of
rank_pos, rank_neg, coarse_neg and prerank_neg (N = 40), k = 30 then 20, gt_num = 10, embedding
dim 8, batch 1024, Adam at 1e-2 (constant, no warm-up, no clipping, as the reference code), one
pass over the training days 2024-01-13 .. 2024-02-03, tested on 2024-02-04. RecFlow is not shipped:
download it by hand (docs/data.md) and point config.data.dir at it. The first run converts the day
files into a memory-mapped cache under config.data.cache_dir; later runs reuse it.

Run:
  python train.py --config configs/recflow_two_stage.py --workdir /tmp/cascadejax/recflow2 \
      --config.data.dir=/path/to/RecFlow

Steps: RecFlow holds about 9.3M requests over 37 days (~250k a day), so one pass over the 22
training days is about 5,400 steps of 1,024; the reader logs each day's request count: set
config.train.steps to their sum / 1024 for exactly one pass. Result: not measured here (no RecFlow
bytes on this machine).
"""

from ml_collections import ConfigDict

from configs import default, lcron


def recflow_data(num_stages: int) -> ConfigDict:
  """`config.data` for RecFlow in LCRON's setting for a 2- or 3-stage cascade (cascadejax/data/recflow.py)."""
  groups = {2: ("prerank_neg", "coarse_neg", "rank_neg", "rank_pos"),
            3: ("prerank_neg", "coarse_neg", "rank_neg", "rerank_neg", "rerank_pos")}[num_stages]
  return ConfigDict(dict(
      name="recflow",
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


def lcron_recflow(c: ConfigDict) -> ConfigDict:
  """LCRON's embedding, optimizer, batch and method settings applied to `c`."""
  c.embedding.dim = 8
  c.cascade.gt_num = 10
  c.method.name = "lcron"
  c.method.lcron = lcron.lcron_options()
  c.optimizer.learning_rate = 1e-2
  c.optimizer.schedule = "constant"
  c.optimizer.warmup_steps = 0
  c.optimizer.grad_clip = 0.0
  c.train.batch_size = 1_024
  c.train.eval_batch_size = 1_024
  c.train.steps = 5_400
  c.train.eval_every = 0
  c.train.checkpoint_every = 1_000
  return c


def get_config() -> ConfigDict:
  """RecFlow, two stages: DSSM (40 -> 30) -> DIN (30 -> 20), LCRON."""
  c = default.get_config()
  c.data = recflow_data(2)
  c.cascade.stages = ("retrieval", "prerank")
  c.cascade.retrieval = dssm(30)
  c.cascade.prerank = din(20)
  return lcron_recflow(c)
