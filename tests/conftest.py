"""Shared fixtures: a tiny synthetic cascade that trains in seconds."""

import pytest
from ml_collections import ConfigDict

from configs import default


def tiny_config(num_stages: int = 2) -> ConfigDict:
  """The default config shrunk to lists of 8 candidates and a few hundred requests."""
  c = default.get_config()
  d = c.data
  d.num_train, d.num_test = 256, 48
  d.list_size, d.min_candidates = 8, 6
  d.num_users, d.num_items = 40, 60
  d.num_user_groups, d.num_categories, d.num_creators, d.num_contexts = 4, 6, 5, 3
  d.latent_dim, d.history_len, d.min_history = 4, 5, 1
  c.embedding.dim = 4
  c.cascade.gt_num = 2
  c.cascade.retrieval.k = 4
  c.cascade.retrieval.model_kwargs = ConfigDict(dict(hidden=(8,), out_dim=4))
  c.cascade.prerank.k = 2
  c.cascade.prerank.model_kwargs = ConfigDict(dict(hidden=(8,)))
  d.production.ks = (4, 2)
  if num_stages == 3:
    d.production.ks, d.production.noise = (5, 3, 2), (0.5, 0.6, 0.3)
    c.cascade.stages = ("retrieval", "prerank", "rank")
    c.cascade.retrieval.k, c.cascade.prerank.k = 5, 3
    c.cascade.rank = ConfigDict(dict(model="dcn", k=2, model_kwargs=ConfigDict(dict(num_cross=1, deep=(8,)))))
  t = c.train
  t.batch_size, t.eval_batch_size = 16, 32
  t.steps, t.log_every, t.eval_every, t.checkpoint_every = 12, 4, 8, 4
  t.progress_bar = False
  c.optimizer.warmup_steps = 2
  return c


@pytest.fixture
def config() -> ConfigDict:
  return tiny_config()
