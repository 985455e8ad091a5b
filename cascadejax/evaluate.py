"""Evaluates a workdir's checkpoint: `python -m cascadejax.evaluate --workdir W [--split test] [--step N]`.

`--mesh_shape=1,1` reads a checkpoint written on more devices than this machine has (docs/sharding.md).

`python -m cascadejax.evaluate --verify --workdir W` evaluates nothing: it checks every checkpoint
step of W against its checksums and prints one line per step, `ok`, `damaged (<file> ...)` or
`unverified (...)`, exiting with status 1 if a step is damaged (docs/reliability.md).

Rebuilds the run from `W/config.json`, restores the latest (or the given) checkpoint, runs the
jitted evaluation over the split, appends the metrics to `W/metrics.jsonl` (with `"source":
"evaluate"`) and prints them as a table (`metric_writer.table`), or with `--json` as the JSON
report.

Re-ranking: when the run's config has a `config.rerank` section with a `method` other than "none"
(see `cascadejax.rerank.DEFAULTS`), or `--rerank KEY=VALUE` options are given (they override the
section), the report also carries the metrics of the list finally shown, chosen from the last
stage's survivors, without (`shown/...`) and with (`rerank/...`) the re-ranking stage:

  python -m cascadejax.evaluate --workdir W --rerank method=mmr --rerank k=5 --rerank mmr_lambda=0.5
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import sys
from typing import Any, Sequence

import jax
from absl import app, flags

from cascadejax import checksums, metric_writer, metrics, rerank, workdir as workdir_lib
from cascadejax.ops.selection import select
from cascadejax.experiment import Experiment


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
  section = {**dataclasses.asdict(exp.sections.rerank), **(overrides or {})}
  last = exp.cascade.stages[-1]
  items = tuple(f.name for f in exp.data.features if f.side == "items")
  o = rerank.options(section, last_k=last.k, item_features=items)
  features = tuple(dict.fromkeys((o["feature"], o["creator_feature"])))
  gt_num = exp.sections.cascade.gt_num

  def item_vectors(module, user, items_):
    return module.embedders[last.name](user, items_).item_matrix()

  @jax.jit
  def step(p, batch):
    variables = {"params": p}
    scores = exp.cascade.apply(variables, batch.user, batch.items).scores
    survivors = select(scores, exp.cascade.ks, where=batch.mask)[-1]
    vectors = (exp.cascade.apply(variables, batch.user, batch.items, method=item_vectors)
               if o["similarity"] == "embedding" else None)
    base = rerank.top_k(scores[-1], o["k"], where=survivors)
    shown = rerank.apply(o, scores[-1], batch.items, survivors, vectors)
    kw = dict(gt_num=gt_num, diversity_features=features)
    return {**metrics.shown_list_metrics(*base, batch, prefix="shown", **kw),
            **metrics.shown_list_metrics(*shown, batch, prefix="rerank", **kw)}

  return exp.over_split(step, params, split)


def evaluate_workdir(workdir: str, split: str = "test", step: int | None = None,
                     rerank_overrides: dict[str, Any] | None = None,
                     mesh_shape: tuple[int, ...] | None = None, corpus: bool = False) -> dict[str, Any]:
  """Evaluates the checkpoint and appends the report to `metrics.jsonl`; returns the report.

  The report includes `rerank_metrics` when `config.rerank.method` is not "none" or
  `rerank_overrides` are given, and the full-corpus metrics (`Experiment.evaluate_corpus`) with
  `corpus` or `config.corpus.evaluate`. `mesh_shape` is as in `workdir.restore`.
  """
  exp, state = workdir_lib.restore(workdir, step, mesh_shape)
  metrics_ = exp.evaluate(state.params["cascade"], split)
  if corpus or exp.sections.corpus.evaluate:
    metrics_.update(exp.evaluate_corpus(state.params["cascade"], split))
  if rerank_overrides or exp.sections.rerank.method != "none":
    metrics_.update(rerank_metrics(exp, state.params["cascade"], split, rerank_overrides))
  writer = metric_writer.MetricWriter(workdir)
  report = writer.write(int(state.step), metrics_, split=split, source="evaluate")
  writer.close()
  return report


def verify_workdir(workdir: str) -> list[str]:
  """One line per checkpoint step of `workdir`, newest first: `step N: ok`, `step N: damaged (...)` or
  `step N: unverified (...)` (`checksums.verify_step`; reads only).

  Raises:
    FileNotFoundError: if the workdir holds no checkpoint step.
  """
  directory = os.path.join(workdir, "checkpoints")
  results = checksums.verify_directory(directory)
  if not results:
    raise FileNotFoundError(f"no checkpoint step in {directory}")
  return [f"step {step}: {status}" + (f" ({detail})" if detail else "") for step, status, detail in results]


def rerank_overrides(items: Sequence[str]) -> dict[str, Any]:
  """`--rerank` values (`KEY=VALUE`) as options: values are Python literals, else strings.

  `["method=mmr", "k=5"]` -> `{"method": "mmr", "k": 5}`.

  Raises:
    ValueError: for an item without "=".
  """
  overrides = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"--rerank expects KEY=VALUE, got {item!r}")
    try:
      overrides[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      overrides[key] = value  # a bare string such as mmr
  return overrides


def define_flags() -> None:
  """Registers the command's flags; only `python -m cascadejax.evaluate` does, so importing this
  module (for `evaluate_workdir`) registers none (see `cascadejax.workdir`)."""
  workdir_lib.define_flags()
  flags.adopt_module_key_flags(workdir_lib)
  flags.DEFINE_string("split", "test", "Data split to evaluate on.")
  flags.DEFINE_multi_string("rerank", [], "KEY=VALUE: a re-ranking option overriding config.rerank (repeatable), "
                            "e.g. --rerank method=mmr --rerank k=5.")
  flags.DEFINE_bool("json", False, "Print the report as JSON instead of a table.")
  flags.DEFINE_bool("verify", False, "Only check every checkpoint step of --workdir against its checksums and "
                    "print ok / damaged (file) / unverified per step; exit 1 if one is damaged.")
  flags.DEFINE_bool("corpus", False, "Also evaluate the cascade from the whole item corpus (retrieval from every "
                    "item, then the later stages; see cascadejax.corpus.evaluation).")


def main(argv: Sequence[str]) -> None:
  """Evaluates `--workdir`'s checkpoint and prints the report (see the module docstring)."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  FLAGS = flags.FLAGS
  if FLAGS.verify:
    try:
      lines = verify_workdir(FLAGS.workdir)
    except FileNotFoundError as err:
      sys.exit(f"--verify: {err}")
    print("\n".join(lines))
    sys.exit(1 if any(": damaged" in line for line in lines) else 0)
  try:
    overrides = rerank_overrides(FLAGS.rerank)
  except ValueError as err:
    raise app.UsageError(str(err)) from None
  report = evaluate_workdir(FLAGS.workdir, FLAGS.split, FLAGS.step, overrides or None, FLAGS.mesh_shape,
                            corpus=FLAGS.corpus)
  print(json.dumps(report, indent=2) if FLAGS.json else metric_writer.table(report))


if __name__ == "__main__":
  define_flags()
  app.run(main)
