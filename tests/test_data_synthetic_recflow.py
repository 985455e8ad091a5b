"""The simulator's RecFlow layout: groups, stages, labels, feedback, config errors, training on it."""

import hashlib

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict

from cascadejax import data as data_lib
from cascadejax import trainer
from cascadejax.data import synthetic, synthetic_recflow, synthetic_world
from tests.conftest import tiny_config

PER_GROUP = 2


def recflow_config(num_stages: int = 2) -> ConfigDict:
  """`tiny_config` in the recflow layout: 2 per group (N = 8 or 10), a pool of 20 or 24, group sizes
  (6, 6, 4, 4) or (6, 6, 4, 4, 4); the cascade keeps N - 2, N - 4, ... down to 4, ground truth 2."""
  c = tiny_config(num_stages)
  d = synthetic_recflow.configure(c.data, num_stages, per_group=PER_GROUP)
  if num_stages == 2:
    d.pool_size, d.production.ks = 20, (14, 8, 4)
    c.cascade.retrieval.k, c.cascade.prerank.k = 6, 4
  else:
    d.pool_size, d.production.ks = 24, (18, 12, 8, 4)
    c.cascade.retrieval.k, c.cascade.prerank.k, c.cascade.rank.k = 8, 6, 4
  c.cascade.gt_num = PER_GROUP
  return c


def group_of(label: np.ndarray) -> np.ndarray:
  """Group index d of every slot: labels are d, or d + 1 / (2 + position) < d + 1 in the deepest."""
  return np.floor(label).astype(int)


@pytest.mark.parametrize("num_stages", [2, 3])
def test_groups_stages_labels_and_clicks(num_stages):
  c = recflow_config(num_stages)
  data = data_lib.load(c.data, num_stages)  # also runs schema.validate on every split
  deepest = num_stages + 1
  for split in data.splits.values():
    assert split.list_size == PER_GROUP * (num_stages + 2) and split.mask.all()
    d = group_of(split.label)
    for g in range(deepest + 1):  # exactly per_group candidates of every group in every request
      np.testing.assert_array_equal((d == g).sum(1), PER_GROUP)
    np.testing.assert_array_equal(split.stage, np.minimum(d, num_stages))
    np.testing.assert_array_equal(split.label[d < deepest], d[d < deepest])  # ties inside a group
    position = 1.0 / (split.label[d == deepest] - deepest) - 2.0
    np.testing.assert_allclose(position, np.round(position), atol=1e-3)
    assert position.min() > -0.5 and position.max() < c.data.production.ks[-1] - 0.5
    # The top gt_num labels are exactly the deepest group, and deeper groups outrank shallower ones.
    top = np.argsort(-split.label, axis=1)[:, :c.cascade.gt_num]
    assert (np.take_along_axis(d, top, 1) == deepest).all()
    by_label = np.take_along_axis(d, np.argsort(-split.label, axis=1, kind="stable"), 1)
    assert (np.diff(by_label, axis=1) <= 0).all()
    assert (split.feedback["click"][d < deepest] == 0).all() and split.feedback["click"].any()
    for row, m in zip(split.items["item_id"], split.mask):
      assert len(set(row[m])) == m.sum() and (row > 0).all()


def test_slot_order_is_shuffled_per_request():
  d = group_of(synthetic.load(recflow_config().data, 2).splits["train"].label)
  assert len({tuple(r) for r in d}) > 50  # not one fixed group pattern
  assert (d[:, 0] == 0).mean() < 0.5 and (d[:, -1] == 3).mean() < 0.5


@pytest.mark.parametrize("num_stages", [2, 3])
def test_noiseless_groups_are_the_production_filters_of_the_hidden_views(num_stages):
  # With noiseless teachers every filter keeps the best of what reached it by its view: a candidate
  # of group >= f beats every candidate of group f - 1 on filter f's view, and the deepest group's
  # logged positions follow the utility.
  c = recflow_config(num_stages)
  c.data.production.noise = (0.0,) * (num_stages + 1)
  test = synthetic.load(c.data, num_stages).splits["test"]
  idx = lambda ids: ids - 1
  view, utility = synthetic_world.teacher_views(c.data, synthetic_world.hidden_world(c.data), idx(test.user["user_id"]),
                                          idx(test.user["context"]), idx(test.items["item_id"]))
  d = group_of(test.label)
  for f in range(1, num_stages + 2):
    seen = view if f == 1 else utility
    kept = np.where(d >= f, seen, np.inf).min(1)
    dropped = np.where(d == f - 1, seen, -np.inf).max(1)
    assert (kept > dropped).all(), f
  deep = d == num_stages + 1
  util = np.where(deep, utility, -np.inf)
  label = np.where(deep, test.label, -np.inf)
  best = np.argsort(-util, axis=1)[:, :PER_GROUP]  # by utility, the better position (higher label) first
  assert (np.diff(np.take_along_axis(label, best, 1), axis=1) < 0).all()


def test_deterministic_per_seed_and_seed_sensitive():
  cfg = recflow_config().data
  a, b = synthetic.load(cfg, 2), synthetic.load(cfg, 2)
  for x, y in zip(jax.tree.leaves(a.splits), jax.tree.leaves(b.splits)):
    np.testing.assert_array_equal(x, y)
  cfg.seed = 1
  c = synthetic.load(cfg, 2)
  assert not np.array_equal(a.splits["train"].items["item_id"], c.splits["train"].items["item_id"])
  assert not np.array_equal(a.splits["train"].label, c.splits["train"].label)


def test_extra_feedback_and_crosses_change_no_other_field():
  plain = synthetic.load(recflow_config().data, 2).splits["train"]
  cfg = recflow_config().data
  cfg.feedback, cfg.cross_features = ("click", "like", "long_view"), (("user_group", "category"),)
  extra = data_lib.load(cfg, 2).splits["train"]
  for x, y in zip(jax.tree.leaves(plain), jax.tree.leaves(extra.replace(
      feedback={"click": extra.feedback["click"]},
      items={k: v for k, v in extra.items.items() if k in plain.items}))):
    np.testing.assert_array_equal(x, y)
  for name in ("like", "long_view"):
    assert (extra.feedback[name] <= extra.feedback["click"]).all()


@pytest.mark.parametrize("change,match", [
    (dict(layout="cascade"), r"config\.data\.layout"),
    (dict(ks=(8, 4)), r"config\.data\.production\.ks has 2 entries"),
    (dict(noise=(0.5, 0.3)), r"config\.data\.production\.noise has 2 entries"),
    (dict(noise=(0.5, -0.1, 0.3)), r"config\.data\.production\.noise\[1\]"),
    (dict(per_group=0), r"config\.data\.per_group"),
    (dict(list_size=9), r"config\.data\.list_size=9"),
    (dict(pool_size=None), r"config\.data\.pool_size must be set"),
    (dict(pool_size=61), r"config\.data\.pool_size=61"),  # more than num_items = 60
    (dict(pool_size=7), r"config\.data\.pool_size=7"),  # fewer than list_size = 8
    (dict(ks=(19, 8, 4)), r"config\.data\.production\.ks\[0\]=19"),  # filter 1 drops 1 < per_group
    (dict(ks=(14, 13, 4)), r"config\.data\.production\.ks\[1\]=13"),
    (dict(ks=(14, 8, 7)), r"config\.data\.production\.ks\[2\]=7"),
    (dict(ks=(14, 8, 1)), r"config\.data\.production\.ks\[2\]=1"),  # last filter keeps < per_group
])
def test_bad_config_names_the_key_before_simulating(change, match, monkeypatch):
  cfg = recflow_config().data
  for key, value in change.items():
    if key in ("ks", "noise"):
      cfg.production[key] = value
    elif value is None:
      del cfg[key]
    else:
      cfg[key] = value
  monkeypatch.setattr(synthetic, "make_world", lambda *a: pytest.fail("simulated before checking the config"))
  with pytest.raises(ValueError, match=match):
    data_lib.load(cfg, 2)


def test_default_layout_unchanged():
  cfg = tiny_config().data
  absent = synthetic.load(cfg, 2)
  cfg.layout = "default"
  explicit = synthetic.load(cfg, 2)
  for x, y in zip(jax.tree.leaves(absent.splits), jax.tree.leaves(explicit.splits)):
    np.testing.assert_array_equal(x, y)
  # The integer fields of today's default data (recorded before the recflow layout existed).
  b = absent.splits["train"]
  h = hashlib.sha256()
  for a in (b.items["item_id"], b.stage, b.user["user_id"], b.mask):
    h.update(np.ascontiguousarray(a).astype(np.int32).tobytes())
  assert (h.hexdigest()[:16], int(b.items["item_id"].sum()), int(b.stage.sum()),
          float(b.feedback["click"].sum())) == ("6d53f66d252076cf", 55169, 1536, 321.0)


def test_configure_defaults_are_consistent():
  for num_stages in (2, 3):
    d = synthetic_recflow.configure(tiny_config(num_stages).data, num_stages)
    d.num_items = 4_000
    assert d.list_size == 10 * (num_stages + 2)
    synthetic.check_config(d, num_stages)


@pytest.mark.parametrize("num_stages", [2, 3])
def test_trains_a_few_steps(num_stages, tmp_path):
  c = recflow_config(num_stages)
  c.train.steps, c.train.eval_every, c.train.checkpoint_every = 4, 0, 4
  final = trainer.train_and_evaluate(c, str(tmp_path))
  assert final["final"] is True and 0 <= final["recall_e2e"] <= 1


@pytest.mark.parametrize("num_stages", [2, 3])
def test_reference_label_values_keep_the_order_with_the_loaders_values(num_stages):
  cfg = recflow_config(num_stages).data
  graded = synthetic.load(cfg, num_stages).splits["train"]
  cfg.label_values = "reference"
  ref = synthetic.load(cfg, num_stages).splits["train"]
  sign = lambda x: np.sign(x[:, :, None] - x[:, None, :])
  np.testing.assert_array_equal(sign(ref.label), sign(graded.label))   # every pair, ties included
  top = num_stages + 1
  depth = np.floor(graded.label).astype(int)
  np.testing.assert_array_equal(ref.label[depth < top], (5.0 + depth)[depth < top])   # 5, 6, 7 (, 8)
  position = np.round(1.0 / (graded.label - top) - 2.0)
  np.testing.assert_array_equal(ref.label[depth == top], (30.0 - position)[depth == top])
  cfg.label_values = "loader"
  with pytest.raises(ValueError, match="config.data.label_values must be one of"):
    synthetic.load(cfg, num_stages)
