"""Checkpoints written by older code restore with the current one (tests/fixtures/pre_issue19)."""

import json
import pathlib
import re
import shutil

import jax
import numpy as np
import pytest

from cascadejax import configuration, trainer
from cascadejax.checkpoint import Checkpointer
from cascadejax.experiment import Experiment

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "pre_issue19"


@pytest.mark.parametrize("name", ["dense", "sharded"])
def test_a_pre_issue19_checkpoint_restores_evaluates_and_resumes(tmp_path, name):
  workdir = tmp_path / name
  shutil.copytree(FIXTURES / name, workdir)
  config = configuration.load(str(workdir))
  exp = Experiment.build(config)
  checkpointer = Checkpointer(str(workdir / "checkpoints"))
  state = exp.restore(checkpointer)
  checkpointer.close()
  expected = np.load(workdir / "expected_state.npz")
  got = {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(
      {"params": state.params, "opt_state": state.opt_state})}
  assert set(got) == set(expected.files)
  for key in expected.files:
    np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
  final = [json.loads(line) for line in open(workdir / "metrics.jsonl") if '"final": true' in line][-1]
  metrics = exp.evaluate(state.params["cascade"], "test")
  for key, value in metrics.items():
    np.testing.assert_allclose(value, final[key], rtol=1e-6, atol=1e-7, err_msg=key)
  config.train.steps = 6  # resume past the old checkpoint
  report = trainer.train_and_evaluate(config, str(workdir))
  assert report["step"] == 6 and np.isfinite(report["recall_e2e"])


def test_a_pre_checksums_checkpoint_of_another_config_fails_in_one_line(tmp_path, caplog):
  shutil.copytree(FIXTURES / "dense", tmp_path / "dense")
  config = configuration.load(str(tmp_path / "dense"))
  config.embedding.dim *= 2
  checkpointer = Checkpointer(str(tmp_path / "dense" / "checkpoints"))
  with pytest.raises(ValueError) as err:
    Experiment.build(config).restore(checkpointer)
  assert re.match(rf"checkpoint step 4 in {tmp_path / 'dense' / 'checkpoints'} does not fit this config's arrays "
                  r"\(Requested shape: \(\d+, 8\) is not compatible with the stored shape: \(\d+, 4\)", str(err.value))
  assert len(str(err.value).splitlines()) == 1
  assert caplog.text.count("unverified") == 1  # one warning: it predates checksums
