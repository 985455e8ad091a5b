"""Evaluates a workdir's checkpoint: `python -m cascadejax.evaluate --workdir W [--split test] [--step N]`.

`--mesh_shape=1,1` reads a checkpoint written on more devices than this machine has (docs/sharding.md).

Rebuilds the run from `W/config.json`, restores the latest (or the given) checkpoint, runs the
jitted evaluation over the split, prints the metrics as JSON and appends them to `W/metrics.jsonl`
(with `"source": "evaluate"`).

Re-ranking: when the run's config has a `config.rerank` section with a `method` other than "none"
(see `cascadejax.rerank.DEFAULTS`), or `--rerank KEY=VALUE` options are given (they override the
section), the report also carries the metrics of the list finally shown, chosen from the last
stage's survivors, without (`shown/...`) and with (`rerank/...`) the re-ranking stage:

  python -m cascadejax.evaluate --workdir W --rerank method=mmr --rerank k=5 --rerank mmr_lambda=0.5
"""

from __future__ import annotations

import argparse
import ast
import json
import os
from typing import Any, Sequence

import jax

from cascadejax import configuration, metrics, rerank, mesh as mesh_lib
from cascadejax.ops.selection import select
from cascadejax.data import pipeline
from cascadejax.checkpoint import Checkpointer
from cascadejax.experiment import Experiment
from cascadejax.metric_writer import MetricWriter


def restore(workdir: str, step: int | None = None, mesh_shape: tuple[int, ...] | None = None, *,
            devices: Sequence[jax.Device] | None = None):
  """`(experiment, state)` of a workdir's checkpoint (latest unless `step` is given).

  Args:
    workdir: a workdir written by train.py.
    step: the checkpoint's step (default: the latest).
    mesh_shape: overrides the saved `config.mesh.shape`, to read a checkpoint on another device
      count, e.g. `(1, 1)` for one written on a (2 data x 4 model) mesh (`Experiment.restore`).
    devices: the devices to lay the mesh over (default: all of this process's).
  """
  config = configuration.load(workdir)
  if mesh_shape is not None:
    config.mesh.shape = tuple(mesh_shape)
  directory = os.path.join(workdir, "checkpoints")
  checkpointer = Checkpointer(directory)
  if checkpointer.latest_step() is None:
    raise FileNotFoundError(f"no checkpoint in {directory}: train first with train.py --workdir {workdir}")
  try:
    configuration.validate(config)
    exp = Experiment.build(config, mesh_lib.make_mesh(config.mesh, devices))
  except ValueError as e:
    if "config.mesh.shape" not in str(e):
      raise
    raise ValueError(f"{e}; the checkpoint in {directory} can be read on this machine's devices with "
                     "--mesh_shape (e.g. --mesh_shape=1,1 or -1)") from e
  state = exp.restore(checkpointer, step=step)
  checkpointer.close()
  return exp, state


def mesh_shape_arg(text: str) -> tuple[int, ...]:
  """Parses a `--mesh_shape` flag: comma-separated axis sizes, e.g. "1,1" or "-1,4"."""
  try:
    return tuple(int(v) for v in text.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(f"--mesh_shape expects comma-separated ints, got {text!r}") from None


def rerank_metrics(exp: Experiment, params: Any, split: str = "test",
                   overrides: dict[str, Any] | None = None) -> dict[str, float]:
  """Metrics of the shown list without and with the re-ranking stage, over a whole split.

  Args:
    exp: the built experiment.
    params: the cascade's parameters.
    split: data split.
    overrides: options overriding `config.rerank` (see `cascadejax.rerank.DEFAULTS`).

  Returns:
    `shown/<metric>` (the last stage's top k of its survivors) and `rerank/<metric>` (the
    re-ranker's list), metrics as in `metrics.shown_list_metrics`.
  """
  section = {**configuration.plain(exp.config.get("rerank", {})), **(overrides or {})}
  last = exp.cascade.stages[-1]
  items = tuple(f.name for f in exp.data.features if f.side == "items")
  o = rerank.options(section, last_k=last.k, item_features=items)
  features = tuple(dict.fromkeys((o["feature"], o["creator_feature"])))
  gt_num = exp.config.cascade.gt_num

  def item_vectors(module, user, items_):
    return module.embedders[last.name](user, items_).item_matrix()

  @jax.jit
  def step(p, batch):
    variables = {"params": p}
    scores = exp.cascade.apply(variables, batch.user, batch.items)
    survivors = select(scores, exp.cascade.ks, where=batch.mask)[-1]
    vectors = (exp.cascade.apply(variables, batch.user, batch.items, method=item_vectors)
               if o["similarity"] == "embedding" else None)
    base = rerank.top_k(scores[-1], o["k"], where=survivors)
    shown = rerank.apply(o, scores[-1], batch.items, survivors, vectors)
    kw = dict(gt_num=gt_num, diversity_features=features)
    return {**metrics.shown_list_metrics(*base, batch, prefix="shown", **kw),
            **metrics.shown_list_metrics(*shown, batch, prefix="rerank", **kw)}

  sums = metrics.MetricSums()
  size, procs, me = exp.config.train.eval_batch_size, jax.process_count(), jax.process_index()
  for batch in pipeline.eval_batches(exp.data.splits[split], size):
    local = batch.take(slice(me * size // procs, (me + 1) * size // procs))
    sums.add(step(params, mesh_lib.put_batch(local, exp.mesh)))
  return sums.means()


def evaluate_workdir(workdir: str, split: str = "test", step: int | None = None,
                     rerank_overrides: dict[str, Any] | None = None,
                     mesh_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
  """Evaluates the checkpoint and appends the report to `metrics.jsonl`; returns the report.

  The report includes `rerank_metrics` when `config.rerank.method` is not "none" or
  `rerank_overrides` are given. `mesh_shape` is as in `restore`.
  """
  exp, state = restore(workdir, step, mesh_shape)
  metrics_ = exp.evaluate(state.params["cascade"], split)
  if rerank_overrides or exp.config.get("rerank", {}).get("method", "none") != "none":
    metrics_.update(rerank_metrics(exp, state.params["cascade"], split, rerank_overrides))
  writer = MetricWriter(workdir)
  report = writer.write(int(state.step), metrics_, split=split, source="evaluate")
  writer.close()
  return report


def main(argv: list[str] | None = None) -> None:
  """Command-line entry point (see the module docstring)."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="a workdir written by train.py")
  parser.add_argument("--split", default="test", help="data split to evaluate on (default: test)")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  parser.add_argument("--mesh_shape", type=mesh_shape_arg, default=None,
                      help="mesh axis sizes overriding the saved config.mesh.shape, e.g. 1,1 (default: as saved)")
  parser.add_argument("--rerank", action="append", default=[], metavar="KEY=VALUE",
                      help="re-ranking option overriding config.rerank (repeatable), e.g. method=mmr")
  args = parser.parse_args(argv)
  overrides = {}
  for item in args.rerank:
    key, sep, value = item.partition("=")
    if not sep:
      parser.error(f"--rerank expects KEY=VALUE, got {item!r}")
    try:
      overrides[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      overrides[key] = value  # a bare string such as mmr
  print(json.dumps(evaluate_workdir(args.workdir, args.split, args.step, overrides or None, args.mesh_shape),
                   indent=2))


if __name__ == "__main__":
  main()
