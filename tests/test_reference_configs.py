"""`configs/reference/`: the LCRON authors' training setup on RecFlow and on the simulator."""

import jax
import numpy as np
import pytest

from cascadejax import configuration, metric_writer, trainer
from cascadejax.losses.cascade import METHODS
from configs.reference import (published, recflow_three_stage, recflow_two_stage, simulator_three_stage,
                               simulator_two_stage)

CONFIGS = {"recflow_two_stage": recflow_two_stage, "recflow_three_stage": recflow_three_stage,
           "simulator_two_stage": simulator_two_stage, "simulator_three_stage": simulator_three_stage}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_reference_config_is_the_published_setup(name):
  c = CONFIGS[name].get_config()
  configuration.validate(c)
  o = c.optimizer
  assert (o.name, o.learning_rate, o.schedule, o.warmup_steps, o.grad_clip, o.weight_decay) == (
      "adam", 1e-2, "constant", 0, 0.0, 0.0)
  assert c.train.batch_size == 1024 and c.embedding.dim == 8 and not c.embedding.shared
  assert c.cascade.gt_num == 10
  stages = 3 if "three" in name else 2
  assert tuple(c.cascade[s].k for s in c.cascade.stages) == ((40, 30, 20) if stages == 3 else (30, 20))
  assert c.data.list_size == 10 * (stages + 2)
  for method, cls in METHODS.items():   # every method's section holds exactly its published defaults
    assert c.method[method].to_dict() == dict(cls.defaults), method
  if name.startswith("simulator"):
    assert c.data.layout == "recflow" and c.data.num_train == c.train.steps * 1024   # one pass


@pytest.mark.parametrize("name", ["simulator_two_stage", "simulator_three_stage"])
def test_simulator_reference_config_trains(name, tmp_path):
  c = CONFIGS[name].get_config()
  stages = len(c.cascade.stages)
  d = c.data
  d.num_train, d.num_test, d.num_users, d.num_items, d.per_group = 64, 16, 50, 200, 2
  d.list_size, d.pool_size = 2 * (stages + 2), 40
  d.production.ks = (20, 10, 5) if stages == 2 else (24, 12, 6, 3)
  d.cache_dir = str(tmp_path / "cache")
  c.cascade.gt_num = 2
  for s, k in zip(c.cascade.stages, (6, 4, 3) if stages == 3 else (5, 3)):
    c.cascade[s].k = k
  c.train.batch_size = c.train.eval_batch_size = 16
  c.train.steps, c.train.log_every, c.train.checkpoint_every, c.train.progress_bar = 2, 1, 2, False
  final = trainer.train_and_evaluate(c, str(tmp_path / "run"))
  assert 0 <= final["recall_e2e"] <= 1
  train = [r for r in metric_writer.read(str(tmp_path / "run")) if r.get("split") == "train"]
  assert len(train) == 2 and all(np.isfinite(r["loss"]) for r in train)
  assert published.methods().name == "lcron" == c.method.name
  jax.clear_caches()
