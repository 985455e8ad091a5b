"""Converts a config's data once, ahead of training: `python -m cascadejax.data.convert --config C`.

`train.py` converts on first use as well; running this first shows the progress bars and the
conversion report (rows read, every documented filter's count, out-of-vocabulary ids per table) and
leaves the result in `config.data.cache_dir` for every later run. For the logs reader a second run
converts only the days the store lacks (new day files). Other readers build their cache entry.

  python -m cascadejax.data.convert --config configs/logs_example.py [--config.data.train_days=...]
"""

from __future__ import annotations

import json
from typing import Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from cascadejax import data as data_lib, overrides
from cascadejax.sections import plain

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (a Python file with get_config()).",
                                          lock_config=True)


def run(config) -> dict:
  """Converts `config.data` for `config.cascade`'s number of stages; returns the data's report."""
  num_stages = len(config.cascade.stages)
  loaded = data_lib.load(config.data, num_stages)
  report = dict(plain(loaded.report))
  report["requests"] = {split: int(batch.batch_size) for split, batch in loaded.splits.items()}
  return report


def main(argv: Sequence[str]) -> None:
  """Converts and prints the report as JSON."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  report = run(_CONFIG.value)
  report.pop("conversions", None)
  print(json.dumps(report, indent=1, sort_keys=True, default=str))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=overrides.parse_flags)
