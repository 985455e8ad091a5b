"""Compare training methods on the same data over several seeds: Markdown table, CSVs and a plot.

  python -m cascadejax.compare --config configs/default.py --methods independent,lcron --seeds 5 \
      --out /tmp/compare [--config.train.steps=1000 ...]

A method entry may carry option overrides for an ablation: `lcron:temperature=10:joint_k=stage` trains
`lcron` with those two options changed (values are Python literals, else strings) and is reported
under that label.

For seed i (0-based), every method trains with `config.seed = seed + i` and `config.data.seed =
data.seed + i`, so the methods of one seed see the same requests and start from the same key. Each
run is an ordinary workdir (`OUT/runs/<method>/seed<i>`): an interrupted comparison started again
with the same command skips finished runs and resumes unfinished ones from their checkpoints. A
method's options come from `config.method.<method>` when the config has that section, else from the
method's defaults. A run that diverges (`trainer.NonFiniteLossError`) is recorded with the step it
diverged at, not retried, and the table says how many seeds of each method diverged.

Tuning without touching the test seeds: `--tune lcron:temperature=10,50,200` (repeatable, one per
entry; METHOD is a --methods entry, with its own overrides if it has any) first trains every value on
`--tune_seeds` validation seeds (seed indices 1000, 1001, ...; `cascadejax.tuning.TUNE_OFFSET`), each
holding out the last `--valid_fraction` of its training requests as split "valid"
(`config.data.valid_fraction`) and evaluating there (`config.train.eval_split = "valid"`), into
`OUT/tune/<method>/<option>=<value>/seed<j>`. The value with the highest mean validation
`recall_e2e` (ties: the first listed; a value that diverged on any seed is never chosen; if all
diverge, the configured value is kept) then trains the test seeds like any entry, reported as
`lcron (tuned temperature=10)`. `cascadejax/tuning.py` has the protocol.

Outputs in OUT: `runs.csv` (one row per run: final test metrics and wall time), `summary.csv` (mean
and std per method), `results.md` (the table, with paired differences against the first method or
the `--paired` entries, and with --tune a "Tuning" section: every value's validation `recall_e2e`, the choice marked),
`tuning.csv` (the same per value, with --tune) and `recall_e2e.png` (every seed's `recall_e2e` per
method; needs matplotlib, `pip install cascadejax[plot]`).
"""

from __future__ import annotations

import ast
import csv
import json
import os
import time
from typing import Sequence

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import ConfigDict, config_flags

from cascadejax import configuration, overrides, trainer, tuning, workdir as workdir_lib, workdir_lock

WALL_FILE = "compare_wall_s.json"
DIVERGED_FILE = "compare_diverged.json"


def _literal(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_method(spec: str) -> tuple[str, dict]:
  """`"lcron:temperature=10:joint_k=stage"` -> `("lcron", {"temperature": 10, "joint_k": "stage"})`."""
  name, *pairs = spec.split(":")
  options = {}
  for pair in pairs:
    key, sep, value = pair.partition("=")
    if not sep or not key:
      raise ValueError(f"--methods: {spec!r}: expected NAME:option=value:..., got {pair!r}")
    options[key] = _literal(value)
  return name, options


def run_config(config: ConfigDict, method: str, seed: int) -> ConfigDict:
  """`config` trained with `method` (a name, or NAME:option=value:...) on seed index `seed` (data and
  initialisation both shifted)."""
  c = ConfigDict(config.to_dict())
  name, options = parse_method(method)
  c.method.name = name
  if options:
    c.method[name] = ConfigDict({**c.method.get(name, ConfigDict()).to_dict(), **options})
  c.seed = int(config.seed) + seed
  c.data.seed = int(config.data.seed) + seed
  c.train.progress_bar = False
  return c


def run_one(config: ConfigDict, workdir: str) -> dict:
  """Trains one run unless its workdir already holds its outcome; returns the final report and the
  wall time, or, for a run that diverged, `{"diverged_step": step, "wall_s": seconds}`. Holds the
  run's workdir lock throughout (`cascadejax.workdir_lock`): two comparisons on one --out fail at the
  first shared run, naming the other."""
  with workdir_lock.hold(workdir, jax.process_index()):
    return _run_one(config, workdir)


def _run_one(config: ConfigDict, workdir: str) -> dict:
  wall_path, diverged_path = os.path.join(workdir, WALL_FILE), os.path.join(workdir, DIVERGED_FILE)
  saved = workdir_lib.saved_config(workdir)
  changed = [] if saved is None else configuration.differing_keys(saved, config)
  if changed:
    raise ValueError(f"compare: {workdir} holds a run of a different config (config.{changed[0]}, "
                     f"{len(changed)} key(s) differ); use another --out")
  final = workdir_lib.final_report(workdir) if os.path.exists(wall_path) else None
  if final is not None:
    with open(wall_path) as f:
      return {**final, "wall_s": json.load(f)["wall_s"]}
  if os.path.exists(diverged_path):
    with open(diverged_path) as f:
      return json.load(f)
  start = time.perf_counter()
  try:
    report, record, path = trainer.train_and_evaluate(config, workdir), {}, wall_path
  except trainer.NonFiniteLossError as err:
    logging.warning("compare: %s diverged: %s", workdir, err)
    report = record = {"diverged_step": err.step}
    path = diverged_path
  record = {**record, "wall_s": time.perf_counter() - start}  # what the marker file keeps
  with open(path, "w") as f:
    json.dump(record, f)
  jax.clear_caches()
  return {**report, **record}


def metric_names(rows: list[dict]) -> list[str]:
  """`recall_e2e` first, then the other model metrics (random-selection references last)."""
  names = sorted({k for r in rows for k in r if "/" in k or k.startswith("recall")} - {"recall_e2e"})
  model = [n for n in names if not n.endswith("_random")]
  return ["recall_e2e"] + model + [n for n in names if n.endswith("_random")]


def summarize(rows: list[dict], methods: list[str]) -> list[dict]:
  """Mean and sample std of every metric and of the wall time, per method."""
  out = []
  for m in methods:
    runs = [r for r in rows if r["method"] == m]
    finished = [r for r in runs if "diverged_step" not in r]
    entry = {"method": m, "seeds": len(finished), "diverged": len(runs) - len(finished)}
    for name in metric_names(rows) + ["wall_s"]:
      values = np.array([r[name] for r in (runs if name == "wall_s" else finished) if name in r], float)
      if len(values):  # a method whose every seed diverged has no metric means (empty CSV cells)
        entry[f"{name}_mean"] = float(values.mean())
        entry[f"{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    out.append(entry)
  return out


def _diverged(rows: list[dict], method: str) -> str:
  """`"diverged on 2/5 seeds (at steps 41, 57)"`, or "" when no seed of `method` diverged."""
  runs = [r for r in rows if r["method"] == method]
  steps = [int(r["diverged_step"]) for r in runs if "diverged_step" in r]
  return f"diverged on {len(steps)}/{len(runs)} seeds (at steps {', '.join(map(str, steps))})" if steps else ""


def _spread(std: float, n: int) -> str:
  """` ± std` of n values; one value has no spread to show."""
  return f" ± {std:.4f}" if n > 1 else ""


def _paired(rows: list[dict], method: str, reference: str) -> str:
  """`"+0.0123 ± 0.0040 (4/5 seeds better)"`: `method` minus `reference` on the seeds both finished."""
  ref = {r["seed"]: r["recall_e2e"] for r in rows if r["method"] == reference and "recall_e2e" in r}
  diffs = np.array([r["recall_e2e"] - ref[r["seed"]] for r in rows
                    if r["method"] == method and r["seed"] in ref and "recall_e2e" in r])
  if method == reference or not len(diffs):
    return ""
  return (f"{diffs.mean():+.4f}{_spread(diffs.std(ddof=1) if len(diffs) > 1 else 0.0, len(diffs))} "
          f"({(diffs > 0).sum()}/{len(diffs)} seeds better)")


def markdown(rows: list[dict], summary: list[dict], methods: list[str],
             references: Sequence[str] = ()) -> str:
  """The comparison table: mean +/- std per method (the mean alone for one seed), and the paired
  difference to each of `references` (default: the first method)."""
  references = list(references) or methods[:1]
  stage_recalls = [n for n in metric_names(rows) if "/recall@" in n and not n.endswith("_random")]
  cols = ["recall_e2e"] + stage_recalls
  head = ["method", *[f"`{c}`" for c in cols], *[f"`recall_e2e` minus {r} (paired)" for r in references],
          "wall time"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for s in summary:
    cells = [f"`{s['method']}`"] + [f"{s[c + '_mean']:.4f}{_spread(s[c + '_std'], s['seeds'])}"
                                    if c + "_mean" in s else "diverged" for c in cols]
    for i, ref in enumerate(references):
      diverged = _diverged(rows, s["method"]) if i == 0 else ""
      cells.append("; ".join(x for x in (_paired(rows, s["method"], ref), diverged) if x))
    cells.append(f"{s['wall_s_mean']:.0f} s")
    lines.append("| " + " | ".join(cells) + " |")
  random = [r["recall_e2e_random"] for r in rows if "recall_e2e_random" in r]
  if random:
    lines.append(f"| random selection | {np.mean(random):.4f} |" + " |" * (len(head) - 2))
  return "\n".join(lines) + "\n"


def plot(rows: list[dict], methods: list[str], path: str) -> bool:
  """Per-method `recall_e2e` of every seed with its mean; False if matplotlib is not installed."""
  try:
    import matplotlib  # noqa: PLC0415 (optional dependency)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
  except ImportError:
    return False
  fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(methods), 3.2))
  for i, m in enumerate(methods):
    values = [r["recall_e2e"] for r in rows if r["method"] == m and "recall_e2e" in r]
    if _diverged(rows, m):
      ax.annotate("some seeds diverged" if values else "diverged", (i, 0.02), xycoords=("data", "axes fraction"),
                  ha="center", fontsize=7, color="red")
    if not values:
      continue
    ax.scatter(np.full(len(values), i), values, s=14, alpha=0.7)
    ax.errorbar(i + 0.18, np.mean(values), yerr=np.std(values, ddof=1) if len(values) > 1 else 0,
                fmt="o", color="black", capsize=3)
  ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
  ax.set_ylabel("test recall_e2e")
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def compare(config: ConfigDict, methods: list[str], seeds: int, out: str, tune: Sequence[str] = (),
            tune_seeds: int = 3, valid_fraction: float = 0.1, paired: Sequence[str] = ()) -> list[dict]:
  """Runs every (method, seed), writes the outputs, and returns one row per run.

  Args:
    config: the comparison's config.
    methods: method entries (`NAME` or `NAME:option=value:...`); the first is the paired reference.
    seeds: test seeds per method.
    out: output directory.
    tune: `--tune` specs (`METHOD:OPTION=v1,v2,...`): those entries' option is chosen on validation
      runs first (`cascadejax.tuning`) and their rows are labelled with the chosen value.
    tune_seeds, valid_fraction: validation seeds per value, and the training share they hold out.
    paired: method entries the table shows paired differences to (default: the first one).

  Returns:
    One row per test run: `method` (the table's label), `seed` and the final numeric metrics.
  """
  if seeds < 1 or not methods:
    raise ValueError("compare: need at least one method and --seeds >= 1")
  unknown = [m for m in paired if m not in methods]
  if unknown:
    raise ValueError(f"compare: --paired {unknown} are not --methods entries {methods}")
  for m in methods:  # fail on a bad method name or --tune spec before training anything
    configuration.validate(run_config(config, m, 0))
  specs = tuning.parse_all(config, list(tune), methods, seeds=seeds, tune_seeds=tune_seeds,
                           valid_fraction=valid_fraction, run_config=run_config)
  tuned = {}
  for spec in specs:
    logging.info("compare: tuning %s over %s on %d validation seeds", spec.entry, spec.option, tune_seeds)
    tuned[spec.entry] = tuning.tune(config, spec, tune_seeds=tune_seeds, valid_fraction=valid_fraction, out=out,
                                    run_config=run_config, run_one=run_one)
  runs = [(tuned[m].label, tuned[m].method) if m in tuned else (m, m) for m in methods]  # (label, spec)
  labels = [label for label, _ in runs]
  rows = []
  for seed in range(seeds):
    for label, m in runs:
      logging.info("compare: %s, seed %d of %d", label, seed + 1, seeds)
      report = run_one(run_config(config, m, seed), os.path.join(out, "runs", tuning.folder(m), f"seed{seed}"))
      rows.append({"method": label, "seed": seed, **{k: v for k, v in report.items()
                                                     if isinstance(v, (int, float)) and k != "final"}})
  summary = summarize(rows, labels)
  for name, table in (("runs.csv", rows), ("summary.csv", summary)):
    with open(os.path.join(out, name), "w", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in table for k in r)))
      writer.writeheader()
      writer.writerows(table)
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write(markdown(rows, summary, labels, [labels[methods.index(m)] for m in paired]))
    f.write(tuning.markdown(list(tuned.values()), tune_seeds=tune_seeds, valid_fraction=valid_fraction))
  if tuned:
    tuning.write_csv(list(tuned.values()), os.path.join(out, "tuning.csv"))
  if not plot(rows, labels, os.path.join(out, "recall_e2e.png")):
    logging.warning("matplotlib is not installed: no plot (pip install 'cascadejax[plot]')")
  return rows


def define_flags() -> None:
  """Registers the command's flags (only when run as a program: see `cascadejax.workdir`)."""
  config_flags.DEFINE_config_file("config", None, "Config file of the comparison.")
  flags.DEFINE_list("methods", None, "Comma-separated method names, the first is the reference.")
  flags.DEFINE_integer("seeds", 5, "Number of seeds.")
  flags.DEFINE_list("paired", [], "Method entries to show paired differences to (default: the first).")
  flags.DEFINE_string("out", None, "Output directory.")
  flags.DEFINE_multi_string("tune", [], "METHOD:OPTION=v1,v2,...: choose OPTION of that --methods entry "
                            "on validation runs before the test runs (repeatable, one per entry).")
  flags.DEFINE_integer("tune_seeds", 3, "Validation seeds per --tune value.")
  flags.DEFINE_float("valid_fraction", 0.1, "Share of the training requests the --tune "
                     "runs hold out and evaluate on (config.data.valid_fraction).")


def main(argv: Sequence[str]) -> None:
  """Runs the comparison and prints its table (see the module docstring)."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  FLAGS = flags.FLAGS
  if FLAGS.config is None or not FLAGS.methods or not FLAGS.out:
    raise app.UsageError("--config, --methods and --out are required")
  trainer.quiet_library_logs()
  os.makedirs(FLAGS.out, exist_ok=True)
  compare(FLAGS.config, FLAGS.methods, FLAGS.seeds, FLAGS.out, tune=FLAGS.tune, tune_seeds=FLAGS.tune_seeds,
          valid_fraction=FLAGS.valid_fraction, paired=FLAGS.paired)
  with open(os.path.join(FLAGS.out, "results.md")) as f:
    print(f.read())


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=overrides.parse_flags)
