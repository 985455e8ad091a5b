"""`config.multitask`: the task heads of a multi-task stage trained through the stock train step."""

import json

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict

from cascadejax import configuration, mesh as mesh_lib, multitask, trainer
from cascadejax.experiment import Experiment
from configs import mmoe_multitask
from tests.conftest import tiny_config

TASKS = ("click", "like")


def multitask_config(weight: float = 1.0) -> ConfigDict:
  c = tiny_config()
  c.data.feedback = TASKS
  c.cascade.prerank = ConfigDict(dict(model="mmoe", k=2, model_kwargs=ConfigDict(dict(
      tasks=TASKS, num_experts=2, expert=(4,), tower=(4,)))))
  c.multitask = ConfigDict(dict(weight=weight, task_weights=ConfigDict(dict(like=2.0))))
  return c


def test_the_example_config_trains_mmoe_heads():
  sections = configuration.validate(mmoe_multitask.get_config())
  assert sections.multitask.weight == 1.0
  assert [s.model for s in sections.cascade.stages] == ["two_tower", "mmoe"]


def test_train_step_adds_the_weighted_task_losses():
  """The step's loss is the method's plus w * sum_t c_t L_t, each term recomputed independently."""
  c = multitask_config(weight=0.5)
  exp = Experiment.build(c)
  state = exp.init_state()
  batch = mesh_lib.put_batch(exp.data.splits["train"].take(slice(0, 16)), exp.mesh)
  params = state.params  # read before the step donates the state

  @jax.jit  # one compile instead of an eager dispatch per operation (suite time); the same formulas
  def by_hand(params, batch):
    out = exp.cascade.apply({"params": params["cascade"]}, batch.user, batch.items)
    method_loss, _ = exp.method.loss(params["method"], out.scores, batch, rng=jax.random.key(0))
    return (method_loss, *multitask.loss(out.aux, batch, num_stages=2, weights={"like": 2.0}))

  method_loss, want, terms = by_hand(params, batch)
  expected = {k: float(v) for k, v in terms.items()}
  expected_total, expected_method = float(want), float(method_loss)
  _, m = exp.train_step(state, batch)
  assert set(expected) == {"task/prerank/click", "task/prerank/like"}
  for k, v in expected.items():
    np.testing.assert_allclose(float(m[k]), v, rtol=1e-5)
  np.testing.assert_allclose(float(m["loss/tasks"]), expected_total, rtol=1e-5)
  np.testing.assert_allclose(float(m["loss"]), expected_method + 0.5 * expected_total, rtol=1e-5)


def test_train_py_logs_task_losses_and_learns_them(tmp_path):
  c = multitask_config()
  c.train.steps, c.train.log_every, c.train.eval_every = 40, 10, 0
  c.optimizer.learning_rate = 3e-2
  trainer.train_and_evaluate(c, str(tmp_path))
  lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  train = [r for r in lines if r.get("split") == "train"]
  assert len(train) == 4 and all("task/prerank/like" in r and "loss/tasks" in r for r in train)
  assert train[-1]["loss/tasks"] < train[0]["loss/tasks"]


def test_a_task_weight_needs_a_multi_task_stage():
  c = tiny_config()
  c.multitask = ConfigDict(dict(weight=1.0))
  with pytest.raises(ValueError, match=r"config.multitask.weight=1.0 trains the task heads .* no stage model has"):
    configuration.validate(c)
  c.multitask.weight = -1.0
  with pytest.raises(ValueError, match=r"config.multitask.weight must be >= 0"):
    configuration.validate(c)
