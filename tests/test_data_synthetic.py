"""The synthetic simulator: determinism, disjoint splits, logs consistent with a real cascade."""

import jax
import numpy as np
import pytest

from cascadejax import data as data_lib
from cascadejax.data import synthetic, synthetic_world
from tests.conftest import tiny_config


@pytest.mark.parametrize("num_stages", [2, 3])
def test_logs_match_a_hard_production_cascade(num_stages):
  cfg = tiny_config(num_stages).data
  data = data_lib.load(cfg, num_stages)
  ks = cfg.production.ks
  for split in data.splits.values():
    n_valid = split.mask.sum(1)
    for s in range(1, num_stages + 1):  # stage s keeps min(k_s, #valid) candidates
      np.testing.assert_array_equal(((split.stage >= s) & split.mask).sum(1), np.minimum(ks[s - 1], n_valid))
    assert (split.stage[~split.mask] == 0).all() and (split.label[~split.mask] == 0).all()
    assert (split.items["item_id"][~split.mask] == 0).all() and (split.items["item_id"][split.mask] > 0).all()
    # Labels rank every deeper candidate above every shallower one: floor(label) is the stage.
    np.testing.assert_array_equal(np.floor(split.label[split.mask]), split.stage[split.mask])
    # The top k_S labels of each request are exactly what the production cascade exposed.
    order = np.argsort(-np.where(split.mask, split.label, -1), axis=1)[:, :ks[-1]]
    assert (np.take_along_axis(split.stage, order, 1) == num_stages).all()
    # Clicks only on exposed candidates.
    assert (split.feedback["click"][split.stage < num_stages] == 0).all()


def test_deterministic_per_seed_and_seed_sensitive():
  cfg = tiny_config().data
  a, b = synthetic.load(cfg, 2), synthetic.load(cfg, 2)
  for x, y in zip(jax.tree.leaves(a.splits), jax.tree.leaves(b.splits)):
    np.testing.assert_array_equal(x, y)
  cfg.seed = 1
  c = synthetic.load(cfg, 2)
  assert not np.array_equal(a.splits["train"].items["item_id"], c.splits["train"].items["item_id"])


def test_train_and_test_requests_are_disjoint():
  data = synthetic.load(tiny_config().data, 2)
  assert not set(data.request_ids["train"]) & set(data.request_ids["test"])
  assert len(data.request_ids["train"]) == 256 and len(data.request_ids["test"]) == 48
  key = lambda b: {(int(u), tuple(sorted(i))) for u, i in zip(b.user["user_id"], b.items["item_id"])}
  assert not key(data.splits["train"]) & key(data.splits["test"])


def test_candidates_unique_and_histories_padded_at_the_end():
  data = synthetic.load(tiny_config().data, 2)
  for b in data.splits.values():
    for row, m in zip(b.items["item_id"], b.mask):
      assert len(set(row[m])) == m.sum()
    h = b.user["history"]
    assert (h[:, 0] > 0).all()
    nonzero = h > 0  # once a history hits padding it stays padding
    assert (nonzero[:, 1:] <= nonzero[:, :-1]).all()


def test_cross_is_beyond_a_two_tower_of_the_default_width():
  # The default two-tower has 16-dim towers; its score matrix over (group, category) has rank <= 16.
  from configs import default
  cfg = default.get_config()
  cross = synthetic_world.preference_cross(np.random.default_rng(0), cfg.data.num_user_groups, cfg.data.num_categories)
  s = np.linalg.svd(cross, compute_uv=False)
  out_dim = cfg.cascade.retrieval.model_kwargs.out_dim
  residual = (s[out_dim:] ** 2).sum() / (s**2).sum()
  assert residual > 0.3, residual  # a third of the cross's energy is out of the two-tower's reach


@pytest.mark.parametrize("key,value,match", [
    ("min_candidates", 9, "config.data.min_candidates"),
    ("list_size", 100, "config.data.list_size"),
    ("min_history", 0, "config.data.min_history"),
])
def test_bad_simulator_config_names_the_key(key, value, match):
  cfg = tiny_config().data
  cfg[key] = value
  with pytest.raises(ValueError, match=match):
    synthetic.load(cfg, 2)


def test_production_ks_must_shrink_and_match_stages():
  cfg = tiny_config().data
  cfg.production.ks = (4, 5)
  with pytest.raises(ValueError, match=r"config.data.production.ks\[1\]=5"):
    synthetic.load(cfg, 2)
  with pytest.raises(ValueError, match="config.data.production.ks has 2 stages but the cascade has 3"):
    synthetic.load(tiny_config().data, 3)


def test_noiseless_logs_are_the_hard_cascade_of_the_hidden_teacher_views():
  # With zero teacher noise the logged stages must be exactly the hard cascade over the noiseless
  # views that `teacher_views` and `hidden_world` expose to analyses.
  import jax.numpy as jnp
  from cascadejax.ops.selection import select
  cfg = tiny_config(3).data
  cfg.production.noise = (0.0, 0.0, 0.0)
  test = synthetic.load(cfg, 3).splits["test"]
  idx = lambda ids: np.maximum(ids - 1, 0)
  view, utility = synthetic_world.teacher_views(cfg, synthetic_world.hidden_world(cfg), idx(test.user["user_id"]),
                                          idx(test.user["context"]), idx(test.items["item_id"]))
  alive = np.asarray(select(jnp.asarray(np.stack([view, utility, utility])), cfg.production.ks,
                            where=jnp.asarray(test.mask)))
  np.testing.assert_array_equal(alive.sum(0), test.stage)


def test_cache_dir_keeps_the_simulation_and_keys_it_by_the_whole_config(tmp_path):
  cfg = tiny_config().data
  plain = synthetic.load(cfg, 2)
  cfg.cache_dir = str(tmp_path)
  first, again = synthetic.load(cfg, 2), synthetic.load(cfg, 2)
  for x, y, z in zip(jax.tree.leaves(plain.splits), jax.tree.leaves(first.splits), jax.tree.leaves(again.splits)):
    np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(x, z)
  assert len([p for p in tmp_path.iterdir() if p.name.startswith("synthetic-")]) == 1
  cfg.seed = 1   # another config is another entry, never the cached one
  other = synthetic.load(cfg, 2)
  assert len([p for p in tmp_path.iterdir() if p.name.startswith("synthetic-")]) == 2
  assert not np.array_equal(other.splits["train"].items["item_id"], plain.splits["train"].items["item_id"])
