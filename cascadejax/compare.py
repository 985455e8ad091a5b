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

`--finished_only` trains nothing and writes the outputs of the runs that have finished: a partial
table of a comparison still running (in another process, or to be resumed later).

Outputs in OUT: `runs.csv` (one row per run: final test metrics and wall time), `summary.csv` (mean
and std per method), `results.md` (the table, with paired differences against the first method or
the `--paired` entries; for runs with `config.corpus.evaluate`, `corpus_recall_e2e` and its paired
differences too, and on how many seeds the logged and the corpus metric put each method on the same
side of the first reference; with --tune a "Tuning" section: every value's validation `recall_e2e`,
the choice marked),
`tuning.csv` (the same per value, with --tune) and `recall_e2e.png` (every seed's `recall_e2e` per
method; needs matplotlib, `pip install cascadejax[plot]`).
"""

from __future__ import annotations

if __name__ == "__main__":  # first of all: glibc reads its tunables at process start (cascadejax.huge_pages)
  from cascadejax import huge_pages
  huge_pages.reexec()

import ast  # noqa: E402
import csv
import json
import os
import time
from typing import Sequence

import jax
from absl import app, flags, logging
from ml_collections import ConfigDict, config_flags

from cascadejax import configuration, overrides, trainer, tuning, workdir as workdir_lib, workdir_lock
from cascadejax.tables import markdown, plot, summarize

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


def outcome(config: ConfigDict, workdir: str) -> dict | None:
  """What `run_one` returns for a run that has finished (or diverged), read from its workdir; None
  for a run not finished yet.

  Raises:
    ValueError: if the workdir holds a run of a different config (keys that change only how a run
      executes, `configuration.EXECUTION_KEYS`, may differ: such a run resumes with the new values).
  """
  wall_path, diverged_path = os.path.join(workdir, WALL_FILE), os.path.join(workdir, DIVERGED_FILE)
  saved = workdir_lib.saved_config(workdir)
  changed = [] if saved is None else [k for k in configuration.differing_keys(saved, config)
                                      if k not in configuration.EXECUTION_KEYS]
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
  return None


def _run_one(config: ConfigDict, workdir: str) -> dict:
  done = outcome(config, workdir)
  if done is not None:
    return done
  wall_path, diverged_path = os.path.join(workdir, WALL_FILE), os.path.join(workdir, DIVERGED_FILE)
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


def compare(config: ConfigDict, methods: list[str], seeds: int, out: str, tune: Sequence[str] = (),
            tune_seeds: int = 3, valid_fraction: float = 0.1, paired: Sequence[str] = (),
            finished_only: bool = False) -> list[dict]:
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
    finished_only: train nothing: the outputs cover the runs that have finished (a partial table
      while a long comparison is still running, e.g. from another process); not with `tune`.

  Returns:
    One row per test run: `method` (the table's label), `seed` and the final numeric metrics.
  """
  if seeds < 1 or not methods:
    raise ValueError("compare: need at least one method and --seeds >= 1")
  unknown = [m for m in paired if m not in methods]
  if unknown:
    raise ValueError(f"compare: --paired {unknown} are not --methods entries {methods}")
  if finished_only and tune:
    raise ValueError("compare: --finished_only trains nothing, so it cannot --tune (run the tuning first)")
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
      workdir = os.path.join(out, "runs", tuning.folder(m), f"seed{seed}")
      if finished_only:
        report = outcome(run_config(config, m, seed), workdir)
        if report is None:
          continue
      else:
        logging.info("compare: %s, seed %d of %d", label, seed + 1, seeds)
        report = run_one(run_config(config, m, seed), workdir)
      rows.append({"method": label, "seed": seed, **{k: v for k, v in report.items()
                                                     if isinstance(v, (int, float)) and k != "final"}})
  labels = [label for label in labels if any(r["method"] == label for r in rows)]  # (finished_only: some have none)
  summary = summarize(rows, labels)
  for name, table in (("runs.csv", rows), ("summary.csv", summary)):
    with open(os.path.join(out, name), "w", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in table for k in r)))
      writer.writeheader()
      writer.writerows(table)
  with open(os.path.join(out, "results.md"), "w") as f:
    label_of = {entry: label for entry, (label, _) in zip(methods, runs)}
    f.write(markdown(rows, summary, labels, [label_of[m] for m in paired if label_of[m] in labels]))
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
  flags.DEFINE_bool("finished_only", False, "Train nothing: write the outputs of the runs that have finished.")


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
          valid_fraction=FLAGS.valid_fraction, paired=FLAGS.paired, finished_only=FLAGS.finished_only)
  with open(os.path.join(FLAGS.out, "results.md")) as f:
    print(f.read())


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=overrides.parse_flags)
