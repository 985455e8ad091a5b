"""`configs/reference/`: the LCRON authors' training setup on RecFlow and on the simulator."""

import pytest

from cascadejax import configuration
from cascadejax.methods import METHODS
from configs.reference import (recflow_three_stage, recflow_two_stage, simulator_three_stage,
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
  assert c.data.list_size == 10 * (stages + 2) and c.data.label_values == "reference"
  assert c.method.name == "lcron"
  for method, cls in METHODS.items():   # every method's section holds exactly its published defaults
    assert c.method[method].to_dict() == dict(cls.defaults), method
  if name.startswith("simulator"):
    assert c.data.layout == "recflow" and c.data.num_train == c.train.steps * 1024   # one pass
