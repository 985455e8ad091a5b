"""`cascadejax.compare`: runs every (method, seed) on shared data, summarises, and resumes."""

import csv
import os

import numpy as np
import pytest

from cascadejax import compare, tables
from tests.conftest import tiny_config


def test_compare_writes_paired_tables_and_skips_finished_runs(tmp_path):
  config = tiny_config()
  config.train.steps, config.train.eval_every = 4, 0
  rows = compare.compare(config, ["independent", "lcron"], 2, str(tmp_path))
  assert [(r["method"], r["seed"]) for r in rows] == [
      ("independent", 0), ("lcron", 0), ("independent", 1), ("lcron", 1)]
  # Seed i shifts both the data and the initialisation, and both methods of a seed share the data:
  # the random-selection reference depends on the requests only.
  assert rows[0]["recall_e2e_random"] == rows[1]["recall_e2e_random"] != rows[2]["recall_e2e_random"]
  with open(tmp_path / "summary.csv") as f:
    summary = {r["method"]: r for r in csv.DictReader(f)}
  lcron = [r["recall_e2e"] for r in rows if r["method"] == "lcron"]
  np.testing.assert_allclose(float(summary["lcron"]["recall_e2e_mean"]), np.mean(lcron), rtol=1e-6)
  np.testing.assert_allclose(float(summary["lcron"]["recall_e2e_std"]), np.std(lcron, ddof=1), rtol=1e-6)
  table = (tmp_path / "results.md").read_text()
  assert "| `lcron` |" in table and "minus independent (paired)" in table and "random selection" in table
  assert os.path.getsize(tmp_path / "recall_e2e.png") > 1000
  with open(tmp_path / "runs.csv") as f:
    assert len(list(csv.DictReader(f))) == 4

  # A second call finds every run finished and trains nothing: same rows, same wall times.
  mtime = os.path.getmtime(tmp_path / "runs" / "lcron" / "seed1" / "metrics.jsonl")
  again = compare.compare(config, ["independent", "lcron"], 2, str(tmp_path))
  assert again == rows
  assert os.path.getmtime(tmp_path / "runs" / "lcron" / "seed1" / "metrics.jsonl") == mtime
  # ... also when only how the runs execute changes (bit-identical: K steps per call, the split on device)
  config.train.steps_per_call, config.data.on_device = 2, True
  assert compare.compare(config, ["independent", "lcron"], 2, str(tmp_path)) == rows
  config.train.steps_per_call, config.data.on_device = 1, False

  # --finished_only trains nothing: a third seed and a method with no finished run are left out.
  partial = compare.compare(config, ["independent", "lcron", "arf"], 3, str(tmp_path), paired=["lcron", "arf"],
                            finished_only=True)
  assert partial == rows and not (tmp_path / "runs" / "lcron" / "seed2").exists()
  table = (tmp_path / "results.md").read_text()
  assert "| `lcron` | 2 |" in table and "`arf`" not in table and "minus lcron (paired)" in table
  with pytest.raises(ValueError, match="--finished_only trains nothing, so it cannot --tune"):
    compare.compare(config, ["lcron"], 1, str(tmp_path), tune=["lcron:temperature=1.0,2.0"], finished_only=True)


def test_compare_rejects_an_unknown_method_before_training(tmp_path):
  with pytest.raises(ValueError, match="config.method.name: unknown method 'lcorn'"):
    compare.compare(tiny_config(), ["independent", "lcorn"], 1, str(tmp_path))
  assert not (tmp_path / "runs").exists()


def test_method_specs_carry_option_overrides_and_runs_refuse_a_changed_config(tmp_path):
  assert compare.parse_method("lcron:temperature=10:joint_k=stage:relax_k=(2, 1)") == (
      "lcron", {"temperature": 10, "joint_k": "stage", "relax_k": (2, 1)})
  with pytest.raises(ValueError, match="expected NAME:option=value"):
    compare.parse_method("lcron:temperature")
  config = tiny_config()
  config.train.steps, config.train.eval_every = 2, 0
  c = compare.run_config(config, "lcron:temperature=3.0", 1)
  assert (c.method.name, c.method.lcron.temperature, c.seed, c.data.seed) == ("lcron", 3.0, 1, 1)
  compare.run_one(c, str(tmp_path))
  with pytest.raises(ValueError, match=r"holds a run of a different config \(config.method.lcron.temperature"):
    compare.run_one(compare.run_config(config, "lcron:temperature=4.0", 1), str(tmp_path))


def test_table_shows_a_spread_only_when_there_is_one():
  row = lambda method, seed, value: {"method": method, "seed": seed, "wall_s": 10.0, "recall_e2e": value,
                                     "recall_e2e_random": 0.2, "rank/recall@2@4": value}
  one = [row("independent", 0, 0.5), row("lcron", 0, 0.6)]
  table = tables.markdown(one, tables.summarize(one, ["independent", "lcron"]), ["independent", "lcron"])
  assert "±" not in table
  assert "| `lcron` | 1 | 0.6000 | 0.6000 | +0.1000 (1/1 seeds better) | 10 s |" in table
  two = one + [row("independent", 1, 0.7), row("lcron", 1, 0.6)]
  table = tables.markdown(two, tables.summarize(two, ["independent", "lcron"]), ["independent", "lcron"])
  # lcron: 0.6 both seeds; paired differences +0.1 and -0.1 (sample std 0.1414).
  assert "| `lcron` | 2 | 0.6000 ± 0.0000 | 0.6000 ± 0.0000 | +0.0000 ± 0.1414 (1/2 seeds better) | 10 s |" in table


def test_a_diverged_run_is_recorded_and_not_retried(tmp_path):
  config = tiny_config()
  config.optimizer.learning_rate, config.optimizer.grad_clip = 1e30, 0.0  # blows up within a few steps
  config.train.steps, config.train.checkpoint_every, config.train.eval_every = 40, 1, 0
  outcome = compare.run_one(compare.run_config(config, "independent", 0), str(tmp_path))
  assert set(outcome) == {"diverged_step", "wall_s"} and 1 <= outcome["diverged_step"] <= 40
  marker = tmp_path / compare.DIVERGED_FILE
  mtime = os.path.getmtime(marker)
  assert compare.run_one(compare.run_config(config, "independent", 0), str(tmp_path)) == outcome
  assert os.path.getmtime(marker) == mtime and not (tmp_path / compare.WALL_FILE).exists()


def test_table_and_plot_report_diverged_seeds(tmp_path):
  row = lambda method, seed, value: {"method": method, "seed": seed, "wall_s": 10.0, "recall_e2e": value,
                                     "recall_e2e_random": 0.2, "rank/recall@2@4": value}
  gone = lambda method, seed, step: {"method": method, "seed": seed, "wall_s": 2.0, "diverged_step": step}
  methods = ["independent", "icc", "arf"]
  rows = [row("independent", 0, 0.5), gone("icc", 0, 41), row("arf", 0, 0.6),
          row("independent", 1, 0.7), gone("icc", 1, 57), gone("arf", 1, 12)]
  summary = {s["method"]: s for s in tables.summarize(rows, methods)}
  assert (summary["icc"]["seeds"], summary["icc"]["diverged"]) == (0, 2) and "recall_e2e_mean" not in summary["icc"]
  assert (summary["arf"]["seeds"], summary["arf"]["recall_e2e_mean"], summary["arf"]["wall_s_mean"]) == (1, 0.6, 6.0)
  table = tables.markdown(rows, list(summary.values()), methods)
  assert "| `icc` | 0 | diverged | diverged | diverged on 2/2 seeds (at steps 41, 57) | 2 s |" in table
  assert "| `arf` | 1 | 0.6000 | 0.6000 | +0.1000 (1/1 seeds better); diverged on 1/2 seeds (at steps 12) | 6 s |" in table
  assert tables.plot(rows, methods, str(tmp_path / "plot.png")) and os.path.getsize(tmp_path / "plot.png") > 1000


def test_markdown_pairs_with_every_reference():
  rows = [{"method": m, "seed": s, "recall_e2e": v, "wall_s": 1.0}
          for m, vals in (("bce", (0.5, 0.6)), ("lcron", (0.55, 0.58)), ("arf", (0.6, 0.7))) for s, v in enumerate(vals)]
  methods = ["bce", "lcron", "arf"]
  table = tables.markdown(rows, tables.summarize(rows, methods), methods, ["bce", "lcron"])
  assert "minus bce (paired)" in table and "minus lcron (paired)" in table
  arf = next(line for line in table.splitlines() if line.startswith("| `arf`"))
  assert "+0.1000 ± 0.0000 (2/2 seeds better)" in arf   # arf - bce: 0.1, 0.1
  assert "+0.0850 ± 0.0495 (2/2 seeds better)" in arf   # arf - lcron: 0.05, 0.12
  with pytest.raises(ValueError, match=r"--paired \['icc'\] are not --methods entries"):
    compare.compare(tiny_config(), methods, 1, "/nonexistent", paired=["icc"])


def test_corpus_runs_get_paired_corpus_columns_and_the_ranking_agreement():
  # lcron - independent: logged +0.02, -0.01, +0.03; corpus -0.04, -0.02, +0.01 -> same sign on seeds 1, 2.
  logged = {"independent": (0.70, 0.70, 0.70), "lcron": (0.72, 0.69, 0.73)}
  corpus = {"independent": (0.10, 0.10, 0.10), "lcron": (0.06, 0.08, 0.11)}
  rows = [{"method": m, "seed": s, "recall_e2e": logged[m][s], "corpus_recall_e2e": corpus[m][s], "wall_s": 1.0}
          for m in logged for s in range(3)]
  methods = ["independent", "lcron"]
  summary = tables.summarize(rows, methods)
  assert tables.metric_names(rows)[:2] == ["recall_e2e", "corpus_recall_e2e"]
  assert abs(summary[1]["corpus_recall_e2e_mean"] - 0.25 / 3) < 1e-12
  table = tables.markdown(rows, summary, methods)
  assert "| method | seeds | `recall_e2e` | `corpus_recall_e2e` | `recall_e2e` minus independent (paired) | " \
         "`corpus_recall_e2e` minus independent (paired) | wall time |" in table
  lcron = next(line for line in table.splitlines() if line.startswith("| `lcron`"))
  assert "+0.0133 ± 0.0208 (2/3 seeds better)" in lcron and "-0.0167 ± 0.0252 (1/3 seeds better)" in lcron
  assert tables.ranking_agreement(rows, "lcron", "independent") == "agree on 2/3 seeds (disagree: 0)"
  assert "`lcron` agree on 2/3 seeds (disagree: 0)." in table
  assert tables.ranking_agreement(rows, "independent", "independent") == ""
  plain = [{k: v for k, v in r.items() if k != "corpus_recall_e2e"} for r in rows]
  assert "corpus" not in tables.markdown(plain, tables.summarize(plain, methods), methods)
