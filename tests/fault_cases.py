"""The tiny run tests/test_faults.py kills and restarts: `python -m tests.fault_cases WORKDIR` trains
`config()` into WORKDIR (with `CASCADEJAX_FAULT` from the environment, `cascadejax.faults`)."""

import sys

from tests.conftest import tiny_config


def config():
  """The tiniest cascade: 6 steps of batch 16, a report every 2 steps, a checkpoint every 2, an
  evaluation at step 4."""
  c = tiny_config()
  c.train.steps, c.train.log_every, c.train.checkpoint_every, c.train.eval_every = 6, 2, 2, 4
  c.train.keep_checkpoints = 3
  return c


if __name__ == "__main__":
  from absl import logging

  from cascadejax import trainer  # after conftest has set XLA_FLAGS

  logging.use_absl_handler()  # INFO lines ("resumed from step ...") on stderr, which the tests read
  logging.set_verbosity(logging.INFO)

  trainer.train_and_evaluate(config(), sys.argv[1])
