"""LCRON on the three-stage synthetic default: two-tower (50 -> 30) -> MLP (30 -> 20) -> DCN-v2 (20 -> 10).

The data, models, optimizer and schedule are those of `configs/three_stage.py` (the `independent`
baseline); only the training method differs.

Run:
  python train.py --config configs/lcron_three_stage.py --workdir /tmp/cascadejax/lcron_three_stage
"""

from ml_collections import ConfigDict

from configs import lcron, three_stage


def get_config() -> ConfigDict:
  """`configs/three_stage.py` trained with `lcron`."""
  c = three_stage.get_config()
  c.method.name = "lcron"
  c.method.lcron = lcron.lcron_options()
  return c
