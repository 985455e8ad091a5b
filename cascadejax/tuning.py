"""`compare --tune`: picks a method option on validation runs that never touch the test split or seeds.

For `--tune lcron:temperature=10,50,200` and validation seed j in `0 .. tune_seeds - 1`, every value v
trains `compare.run_config(config, "lcron:temperature=v", seed=TUNE_OFFSET + j)` with
`data.valid_fraction` set (the tail of the training requests held out as split "valid") and
`train.eval_split = "valid"`, into `OUT/tune/lcron/temperature=v/seed<j>`. The value with the highest
mean validation `recall_e2e` wins (ties: the first listed); a value that diverged on any seed never
wins; if every value diverged, the method keeps its configured (or default) value. The test runs
then train the winner exactly like an untuned entry: the full training split, test seeds 0, 1, ....

Validation seeds start at `TUNE_OFFSET` because a seed shifts both `config.seed` and
`config.data.seed`: for the simulator a validation seed is a different world than any test seed.

This module plans, chooses and reports; training goes through the `run_config` and `run_one` that
`cascadejax.compare` passes in (that module runs as `__main__`, so importing it here would define
its flags twice).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from typing import Any, Callable, Sequence

import numpy as np
from ml_collections import ConfigDict

from cascadejax import configuration
from cascadejax.methods import get_method

TUNE_OFFSET = 1000  # validation seed j trains with seed index TUNE_OFFSET + j; test seeds stay below it


@dataclasses.dataclass(frozen=True)
class TuneSpec:
  """One `--tune` flag.

  Attributes:
    entry: the `--methods` entry it tunes, as written there (e.g. `lcron` or `lcron:joint_k=stage`).
    option: the method option tuned (a key of the method's `defaults`).
    values: the candidate values as written (Python literals, else strings, like `--methods` overrides).
  """

  entry: str
  option: str
  values: tuple[str, ...]

  def candidate(self, value: str) -> str:
    """The method spec that trains `entry` with `option=value`."""
    return f"{self.entry}:{self.option}={value}"


def _split_values(text: str) -> list[str]:
  """`"10,(2, 1),x"` -> `["10", "(2, 1)", "x"]`: commas inside brackets or quotes do not split."""
  parts, depth, quote, start = [], 0, "", 0
  for i, ch in enumerate(text):
    if quote:
      quote = "" if ch == quote else quote
    elif ch in "'\"":
      quote = ch
    elif ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == "," and depth == 0:
      parts.append(text[start:i].strip())
      start = i + 1
  return parts + [text[start:].strip()]


def parse_tune(spec: str, methods: Sequence[str]) -> TuneSpec:
  """`"lcron:temperature=10,50"` -> `TuneSpec("lcron", "temperature", ("10", "50"))`.

  The part before the last `:` names a `--methods` entry: the entry written exactly so, else the one
  entry with that method name.

  Raises:
    ValueError: naming `--tune` and the spec for a malformed spec, an unknown or ambiguous method,
      no or repeated values, or an option the entry already fixes.
  """
  entry, sep, pair = spec.rpartition(":")
  option, eq, text = pair.partition("=")
  option = option.strip()
  if not sep or not entry or not eq or not option:
    raise ValueError(f"--tune {spec!r}: expected METHOD:OPTION=v1,v2,... (METHOD one of --methods)")
  values = tuple(_split_values(text))
  if not text.strip() or any(not v for v in values):
    raise ValueError(f"--tune {spec!r}: no values to try for {option!r} (expected {option}=v1,v2,...)")
  if len(set(values)) != len(values):
    raise ValueError(f"--tune {spec!r}: a value is listed twice")
  matches = [m for m in methods if m == entry] or [m for m in methods if m.split(":")[0] == entry]
  if len(matches) != 1:
    why = "matches several" if matches else "is not one"
    raise ValueError(f"--tune {spec!r}: method {entry!r} {why} of the --methods entries {list(methods)}")
  fixed = {p.partition("=")[0] for p in matches[0].split(":")[1:]}
  if option in fixed:
    raise ValueError(f"--tune {spec!r}: the --methods entry {matches[0]!r} already sets {option!r}")
  return TuneSpec(matches[0], option, values)


def validation_config(run: ConfigDict, valid_fraction: float) -> ConfigDict:
  """`run` (a `compare.run_config` result) evaluated on a held-out tail of its training requests."""
  if "valid_fraction" in run.data:  # an int set by the user would refuse a float (ConfigDict type safety)
    del run.data["valid_fraction"]
  run.data.valid_fraction = float(valid_fraction)
  run.train.eval_split = "valid"
  return run


def folder(text: str) -> str:
  """A path component for a method spec or value (what `compare` names run folders with)."""
  return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text)


def parse_all(config: ConfigDict, specs: Sequence[str], methods: Sequence[str], *, seeds: int, tune_seeds: int,
              valid_fraction: float, run_config: Callable[..., ConfigDict]) -> list[TuneSpec]:
  """Parses every `--tune` flag and validates every validation run's config, before anything trains.

  Args:
    config: the comparison's config.
    specs: the `--tune` flags.
    methods: the `--methods` entries.
    seeds, tune_seeds, valid_fraction: `--seeds`, `--tune_seeds`, `--valid_fraction`.
    run_config: `compare.run_config`.

  Returns:
    One `TuneSpec` per flag, in order.

  Raises:
    ValueError: naming the flag (or the config key, for an option the method does not take).
  """
  if not specs:
    return []
  if tune_seeds < 1:
    raise ValueError(f"--tune_seeds must be >= 1, got {tune_seeds}")
  if seeds > TUNE_OFFSET:
    raise ValueError(f"--seeds={seeds} would reach the validation seeds (from {TUNE_OFFSET}); use fewer")
  number = isinstance(valid_fraction, (int, float)) and not isinstance(valid_fraction, bool)
  if not number or not 0 < valid_fraction < 1:
    raise ValueError(f"--valid_fraction must be in (0, 1) to tune, got {valid_fraction!r}")
  parsed = [parse_tune(s, methods) for s in specs]
  entries = [p.entry for p in parsed]
  if len(set(entries)) != len(entries):
    raise ValueError(f"--tune: one flag per --methods entry (a grid over two options is not supported); "
                     f"got {list(specs)}")
  for s, p in zip(specs, parsed):
    for value in p.values:
      try:
        configuration.validate(validation_config(run_config(config, p.candidate(value), TUNE_OFFSET),
                                                 valid_fraction))
      except ValueError as err:
        raise ValueError(f"--tune {s!r} ({p.option}={value}): {err}") from err
  return parsed


@dataclasses.dataclass
class Tuning:
  """The validation runs of one `TuneSpec` and the value they chose.

  Attributes:
    spec: what was tuned.
    results: value -> one `compare.run_one` outcome per validation seed (a final report, or
      `{"diverged_step", "wall_s"}`).
    configured: the option's value without tuning (the config's, else the method's default).
    chosen: the winning value as written, or None when every value diverged.
  """

  spec: TuneSpec
  results: dict[str, list[dict[str, Any]]]
  configured: Any
  chosen: str | None

  @property
  def method(self) -> str:
    """The method spec the test runs train."""
    return self.spec.entry if self.chosen is None else self.spec.candidate(self.chosen)

  @property
  def label(self) -> str:
    """The entry's name in the comparison table, with the value it was trained with."""
    if self.chosen is None:
      return f"{self.spec.entry} (untuned {self.spec.option}={self.configured!r}: all diverged)"
    return f"{self.spec.entry} (tuned {self.spec.option}={self.chosen})"

  def stats(self, value: str) -> dict[str, Any]:
    """Validation `recall_e2e` of `value`: mean and sample std over the finished seeds, the number of
    seeds and of finished ones, and the steps at which the others diverged."""
    runs = self.results[value]
    recalls = np.array([r["recall_e2e"] for r in runs if "diverged_step" not in r], float)
    out = {"seeds": len(runs), "finished": len(recalls),
           "diverged_steps": [int(r["diverged_step"]) for r in runs if "diverged_step" in r]}
    if len(recalls):
      out.update(mean=float(recalls.mean()), std=float(recalls.std(ddof=1)) if len(recalls) > 1 else 0.0)
    return out


def choose(results: dict[str, list[dict[str, Any]]]) -> str | None:
  """The value with the highest mean validation `recall_e2e` over its seeds (the first listed on a
  tie); values that diverged on any seed are out. None when every value diverged."""
  best, best_mean = None, -np.inf
  for value, runs in results.items():
    if not runs or any("diverged_step" in r for r in runs):
      continue
    mean = float(np.mean([r["recall_e2e"] for r in runs]))
    if mean > best_mean:  # strict: a later value must beat an earlier one to replace it
      best, best_mean = value, mean
  return best


def tune(config: ConfigDict, spec: TuneSpec, *, tune_seeds: int, valid_fraction: float, out: str,
         run_config: Callable[..., ConfigDict], run_one: Callable[[ConfigDict, str], dict]) -> Tuning:
  """Trains (or, when finished, reads back) every validation run of `spec` and chooses a value.

  Args:
    config: the comparison's config.
    spec: what to tune.
    tune_seeds: validation seeds per value (seed indices `TUNE_OFFSET ..`).
    valid_fraction: share of the training requests held out as the validation split.
    out: the comparison's output directory; runs go to `out/tune/<entry>/<option>=<value>/seed<j>`.
    run_config, run_one: `compare.run_config` and `compare.run_one`.

  Returns:
    The `Tuning`, whose `method` the test runs train.
  """
  results: dict[str, list[dict[str, Any]]] = {}
  for value in spec.values:
    for j in range(tune_seeds):
      c = validation_config(run_config(config, spec.candidate(value), TUNE_OFFSET + j), valid_fraction)
      workdir = os.path.join(out, "tune", folder(spec.entry), folder(f"{spec.option}={value}"), f"seed{j}")
      results.setdefault(value, []).append(run_one(c, workdir))
  configured = get_method(run_config(config, spec.entry, 0)).options[spec.option]
  return Tuning(spec, results, configured, choose(results))


def markdown(tunings: Sequence[Tuning], *, tune_seeds: int, valid_fraction: float) -> str:
  """The results page's "Tuning" section: every value's validation `recall_e2e`, the choice marked."""
  if not tunings:
    return ""
  last = TUNE_OFFSET + tune_seeds - 1
  lines = ["", "## Tuning", "",
           f"Each tuned option was chosen on validation runs: the last {valid_fraction:g} of the training "
           f"requests held out (`data.valid_fraction`), seed indices {TUNE_OFFSET}..{last} (data and "
           "initialisation), never the test split or the test seeds. The value with the highest mean "
           "validation `recall_e2e` (a value that diverged on any seed is never chosen) trained the test "
           "seeds above.", "",
           f"| method | option | value | validation `recall_e2e` ({tune_seeds} seeds) | chosen |",
           "|---|---|---|---|---|"]
  for t in tunings:
    for value in t.spec.values:
      s = t.stats(value)
      spread = f" ± {s['std']:.4f}" if s["finished"] > 1 else ""
      cell = f"{s['mean']:.4f}{spread}" if "mean" in s else ""
      if s["diverged_steps"]:
        gone = f"diverged on {len(s['diverged_steps'])}/{s['seeds']} seeds (at steps " \
               f"{', '.join(map(str, s['diverged_steps']))})"
        cell = f"{cell}; {gone}" if cell else gone
      mark = "**chosen**" if value == t.chosen else ""
      lines.append(f"| `{t.spec.entry}` | `{t.spec.option}` | {value} | {cell} | {mark} |")
    if t.chosen is None:
      lines.append(f"| `{t.spec.entry}` | `{t.spec.option}` | {t.configured!r} (configured) | | every value "
                   "diverged: kept |")
  return "\n".join(lines) + "\n"


def write_csv(tunings: Sequence[Tuning], path: str) -> None:
  """`tuning.csv`: one row per (tuned entry, value) with its validation statistics and the choice."""
  fields = ["method", "option", "value", "seeds", "diverged", "recall_e2e_mean", "recall_e2e_std", "chosen"]
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    for t in tunings:
      for value in t.spec.values:
        s = t.stats(value)
        writer.writerow({"method": t.spec.entry, "option": t.spec.option, "value": value, "seeds": s["seeds"],
                         "diverged": len(s["diverged_steps"]), "recall_e2e_mean": s.get("mean", ""),
                         "recall_e2e_std": s.get("std", ""), "chosen": value == t.chosen})
