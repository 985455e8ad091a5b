"""Two-stage cascade on the synthetic default: two-tower retrieval (40 -> 20) -> MLP pre-ranker (20 -> 10).

Trained with the `independent` method (each stage: BCE on "survived this stage in the logs").

Run:
  python train.py --config configs/default.py --workdir /tmp/cascadejax/default

Result (2-core CPU, benchmarks/RESULTS.md): test recall_e2e 0.699 against 0.288 for random selection
on the same requests (a noiseless oracle cascade reaches 0.861), in 2 min 43 s wall time.
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
  """Returns the default configuration; every other config overrides a few of these fields."""
  c = ConfigDict()
  c.seed = 0  # parameter initialisation and per-step randomness

  # ---- data: the built-in cascade simulator (cascadejax/data/synthetic.py) ----
  c.data = ConfigDict()
  c.data.name = "synthetic"
  c.data.seed = 0
  c.data.on_device = False  # True: the training split lives on device, a step moves only row indices
  c.data.num_train = 64_000  # requests
  c.data.num_test = 8_000
  c.data.list_size = 40  # N candidate slots per request
  c.data.min_candidates = 30  # requests draw their valid-candidate count from [min_candidates, N]
  c.data.num_users = 4_000
  c.data.num_items = 4_000
  c.data.num_user_groups = 64
  c.data.num_categories = 64
  c.data.num_creators = 400
  c.data.num_contexts = 8
  c.data.latent_dim = 16
  c.data.history_len = 20
  c.data.min_history = 5
  c.data.history_temperature = 0.5
  c.data.candidate_temperature = 1.0
  c.data.w_dot = 1.0
  c.data.w_cross = 1.0
  c.data.w_pop = 0.5
  c.data.w_context = 0.5
  c.data.click_offset = 2.0  # exposed items are clicked with probability sigmoid(r - click_offset)
  c.data.production = ConfigDict()
  c.data.production.ks = (20, 10)  # the logged production cascade's own selection sizes
  c.data.production.noise = (0.5, 0.3)  # std of each production teacher's score noise

  # ---- cascade: ordered stages, each a model and the number of candidates it keeps ----
  c.cascade = ConfigDict()
  c.cascade.stages = ("retrieval", "prerank")
  c.cascade.gt_num = 10  # ground truth = the top gt_num labels of each request
  c.cascade.retrieval = ConfigDict(dict(
      model="two_tower", k=20, model_kwargs=ConfigDict(dict(hidden=(64,), out_dim=16))))
  c.cascade.prerank = ConfigDict(dict(
      model="mlp", k=10, model_kwargs=ConfigDict(dict(hidden=(128, 64)))))

  # ---- embedding: one component serves every stage's feature lookups ----
  c.embedding = ConfigDict()
  c.embedding.dim = 32
  c.embedding.shared = False  # True: all stages read one set of tables; False: one set per stage
  # Row-sharded tables (docs/sharding.md). With sharded=True, every table of at least replicate_below
  # rows is split over the mesh axes shard_axes (which config.mesh.axes must name) and trained with a
  # lazy row-wise rule matching config.optimizer.name; smaller tables stay replicated and train densely.
  c.embedding.sharded = False
  c.embedding.shard_axes = ("model",)  # ("data", "model"): split over every device
  c.embedding.placement = "mod"  # "mod": row r on shard r mod K; "range": on shard r div ceil(V / K)
  c.embedding.routing = "gather"  # ids to their rows' owners: "gather" (all-gather + psum) or "all_to_all"
  c.embedding.replicate_below = 100_000  # rows
  c.embedding.capacity_factor = 0.0  # all_to_all: 0 = exact buckets; f > 0 = f x even share, overflow dropped

  # ---- training method (cascadejax/methods/) ----
  c.method = ConfigDict()
  c.method.name = "independent"
  c.method.independent = ConfigDict(dict(train_on="all"))

  # ---- optimizer ----
  c.optimizer = ConfigDict()
  c.optimizer.name = "adam"  # adam | adamw | sgd | adagrad
  c.optimizer.learning_rate = 5e-3
  c.optimizer.schedule = "cosine"  # constant | cosine
  c.optimizer.warmup_steps = 100
  c.optimizer.weight_decay = 0.0
  c.optimizer.grad_clip = 1.0  # global-norm clipping; 0 disables

  # ---- training loop ----
  c.train = ConfigDict()
  c.train.batch_size = 512
  c.train.steps = 2_000
  c.train.steps_per_call = 1  # K train steps per jitted dispatch (bit-identical to K = 1)
  c.train.log_every = 100
  c.train.eval_every = 1_000  # 0: only the final evaluation
  c.train.eval_batch_size = 1_024
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 3
  c.train.progress_bar = True

  # ---- device mesh (cascadejax/mesh.py) ----
  c.mesh = ConfigDict()
  c.mesh.axes = ("data",)
  c.mesh.shape = (-1,)  # -1: all remaining devices
  return c
