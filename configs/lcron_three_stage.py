"""LCRON on the three-stage synthetic default: two-tower (50 -> 30) -> MLP (30 -> 20) -> DCN-v2 (20 -> 10).

The data, models, optimizer and schedule are those of `configs/three_stage.py` (the `independent`
baseline); only the training method differs.

Run:
  python train.py --config configs/lcron_three_stage.py --workdir /tmp/cascadejax/lcron_three_stage
  python train.py --config configs/lcron_three_stage.py --workdir /tmp/cascadejax/lcron_three_t10 \
      --config.method.lcron.temperature=10.0

Result (2-core CPU, 5 seeds, docs/results.md): with temperature 10 LCRON reaches test recall_e2e
0.795 +/- 0.002 against `independent`'s 0.785 +/- 0.004, above it on 5/5 seeds (+0.0104 +/- 0.0034
paired).
"""

from ml_collections import ConfigDict

from configs import lcron, three_stage


def get_config() -> ConfigDict:
  """`configs/three_stage.py` trained with `lcron`."""
  c = three_stage.get_config()
  c.method.name = "lcron"
  c.method.lcron = lcron.lcron_options()
  return c
