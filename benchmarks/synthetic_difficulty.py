"""How hard is a synthetic config? End-to-end recall of reference cascades on its test split.

  python benchmarks/synthetic_difficulty.py [--config configs/default.py]

Uses the simulator's hidden truth (noiseless teacher views) to score reference cascades with the
config's k's, and prints their `recall_e2e` next to random selection:

  oracle          stage 1 ranks by the first production teacher's noiseless view, later stages by
                  the noiseless utility: the best a learned cascade can do without the teachers' noise
  utility only    every stage ranks by the noiseless utility (ignores what production retrieval saw)
  retrieval view  every stage ranks by the first teacher's view (no user-group x category cross)
  random          uniformly random selection (its exact expectation)
"""

from __future__ import annotations

import argparse
import os
import sys

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cascadejax import configuration, metrics  # noqa: E402
from cascadejax.data import synthetic, synthetic_world  # noqa: E402


def main() -> None:
  """Prints the reference cascades' end-to-end recall."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/default.py")
  args = parser.parse_args()
  config = configuration.from_file(args.config)
  num_stages = len(config.cascade.stages)
  ks = tuple(config.cascade[s].k for s in config.cascade.stages)
  test = synthetic.load(config.data, num_stages).splits["test"]
  world = synthetic_world.hidden_world(config.data)
  index = lambda ids: np.maximum(ids - 1, 0)  # padding slots score anything; they are masked
  view, utility = synthetic_world.teacher_views(config.data, world, index(test.user["user_id"]),
                                          index(test.user["context"]), index(test.items["item_id"]))
  where, labels = jnp.asarray(test.mask), jnp.asarray(test.label)
  recall = lambda stages: float(metrics.cascade_recall(jnp.asarray(np.stack(stages)), ks, labels,
                                                       gt_num=config.cascade.gt_num, where=where))
  rows = {
      "oracle": recall([view] + [utility] * (num_stages - 1)),
      "utility only": recall([utility] * num_stages),
      "retrieval view": recall([view] * num_stages),
      "random": float(metrics.random_recall(ks[-1], gt_num=config.cascade.gt_num, where=where)),
  }
  print(f"{args.config}: ks {ks}, gt_num {config.cascade.gt_num}, {test.batch_size} test requests")
  for name, value in rows.items():
    print(f"  {name:16s} recall_e2e {value:.4f}")


if __name__ == "__main__":
  main()
