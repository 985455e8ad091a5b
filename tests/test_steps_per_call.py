"""K train steps per dispatch (`config.train.steps_per_call`, `config.data.on_device`) against one per
call: the same parameters bit for bit, the same metrics.jsonl lines, and resuming from a checkpoint
that is not a multiple of K."""

import os
import shutil

import jax
import numpy as np
import pytest

from cascadejax import configuration, mesh as mesh_lib, metric_writer, trainer
from cascadejax.data import pipeline
from cascadejax.experiment import Experiment
from cascadejax.workdir import restore
from tests.conftest import tiny_config

STEPS = 16


def _config(k: int = 1, *, on_device: bool = False, sparse: bool = False, checkpoint_every: int = 8):
  c = tiny_config()
  t = c.train
  t.steps, t.log_every, t.eval_every, t.checkpoint_every, t.keep_checkpoints = STEPS, 8, 0, checkpoint_every, 20
  t.steps_per_call = k
  c.data.on_device = on_device
  if sparse:  # row-sharded tables: the row-sparse update path (`cascadejax.embedding.update`)
    c.embedding.update(sharded=True, shard_axes=("data",), replicate_below=10)
  return c


def _params(workdir, step=None):
  return jax.tree.leaves(jax.device_get(restore(workdir, step)[1].params))


def _lines(workdir):
  """metrics.jsonl without the wall-clock throughput."""
  return [{k: v for k, v in line.items() if k != "requests_per_s"} for line in metric_writer.read(workdir)]


def _same(a, b):
  return len(a) == len(b) and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """One step per call, a checkpoint every 2 steps (so a resume can start off a multiple of K)."""
  workdir = str(tmp_path_factory.mktemp("k1"))
  report = trainer.train_and_evaluate(_config(checkpoint_every=2), workdir)
  return workdir, report


def test_k_steps_per_call_equal_single_steps(reference, tmp_path):
  ref, ref_report = reference
  workdir = str(tmp_path / "k4")
  report = trainer.train_and_evaluate(_config(4), workdir)
  assert report == ref_report
  assert _same(_params(workdir), _params(ref))
  assert _same(_params(workdir, 8), _params(ref, 8))  # after every block of K steps too
  ref_lines = [line for line in _lines(ref)]
  assert _lines(workdir) == ref_lines and len(ref_lines) == 3  # steps 8 and 16, and the final report


def test_resume_off_a_multiple_of_k_with_the_split_on_device(reference, tmp_path):
  """A K = 1 run's checkpoint at step 6 resumed with K = 4 and on_device: steps 7-8 run one per call,
  9-16 as two blocks, and the run ends exactly as the uninterrupted one."""
  ref, ref_report = reference
  workdir = str(tmp_path / "resumed")
  shutil.copytree(ref, workdir)
  checkpoints = os.path.join(workdir, "checkpoints")
  for name in os.listdir(checkpoints):
    if name.isdigit() and int(name) > 6:
      shutil.rmtree(os.path.join(checkpoints, name))
  report = trainer.train_and_evaluate(_config(4, on_device=True, checkpoint_every=2), workdir)
  assert report == ref_report
  assert _same(_params(workdir), _params(ref))
  lines, ref_lines = _lines(workdir), _lines(ref)
  assert [line["step"] for line in lines] == [8, 16, 16]
  assert lines[1:] == ref_lines[1:]  # step 8's line averages the steps since the resume (7 and 8)


def test_sparse_embedding_update_k_steps_equal_single_steps():
  """Row-sharded tables (the row-sparse update path): two calls of 4 steps = 8 calls of one step,
  state and summed metrics bit for bit."""
  exp = Experiment.build(_config(sparse=True))
  assert exp.update.num_shards is not None  # the sparse path really runs
  ds = pipeline.train_dataset(exp.data.splits["train"], global_batch_size=exp.sections.train.batch_size, seed=0)
  batches = [ds[t] for t in range(8)]
  one, sums = exp.init_state(), None
  for batch in batches:
    one, metrics = exp.train_step(one, mesh_lib.put_batch(batch, exp.mesh))
    sums = trainer.accumulate(sums, metrics)
  four, four_sums = exp.init_state(), exp.zero_sums()
  for block in (batches[:4], batches[4:]):
    four, four_sums = exp.train_steps(4)(four, exp.stack_batches(block), four_sums)
  assert _same(jax.tree.leaves(jax.device_get(four)), jax.tree.leaves(jax.device_get(one)))
  assert jax.device_get(four_sums) == jax.device_get(sums)


@pytest.mark.parametrize("key,value,match", [
    ("train.steps_per_call", 0, "config.train.steps_per_call must be >= 1"),
    ("train.steps_per_call", -4, "config.train.steps_per_call must be >= 1"),
])
def test_bad_values_name_the_key(key, value, match):
  c = _config()
  section, name = key.split(".")
  c[section][name] = value
  with pytest.raises(ValueError, match=match):
    configuration.validate(c)


def test_steps_per_call_and_on_device_are_resumable_changes():
  saved, now = _config(1), _config(4, on_device=True)
  assert configuration.check_resumable(saved, now, "W") == ["data.on_device", "train.steps_per_call"]
