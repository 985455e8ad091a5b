"""Sharded embedding tables and the row-wise optimizer.

Single-device checks run here; the 8-device ones (`tests/embedding_sharded_cases.py`) run in a
child pytest with 8 forced CPU devices through `tests/test_eight_devices.py`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cascadejax import configuration
from cascadejax.embedding import routing, sharded as se
from cascadejax.data.schema import FeatureSpec
from cascadejax.embedding.collection import EmbeddingCollection
from cascadejax.embedding.row_rules import RowRule
from tests.conftest import tiny_config


# ---- layout ----
@pytest.mark.parametrize("placement", ["mod", "range"])
def test_layout_round_trip_and_owners(placement):
  s = se.TableSharding(num_shards=4, placement=placement)
  table = jnp.arange(10 * 2, dtype=jnp.float32).reshape(10, 2)  # V = 10, R = 3, two padding rows
  physical = s.to_physical(table)
  assert physical.shape == (12, 2)
  np.testing.assert_array_equal(s.to_logical(physical, 10), table)
  ids = jnp.arange(10)
  np.testing.assert_array_equal(physical[s.physical_index(ids, 10)], table)
  owner, local = s.owner_local(jnp.array([5, 9]), 10)
  want = ([1, 1], [1, 2]) if placement == "mod" else ([1, 3], [2, 0])  # mod: 5 = 1 * 4 + 1; range: 5 = 1 * 3 + 2
  np.testing.assert_array_equal(owner, want[0])
  np.testing.assert_array_equal(local, want[1])


def test_replication_threshold():
  s = se.TableSharding(num_shards=2, replicate_below=50)
  assert s.shards(50) and not s.shards(49)


def test_lookup_without_mesh_reads_the_physical_table():
  """No mesh in context (initialisation, serving export): plain reads with dense gradients."""
  s = se.TableSharding(num_shards=4, placement="mod")
  table = jnp.asarray(np.random.default_rng(0).normal(size=(10, 3)), jnp.float32)
  ids = jnp.array([[1, 9, 1], [0, 4, 7]])
  w = jnp.ones((2, 3, 3))
  np.testing.assert_array_equal(se.lookup(s.to_physical(table), ids, s, 10), jnp.take(table, ids, axis=0))
  grad = jax.grad(lambda t: jnp.sum(se.lookup(t, ids, s, 10) * w))(s.to_physical(table))
  np.testing.assert_array_equal(s.to_logical(grad, 10)[:, 0], [1, 2, 0, 0, 1, 0, 0, 1, 0, 1])


def test_collection_with_sharding_equals_dense_collection():
  """Same logical initial values and the same vectors, tables above the threshold stored sharded."""
  features = (FeatureSpec("user_id", "user", "user", 5), FeatureSpec("history", "user", "item", 12, sequence=True),
              FeatureSpec("item_id", "items", "item", 12))
  user = {"user_id": jnp.array([1, 4]), "history": jnp.array([[3, 0, 11], [5, 5, 0]])}
  items = {"item_id": jnp.array([[2, 3], [11, 0]])}
  s = se.TableSharding(num_shards=4, placement="mod", replicate_below=10)
  dense, sharded = EmbeddingCollection(features, 4), EmbeddingCollection(features, 4, table_sharding=s)
  pd = dense.init(jax.random.key(0), user, items)
  ps = sharded.init(jax.random.key(0), user, items)
  assert ps["params"]["item"].shape == (12, 4) and ps["params"]["user"].shape == (5, 4)
  np.testing.assert_array_equal(s.to_logical(ps["params"]["item"], 12), pd["params"]["item"])
  a, b = dense.apply(pd, user, items), sharded.apply(ps, user, items)
  for side in ("user", "items"):
    for k in getattr(a, side):
      np.testing.assert_array_equal(getattr(a, side)[k], getattr(b, side)[k])
  np.testing.assert_array_equal(a.sequence_mask["history"], b.sequence_mask["history"])


# ---- row rules against optax ----
@pytest.mark.parametrize("name,make", [("adagrad", lambda lr: optax.adagrad(lr)), ("adam", lambda lr: optax.adam(lr)),
                                       ("adamw", lambda lr: optax.adamw(lr, weight_decay=0.01)),
                                       ("sgd", lambda lr: optax.sgd(lr, momentum=0.9))])
def test_row_rule_on_every_row_is_optax(name, make):
  rng = np.random.default_rng(1)
  params = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)
  rule, tx, lr = RowRule(name, weight_decay=0.01 if name == "adamw" else 0.0), make(0.05), 0.05
  rows, state, opt = params, rule.init(params), tx.init(params)
  for step in range(1, 4):
    g = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)
    rows, state = jax.jit(rule)(rows, state, g, jnp.float32(-lr), jnp.int32(step))  # both jitted, as in training
    updates, opt = jax.jit(tx.update)(g, opt, params)
    params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(rows, params, rtol=1e-6, atol=1e-7)


def test_unknown_row_rule():
  with pytest.raises(ValueError, match="config.optimizer.name"):
    RowRule("lion")


def test_coupled_weight_decay_uses_the_row():
  rule = RowRule("sgd", weight_decay=0.5, momentum=0.0)
  rows, _ = rule(jnp.ones((1, 2)), rule.init(jnp.ones((1, 2))), jnp.zeros((1, 2)), jnp.float32(-0.1), jnp.int32(1))
  np.testing.assert_allclose(rows, 0.95)  # 1 - 0.1 * (0 + 0.5 * 1)


# ---- config ----
@pytest.mark.parametrize("key,value,match", [
    ("placement", "hash", "config.embedding.placement"),
    ("routing", "ring", "config.embedding.routing"),
    ("shard_axes", ("expert",), "config.embedding.shard_axes"),
    ("shard_axes", (), "config.embedding.shard_axes"),
    ("replicate_below", -1, "config.embedding.replicate_below"),
    ("capacity_factor", -0.5, "config.embedding.capacity_factor"),
])
def test_config_errors(key, value, match):
  c = tiny_config()
  c.mesh.axes, c.mesh.shape = ("data", "model"), (1, -1)
  c.embedding.sharded = True
  c.embedding[key] = value
  with pytest.raises(ValueError, match=match):
    configuration.validate(c)


def test_default_config_is_not_sharded_and_validates():
  c = tiny_config()
  configuration.validate(c)
  assert c.embedding.sharded is False
  c.embedding.sharded = True  # shard_axes ("model",) is not an axis of the default ("data",) mesh
  with pytest.raises(ValueError, match="config.embedding.shard_axes"):
    configuration.validate(c)


# ---- deduplication and the blocked row update (the fast paths equal the plain ones) ----
@pytest.mark.parametrize("slots,fill", [(40, 9), (40, 100), (6, 1000), (1, 0)])  # mark, mark, sort, mark
def test_dedup_equals_unique_and_segment_sum(slots, fill):
  rng = np.random.default_rng(slots + fill)
  local = jnp.asarray(rng.integers(0, fill + 1, slots), jnp.int32)  # fill = "not a row", repeated too
  g = jnp.asarray(rng.normal(size=(slots, 3)), jnp.float32)
  u, sums = jax.jit(routing.dedup, static_argnums=2)(local, g, fill)
  want_u, inv = jnp.unique(local, size=slots, fill_value=fill, return_inverse=True)
  np.testing.assert_array_equal(u, want_u)
  np.testing.assert_array_equal(sums, jax.ops.segment_sum(g, inv.reshape(-1), num_segments=slots))


def test_blocked_row_update_equals_one_pass(monkeypatch):
  rng = np.random.default_rng(3)
  table = jnp.asarray(rng.normal(size=(12, 2)), jnp.float32)
  rule = RowRule("adam")
  state = {"mu": table * 0.1, "nu": jnp.abs(table)}
  index = jnp.asarray(rng.permutation(12)[:10], jnp.int32).at[7:].set(12)  # 7 rows, 3 empty slots
  grads = se.RowGrads(index, jnp.asarray(rng.normal(size=(10, 2)), jnp.float32), jnp.int32(0), local=True)
  scalars = (jnp.float32(-0.1), jnp.int32(2))
  want = se._apply_rule(rule, table, state, index, grads.grads, *scalars)
  monkeypatch.setattr(se, "UPDATE_BLOCK_BYTES", 3 * 2 * 4)  # blocks of 3 slots: 3 blocks and a remainder
  got = jax.jit(lambda t, s: se.update_rows(t, s, grads, rule, se.TableSharding(), *scalars))(table, state)
  jax.tree.map(np.testing.assert_array_equal, got, want)
  assert not np.array_equal(got[0], table)
