"""Two-stage cascade on MovieLens-1M cascade logs: two-tower retrieval (200 -> 50) -> MLP pre-ranker (50 -> 10).

The logs are simulated on real MovieLens interactions with the Full Stage LTR protocol
(cascadejax/data/movielens/cascade.py, docs/data.md): per user, the earliest 60% of interactions
train two PureSVD teachers (ranks 16 and 64) and form the behaviour history, the next 20% are the
positives of 4 training requests, the last 20% those of 1 test request. Each request holds 200
candidates (up to 20 real positives plus popularity-sampled unseen movies); teacher 1 keeps 50,
teacher 2 shows 10: the paper's 1000 -> 200 -> 50 scaled down by 5 to train in minutes on 2 CPU
cores. `config.data.label_mode` picks the ground truth: "system" (what teacher 2 shows, LCRON's
setting) or "user" (the real held-out interactions first, FS-LTR's setting).

Data: `config.data.dir` ("" = ../shared/data/movielens-1m); download from
https://grouplens.org/datasets/movielens/ and never copy it into the repository. The simulation runs
once and is cached under `config.data.cache_dir` ("" disables the cache).

Run:
  python train.py --config configs/movielens_two_stage.py --workdir /tmp/cascadejax/ml2
  python train.py --config configs/movielens_two_stage.py --workdir /tmp/cascadejax/ml2_user \
      --config.data.label_mode=user

Cost (2-core CPU under load, `python benchmarks/pipeline.py`): 2.9 train steps/s, so 500 steps take
about 3 min, plus 20-40 s for the first conversion (cached afterwards) and compilation. Result
(system labels, `independent`): 0.465 test recall_e2e after 300 steps in a probe at this learning
rate (random selection 0.05; the noiseless teachers as a cascade 0.819, docs/data.md).
"""

from ml_collections import ConfigDict

from configs import default


def data_config(ks: tuple[int, ...], noise: tuple[float, ...], dims: tuple[int, ...]) -> ConfigDict:
  """`config.data` for the MovieLens cascade logs with the given teacher stages."""
  return ConfigDict(dict(
      name="movielens",
      on_device=False,  # True: the training split lives on device (a step moves only row indices)
      dir="",  # "" = ../shared/data/movielens-1m beside the project root
      interactions="auto",  # or a file name in dir: u.data, ratings.dat, interactions.csv.gz, ...
      cache_dir="~/.cache/cascadejax",  # "" = no cache (simulate on every load)
      duplicates="error",  # error | merge (keep each (user, movie) pair's first row, counted)
      min_rating=0.0,  # > 0 keeps only rated rows with rating >= min_rating (counted)
      seed=0,
      label_mode="system",  # system (LCRON) | user (FS-LTR)
      list_size=200,  # N candidates per request
      train_fraction=0.2,  # per user: the middle 20% of interactions are training positives
      test_fraction=0.2,  # the last 20% test positives; the first 60% train the teachers
      positives_per_request=20,
      negative_alpha=1.0,  # negatives ~ popularity^alpha among movies the user never rated
      requests_per_user=4,
      test_requests_per_user=1,
      history_len=50,  # 0 = no behaviour sequence
      production=ConfigDict(dict(ks=ks, noise=noise, dims=dims, w_pop=0.0))))


def get_config() -> ConfigDict:
  """The default cascade shape, on MovieLens-1M logs of a two-stage teacher cascade."""
  c = default.get_config()
  c.data = data_config(ks=(50, 10), noise=(0.5, 0.3), dims=(16, 64))
  c.cascade.retrieval.k = 50
  c.cascade.prerank.k = 10
  c.cascade.gt_num = 10
  c.embedding.dim = 32
  c.optimizer.learning_rate = 2e-2  # 300 steps: recall_e2e 0.465, against 0.433 at 5e-3 with dim 16
  c.train.batch_size = 256
  c.train.steps = 500
  c.train.eval_every = 0
  c.train.eval_batch_size = 512
  return c
