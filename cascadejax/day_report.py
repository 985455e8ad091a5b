"""The metric of every evaluated day of runs moved forward day by day: a Markdown table and a CSV.

  python -m cascadejax.day_report --workdirs /tmp/lcron,/tmp/bce [--metrics recall_e2e,ranking/ndcg@10] \
      [--out DIR]

The streaming protocol of LCRON's RecFlow experiments trains on the days before t, tests on day t,
then moves t forward and continues the same run (`train.py` on the same workdir with new
`config.data.train_days` / `test_days`; see docs/data.md). Each move appends one final report,
tagged with its `test_days`, to the run's `metrics.jsonl`. This command lists those reports: one row
per evaluated day range, one column per run (the step it was reached at beside the value), the mean
over the days every run evaluated, and, for two or more runs, each run minus the first, paired by day
(mean +/- std and on how many days it was better), as `compare` pairs seeds.

A run is `PATH` (labelled by its folder name) or `LABEL=PATH`. Outputs with `--out`: `days.csv`
(one row per run and day: label, first and last test day, step and every numeric metric) and
`days.md` (the tables, also printed).
"""

from __future__ import annotations

import csv
import os
from typing import Sequence

import numpy as np
from absl import app, flags

from cascadejax import metric_writer


def day_rows(workdir: str, label: str) -> list[dict]:
  """One row per evaluated day range of a run: `label`, `first_day`, `last_day`, `step` and the
  final report's numeric metrics, in the order the days were evaluated.

  Raises:
    ValueError: if the workdir has no `metrics.jsonl`, or no final report carries `test_days` (the run
      was not trained with `config.data.test_days`).
  """
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise ValueError(f"day_report: {path} does not exist; is {workdir!r} a training workdir?")
  by_days: dict[tuple, dict] = {}
  for record in metric_writer.read(workdir):
    if record.get("final") and record.get("test_days") is not None:
      first, last = (str(d) for d in record["test_days"])
      by_days.pop((first, last), None)  # a later report of the same days replaces the earlier one
      by_days[(first, last)] = {"label": label, "first_day": first, "last_day": last, "step": int(record["step"]),
                                **{k: float(v) for k, v in record.items() if isinstance(v, (int, float))
                                   and not isinstance(v, bool) and k != "step"}}
  if not by_days:
    raise ValueError(f"day_report: {path} has no final report with test_days; train the run with "
                     "config.data.test_days (a reader with days, e.g. data.name='logs' or 'recflow')")
  return list(by_days.values())


def _days(row: dict) -> str:
  return row["first_day"] if row["first_day"] == row["last_day"] else f"{row['first_day']}..{row['last_day']}"


def markdown(rows: list[dict], labels: Sequence[str], metrics: Sequence[str]) -> str:
  """One table per metric: rows = evaluated days (in first-evaluated order), columns = runs, then
  the mean over the days every run has, and each run minus the first paired by day."""
  days = list(dict.fromkeys(_days(r) for r in rows))
  value = {(r["label"], _days(r)): r for r in rows}
  common = [d for d in days if all((lab, d) in value for lab in labels)]
  out = []
  for metric in metrics:
    head = ["test day", *[f"`{lab}`" for lab in labels]]
    lines = [f"### `{metric}`", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d in days:
      cells = [f"{value[(lab, d)][metric]:.4f} (step {value[(lab, d)]['step']})"
               if (lab, d) in value and metric in value[(lab, d)] else "-" for lab in labels]
      lines.append("| " + " | ".join([d, *cells]) + " |")
    series = {lab: np.array([value[(lab, d)].get(metric, np.nan) for d in common], float) for lab in labels}
    if common:
      lines.append("| " + " | ".join([f"mean over {len(common)} day{'s' if len(common) != 1 else ''}", *[_mean(series[lab]) for lab in labels]]) + " |")
      for lab in labels[1:]:
        diff = series[lab] - series[labels[0]]
        cells = ["" if other != lab else _mean(diff, signed=True) + f" ({int((diff > 0).sum())}/{len(diff)} days better)"
                 for other in labels]
        lines.append("| " + " | ".join([f"`{lab}` minus `{labels[0]}` (paired)", *cells]) + " |")
    out.append("\n".join(lines))
  return "\n\n".join(out) + "\n"


def _mean(values: np.ndarray, signed: bool = False) -> str:
  if np.isnan(values).any():
    return "-"
  spread = f" ± {values.std(ddof=1):.4f}" if len(values) > 1 else ""
  return (f"{values.mean():+.4f}" if signed else f"{values.mean():.4f}") + spread


def report(runs: Sequence[str], metrics: Sequence[str] = ("recall_e2e",), out: str | None = None) -> str:
  """Reads every run (`PATH` or `LABEL=PATH`), returns the Markdown and writes the outputs to `out`.

  Raises:
    ValueError: for a missing workdir or metric, or two runs with one label.
  """
  pairs = [r.split("=", 1) if "=" in r else (os.path.basename(os.path.normpath(r)), r) for r in runs]
  labels = [lab for lab, _ in pairs]
  if not pairs or len(set(labels)) != len(labels):
    raise ValueError(f"day_report: need one or more runs with distinct labels, got {labels}")
  rows = [row for lab, path in pairs for row in day_rows(path, lab)]
  missing = [m for m in metrics if not any(m in r for r in rows)]
  if missing:
    known = sorted({k for r in rows for k in r} - {"label", "first_day", "last_day", "step"})
    raise ValueError(f"day_report: metric(s) {missing} are in no final report; reports have {known}")
  text = markdown(rows, labels, metrics)
  if out:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "days.csv"), "w", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
      writer.writeheader()
      writer.writerows(rows)
    with open(os.path.join(out, "days.md"), "w") as f:
      f.write(text)
  return text


def define_flags() -> None:
  """Registers the command's flags (only when run as a program)."""
  flags.DEFINE_list("workdirs", None, "Runs to report: PATH or LABEL=PATH, comma-separated; the first is the "
                    "paired reference.")
  flags.DEFINE_list("metrics", ["recall_e2e"], "Metrics of the final reports to list.")
  flags.DEFINE_string("out", None, "Optional output folder for days.csv and days.md.")


def main(argv: Sequence[str]) -> None:
  """Prints the per-day tables (see the module docstring)."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS.workdirs:
    raise app.UsageError("--workdirs is required")
  print(report(flags.FLAGS.workdirs, flags.FLAGS.metrics, flags.FLAGS.out))


if __name__ == "__main__":
  define_flags()
  app.run(main)
