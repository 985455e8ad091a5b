"""Three-stage cascade on MovieLens-1M cascade logs: two-tower retrieval (200 -> 100) -> MLP pre-ranker
(100 -> 40) -> DCN-v2 ranker with low-rank cross layers (40 -> 10).

The logs come from three PureSVD teachers of increasing capacity (ranks 4, 16 and 64, noise 0.5,
0.5 and 0.3 in score standard deviations) on the protocol of `configs/movielens_two_stage.py`
(cascadejax/data/movielens/cascade.py, docs/data.md): 4 training requests and 1 test request per
user, 200 candidates each, teachers keeping 100, 40 and 10.

Run:
  python train.py --config configs/movielens_three_stage.py --workdir /tmp/cascadejax/ml3
  python train.py --config configs/movielens_three_stage.py --workdir /tmp/cascadejax/ml3_user \
      --config.data.label_mode=user

Cost (2-core CPU under load, `python benchmarks/pipeline.py`): 1.5 train steps/s, so 400 steps take
about 4.5 min, plus the first conversion (cached afterwards) and compilation.
"""

from ml_collections import ConfigDict

from configs import movielens_two_stage


def get_config() -> ConfigDict:
  """The two-stage MovieLens config with a third teacher in the logs and a DCN-v2 ranker."""
  c = movielens_two_stage.get_config()
  c.data = movielens_two_stage.data_config(ks=(100, 40, 10), noise=(0.5, 0.5, 0.3), dims=(4, 16, 64))
  c.cascade.stages = ("retrieval", "prerank", "rank")
  c.cascade.retrieval.k = 100
  c.cascade.prerank.k = 40
  c.cascade.rank = ConfigDict(dict(
      model="dcn", k=10, model_kwargs=ConfigDict(dict(num_cross=2, low_rank=32, deep=(128, 64)))))
  c.embedding.dim = 16  # the ranker scores all 200 candidates: half the two-stage width keeps it in minutes
  c.train.steps = 400
  return c
