"""Checkpoints moving between device counts (8 -> 1 and 1 -> 8); `tests/test_eight_devices.py`
runs this file in a child pytest with 8 forced CPU devices.

Each case trains 8 steps on one mesh, drops the last checkpoint (as if the run had been killed
after step 4's), and resumes on another mesh. The result must equal an uninterrupted run on the
resuming mesh, to float tolerance (the meshes sum in different orders).
"""

import math
import os
import shutil

import jax
import numpy as np
import pytest

from cascadejax import mesh as mesh_lib, trainer, workdir as workdir_lib
from cascadejax.checkpoint import Checkpointer
from cascadejax.experiment import Experiment
from tests.conftest import tiny_config

STEPS = 8


def _config(mesh_shape, sharded, shard_axes=("model",), placement="mod"):
  c = tiny_config()
  c.train.steps, c.train.eval_every = STEPS, 0
  c.mesh.axes, c.mesh.shape = ("data", "model"), mesh_shape
  if sharded:  # item_id (61 rows) row-sharded, user_id (41) replicated
    c.embedding.update(sharded=True, replicate_below=50, shard_axes=shard_axes, placement=placement)
  return c


def _run(config, workdir):
  mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:math.prod(config.mesh.shape)])
  return trainer.train_and_evaluate(config, str(workdir), mesh=mesh)


def _close(got, want):
  assert got.keys() == want.keys()
  for k, v in want.items():
    if isinstance(v, float):
      np.testing.assert_allclose(got[k], v, rtol=2e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("first, then, sharded, shard_axes, placement", [
    ((2, 4), (1, 1), True, ("data", "model"), "range"),  # 8 shards -> 1
    ((1, 1), (2, 4), True, ("model",), "mod"),  # 1 shard -> 4
    ((2, 4), (1, 1), False, ("model",), "mod"),  # replicated parameters, 8 data-parallel devices -> 1
])
def test_resume_on_another_device_count(tmp_path, monkeypatch, first, then, sharded, shard_axes, placement):
  assert jax.device_count() == 8, "run through tests/test_eight_devices.py (8 forced CPU devices)"
  workdir = tmp_path / "moved"
  before = _run(_config(first, sharded, shard_axes, placement), workdir)
  shutil.rmtree(workdir / "checkpoints" / str(STEPS))
  saved = Checkpointer(str(workdir / "checkpoints"))
  assert saved.latest_step() == 4 and saved.layout()["devices"] == math.prod(first)
  saved.close()

  def no_fresh_start(self):
    raise AssertionError("the run started afresh instead of resuming")

  monkeypatch.setattr(Experiment, "init_state", no_fresh_start)
  after = _run(_config(then, sharded, shard_axes, placement), workdir)
  monkeypatch.undo()
  reference = _run(_config(then, sharded, shard_axes, placement), tmp_path / "reference")
  _close(after, reference)
  _close(before, reference)  # the two meshes agree anyway; the moved run lost nothing on the way
  final = Checkpointer(str(workdir / "checkpoints"))
  assert final.layout()["devices"] == math.prod(then)
  final.close()


def test_evaluate_reads_an_eight_device_checkpoint_on_one(tmp_path):
  config = _config((2, 4), True, ("data", "model"), "mod")
  report = _run(config, tmp_path)
  one = jax.devices()[:1]
  with pytest.raises(ValueError, match=r"needs 8 devices.*--mesh_shape"):
    workdir_lib.restore(str(tmp_path), devices=one)
  exp, state = workdir_lib.restore(str(tmp_path), mesh_shape=(1, 1), devices=one)
  assert exp.cascade.embedding.sharding.num_shards == 1
  table = state.params["cascade"]["embedding_retrieval"]["item_id"]
  assert table.shape == (61, 4) and len(table.sharding.device_set) == 1
  metrics = exp.evaluate(state.params["cascade"], "test")
  _close({k: report[k] for k in metrics}, metrics)
  # The logical table and its Adam moments are those of the 8-device run.
  exp8, state8 = workdir_lib.restore(str(tmp_path))
  s8 = exp8.cascade.embedding.sharding
  np.testing.assert_array_equal(s8.to_logical(state8.params["cascade"]["embedding_retrieval"]["item_id"], 61), table)
  np.testing.assert_array_equal(s8.to_logical(state8.opt_state["rows"]["embedding_retrieval"]["item_id"]["nu"], 61),
                                state.opt_state["rows"]["embedding_retrieval"]["item_id"]["nu"])
  assert os.path.exists(tmp_path / "checkpoints" / str(STEPS) / "layout")
