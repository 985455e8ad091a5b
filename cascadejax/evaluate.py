"""Evaluates a workdir's checkpoint: `python -m cascadejax.evaluate --workdir W [--split test] [--step N]`.

Rebuilds the run from `W/config.json`, restores the latest (or the given) checkpoint, runs the
jitted evaluation over the split, prints the metrics as JSON and appends them to `W/metrics.jsonl`
(with `"source": "evaluate"`).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from cascadejax import configuration
from cascadejax.checkpoint import Checkpointer
from cascadejax.experiment import Experiment
from cascadejax.metric_writer import MetricWriter


def restore(workdir: str, step: int | None = None):
  """`(experiment, state)` of a workdir's checkpoint (latest unless `step` is given)."""
  exp = Experiment.build(configuration.load(workdir))
  directory = os.path.join(workdir, "checkpoints")
  checkpointer = Checkpointer(directory)
  if checkpointer.latest_step() is None:
    raise FileNotFoundError(f"no checkpoint in {directory}: train first with train.py --workdir {workdir}")
  state = checkpointer.restore(exp.abstract_state(), step=step)
  checkpointer.close()
  return exp, state


def evaluate_workdir(workdir: str, split: str = "test", step: int | None = None) -> dict[str, Any]:
  """Evaluates the checkpoint and appends the report to `metrics.jsonl`; returns the report."""
  exp, state = restore(workdir, step)
  metrics = exp.evaluate(state.params["cascade"], split)
  writer = MetricWriter(workdir)
  report = writer.write(int(state.step), metrics, split=split, source="evaluate")
  writer.close()
  return report


def main(argv: list[str] | None = None) -> None:
  """Command-line entry point (see the module docstring)."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="a workdir written by train.py")
  parser.add_argument("--split", default="test", help="data split to evaluate on (default: test)")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  args = parser.parse_args(argv)
  print(json.dumps(evaluate_workdir(args.workdir, args.split, args.step), indent=2))


if __name__ == "__main__":
  main()
