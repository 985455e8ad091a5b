"""Sharded embedding tests that need 8 devices; `tests/test_eight_devices.py` runs this file in a
child pytest with `XLA_FLAGS=--xla_force_host_platform_device_count=8` (the name keeps the parent
pytest from collecting it in a process whose devices are already fixed).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh

from cascadejax.embedding import sharded as se
from cascadejax import mesh as mesh_lib
from cascadejax.experiment import Experiment
from cascadejax.embedding.row_rules import RowRule
from tests.conftest import tiny_config

V, D, B, T = 37, 3, 8, 5
LAYOUTS = [(axes, placement, routing) for axes in (("model",), ("data", "model"))
           for placement in ("mod", "range") for routing in ("gather", "all_to_all")]


@pytest.fixture(scope="module")
def mesh():
  assert jax.device_count() == 8, "run through tests/test_eight_devices.py (8 forced CPU devices)"
  return Mesh(np.asarray(jax.devices()).reshape(2, 4), ("data", "model"))


def _layout(axes, placement, routing):
  return se.TableSharding(axes=axes, num_shards=4 if axes == ("model",) else 8, placement=placement, routing=routing)


def _data(seed=0):
  rng = np.random.default_rng(seed)
  table = jnp.asarray(rng.normal(size=(V, D)), jnp.float32)
  # Ids repeat within a request, across requests and across data shards (half the batch is id 3).
  ids = jnp.asarray(np.where(rng.random((B, T)) < 0.5, 3, rng.integers(0, V, (B, T))), jnp.int32)
  weights = jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32)
  return table, ids, weights


def _dense_rows(s, grads: se.RowGrads):
  """RowGrads -> the logical `[V, D]` gradient they stand for (duplicate slots would add up)."""
  r = s.rows_per_shard(V)
  index, g = np.asarray(grads.index).reshape(s.num_shards, -1), np.asarray(grads.grads)
  dense = np.zeros((s.num_shards * r, D), np.float32)
  for k in range(s.num_shards):
    for j, i in enumerate(index[k]):
      if i < r:
        dense[k * r + i] += g[k * index.shape[1] + j]
  return np.asarray(s.to_logical(dense, V)), index


@pytest.mark.parametrize("axes,placement,routing", LAYOUTS)
def test_lookup_and_gradient_equal_take(mesh, axes, placement, routing):
  s = _layout(axes, placement, routing)
  table, ids, w = _data()
  physical = s.to_physical(table)
  with jax.set_mesh(mesh):
    rows = jax.jit(lambda t: se.lookup(t, ids, s, V))(physical)
    grad = jax.jit(jax.grad(lambda t: jnp.sum(se.lookup(t, ids, s, V) * w)))(physical)
  np.testing.assert_array_equal(rows, jnp.take(table, ids, axis=0))
  want = jax.grad(lambda t: jnp.sum(jnp.take(t, ids, axis=0) * w))(table)
  np.testing.assert_allclose(s.to_logical(grad, V), want, rtol=1e-6, atol=1e-6)
  if placement == "range":
    assert not np.any(np.asarray(grad)[V:])  # padding rows get nothing


@pytest.mark.parametrize("axes,placement,routing", LAYOUTS)
def test_row_grads_are_the_dense_gradient_deduplicated(mesh, axes, placement, routing):
  s = _layout(axes, placement, routing)
  table, ids, w = _data(1)
  with jax.set_mesh(mesh):
    tap_grads = jax.jit(jax.grad(lambda tap: jnp.sum(se.lookup(s.to_physical(table), ids, s, V, tap=tap) * w)))(
        jnp.zeros((B, T, D)))
    grads = jax.jit(lambda g: se.owner_row_grads(ids, g, s, V))(tap_grads)
  dense, index = _dense_rows(s, grads)
  want = jax.grad(lambda t: jnp.sum(jnp.take(t, ids, axis=0) * w))(table)
  np.testing.assert_allclose(dense, want, rtol=1e-5, atol=1e-6)
  # Each touched row appears in exactly one slot of one shard: duplicates were summed, not repeated.
  r = s.rows_per_shard(V)
  slots = [k * r + i for k in range(s.num_shards) for i in index[k] if i < r]
  assert len(slots) == len(set(slots)) == len(np.unique(np.asarray(ids)))
  # Id 3 fills about half the batch; its gradient is the sum over every occurrence.
  np.testing.assert_allclose(dense[3], np.asarray(w)[np.asarray(ids) == 3].sum(0), rtol=1e-5)


def test_all_to_all_capacity(mesh):
  """Bounded buckets: exact results while no bucket overflows; overflowing ids read zeros and are counted."""
  table = _data()[0]
  w = jnp.ones((B, T, D))
  ids = jnp.arange(B * T).reshape(B, T) % V  # every device's share of 5 ids spans 4 owners: <= 2 per bucket
  roomy = se.TableSharding(axes=("model",), num_shards=4, routing="all_to_all", capacity_factor=2.0)  # 3 slots
  tight = se.TableSharding(axes=("model",), num_shards=4, routing="all_to_all", capacity_factor=1.0)  # 2 slots
  crowded = 4 * (jnp.arange(B * T).reshape(B, T) % 9)  # every id on shard 0 (mod placement)

  def run(s, ids):
    def f(t):
      tap_grads = jax.grad(lambda tap: jnp.sum(se.lookup(t, ids, s, V, tap=tap) * w))(jnp.zeros((B, T, D)))
      return se.lookup(t, ids, s, V), se.owner_row_grads(ids, tap_grads, s, V)
    with jax.set_mesh(mesh):
      return jax.jit(f)(s.to_physical(table))

  rows, grads = run(roomy, ids)
  np.testing.assert_array_equal(rows, jnp.take(table, ids, axis=0))
  assert int(grads.dropped) == 0
  rows, grads = run(tight, crowded)
  served = np.any(np.asarray(rows) != 0, axis=-1)
  # 8 devices, each sending 5 ids to shard 0 through 2 slots: 3 dropped each.
  assert int(grads.dropped) == 24 == (~served).sum()
  np.testing.assert_array_equal(np.asarray(rows)[served], np.asarray(table)[np.asarray(crowded)][served])


@pytest.mark.parametrize("combiner", ["sum", "mean"])
def test_pooled_lookup(mesh, combiner):
  s = _layout(("model",), "mod", "all_to_all")
  table, ids, _ = _data(2)
  mask = jnp.asarray(np.arange(T)[None, :] < np.array([0, 1, 2, 3, 4, 5, 5, 2])[:, None])
  with jax.set_mesh(mesh):
    pooled = jax.jit(lambda t: se.pool(se.lookup(t, ids, s, V), mask, combiner))(s.to_physical(table))
  rows = np.asarray(table)[np.asarray(ids)] * np.asarray(mask)[..., None]
  want = rows.sum(1) / (np.maximum(np.asarray(mask).sum(1), 1)[:, None] if combiner == "mean" else 1)
  np.testing.assert_allclose(pooled, want, rtol=1e-6, atol=1e-7)
  assert not np.any(np.asarray(pooled)[0])  # an empty bag pools to zeros


@pytest.mark.parametrize("name,routing", [("adagrad", "gather"), ("adam", "all_to_all")])
def test_sparse_update_equals_optax_on_touched_rows(mesh, name, routing):
  """Two steps; the second looks up a subset of the first's rows."""
  s = _layout(("data", "model"), "mod", routing)
  table, ids1, w = _data(3)
  ids2 = ids1.at[:, 2:].set(3)  # fewer distinct ids: some rows of step 1 are untouched in step 2
  rule, lr = RowRule(name), 0.1
  dense_tx = {"adagrad": optax.adagrad, "adam": optax.adam}[name](lr)

  @jax.jit
  def sparse_step(t, st, ids, count):
    tap = jax.grad(lambda tap: jnp.sum(se.lookup(t, ids, s, V, tap=tap) * w))(jnp.zeros((B, T, D)))
    return se.update_rows(t, st, se.owner_row_grads(ids, tap, s, V), rule, s, jnp.float32(-lr), count)

  with jax.set_mesh(mesh):
    t1, st1 = sparse_step(s.to_physical(table), jax.tree.map(s.to_physical, rule.init(table)), ids1, 1)
    t2, st2 = sparse_step(t1, st1, ids2, 2)
  loss = lambda t, ids: jnp.sum(jnp.take(t, ids, axis=0) * w)
  d1, opt = table, dense_tx.init(table)
  upd, opt = dense_tx.update(jax.grad(loss)(d1, ids1), opt, d1)
  d1 = optax.apply_updates(d1, upd)
  np.testing.assert_allclose(s.to_logical(t1, V), d1, rtol=1e-6, atol=1e-7)  # step 1 from zero state: all rows
  upd, opt = dense_tx.update(jax.grad(loss)(d1, ids2), opt, d1)
  d2 = optax.apply_updates(d1, upd)
  touched2, touched1 = np.unique(np.asarray(ids2)), np.unique(np.asarray(ids1))
  untouched = np.setdiff1d(touched1, touched2)
  assert len(untouched) > 3
  np.testing.assert_allclose(s.to_logical(t2, V)[touched2], d2[touched2], rtol=1e-6, atol=1e-7)
  # Lazy: rows not looked up in step 2 keep their parameters and state bit for bit.
  np.testing.assert_array_equal(s.to_logical(t2, V)[untouched], s.to_logical(t1, V)[untouched])
  for k in st1:
    np.testing.assert_array_equal(s.to_logical(st2[k], V)[untouched], s.to_logical(st1[k], V)[untouched])
  never = np.setdiff1d(np.arange(V), touched1)
  np.testing.assert_array_equal(s.to_logical(t2, V)[never], np.asarray(table)[never])
  if name == "adam":  # dense Adam moves untouched rows by their momentum; lazy Adam does not
    assert not np.allclose(d2[untouched], d1[untouched])


def _train(config, devices, steps=3, evaluate=False):
  exp = Experiment.build(config, mesh_lib.make_mesh(config.mesh, devices))
  state, split, log = exp.init_state(), exp.data.splits["train"], []
  for i in range(steps):
    batch = mesh_lib.put_batch(split.take(slice(16 * i, 16 * (i + 1))), exp.mesh)
    state, m = exp.train_step(state, batch)
    log.append({k: float(v) for k, v in m.items()})
  return exp, state, log, (exp.evaluate(state.params["cascade"], "test") if evaluate else None)


def _sharded_config(mesh_shape, **embedding):
  c = tiny_config()
  c.mesh.axes, c.mesh.shape = ("data", "model"), mesh_shape
  c.embedding.sharded, c.embedding.replicate_below = True, 50  # item_id (61 rows) sharded, user_id (41) not
  c.embedding.update(embedding)
  return c


def _close(a, b):
  for x, y in zip(a, b, strict=True):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_allclose(x[k], y[k], rtol=2e-5, atol=1e-6, err_msg=k)


def test_training_on_2x4_mesh_matches_one_device():
  exp8, state8, log8, eval8 = _train(_sharded_config((2, 4)), jax.devices(), evaluate=True)
  table = state8.params["cascade"]["embedding_retrieval"]["item_id"]
  assert table.sharding.spec == jax.sharding.PartitionSpec(("model",))
  assert state8.params["cascade"]["embedding_retrieval"]["user_id"].sharding.is_fully_replicated
  assert state8.opt_state["rows"]["embedding_retrieval"]["item_id"]["mu"].sharding.spec == table.sharding.spec
  exp1, state1, log1, eval1 = _train(_sharded_config((1, 1)), jax.devices()[:1], evaluate=True)
  _close(log8, log1)
  _close([eval8], [eval1])
  s8, s1 = exp8.cascade.embedding.sharding, exp1.cascade.embedding.sharding
  np.testing.assert_allclose(s8.to_logical(table, 61), s1.to_logical(
      state1.params["cascade"]["embedding_retrieval"]["item_id"], 61), rtol=1e-5, atol=1e-7)


def test_sparse_adagrad_training_matches_dense_adagrad():
  """Adagrad has no lazy difference: 8-device sparse training equals the 1-device dense path.

  Also covers tables shared by every stage, split over all 8 devices, all-to-all routing, range placement.
  """
  sparse = _sharded_config((2, 4), routing="all_to_all", placement="range", shard_axes=("data", "model"),
                           shared=True)
  dense = tiny_config()
  dense.embedding.shared = True
  for c in (sparse, dense):
    c.optimizer.name = "adagrad"
  _, state8, log8, _ = _train(sparse, jax.devices())
  _, state1, log1, _ = _train(dense, jax.devices()[:1])
  _close(log8, log1)
  got = state8.params["cascade"]["embedding"]["item_id"]
  assert got.shape == (64, 4)  # 61 rows padded to 8 shards of 8
  np.testing.assert_allclose(got[:61], state1.params["cascade"]["embedding"]["item_id"], rtol=1e-5, atol=1e-7)
