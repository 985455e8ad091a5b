"""cascadejax.day_report: the per-day table of runs moved forward day by day."""

import csv
import subprocess
import sys

import numpy as np
import pytest

from cascadejax import day_report
from cascadejax.metric_writer import MetricWriter


def _run(path, finals, resumed_at=None):
  """A workdir whose final reports are `finals`: (step, (first, last), recall_e2e) each."""
  writer = MetricWriter(str(path), resume_step=resumed_at)
  for step, days, recall in finals:
    writer.write(step, {"loss": 1.0}, split="train")
    writer.write(step, {"recall_e2e": recall, "ranking/ndcg@10": recall / 2}, split="test", final=True,
                 test_days=list(days))
  writer.close()
  return str(path)


D3, D4, D5 = ("2024-01-03",) * 2, ("2024-01-04",) * 2, ("2024-01-05", "2024-01-06")


def test_rows_values_means_and_paired_differences(tmp_path):
  a = _run(tmp_path / "a", [(4, D3, 0.5), (6, D4, 0.6), (8, D5, 0.7)])
  b = _run(tmp_path / "b", [(4, D3, 0.55), (6, D4, 0.58)])
  text = day_report.report([a, f"other={b}"], ["recall_e2e", "ranking/ndcg@10"], out=str(tmp_path / "out"))
  lines = text.splitlines()
  assert "| 2024-01-03 | 0.5000 (step 4) | 0.5500 (step 4) |" in lines
  assert "| 2024-01-05..2024-01-06 | 0.7000 (step 8) | - |" in lines
  diff = np.array([0.55 - 0.5, 0.58 - 0.6])
  # the mean is over the two days both runs evaluated
  assert f"| mean over 2 days | {np.mean([0.5, 0.6]):.4f} ± {np.std([0.5, 0.6], ddof=1):.4f} | 0.5650 ± {np.std([0.55, 0.58], ddof=1):.4f} |" in lines
  assert f"| `other` minus `a` (paired) |  | {diff.mean():+.4f} ± {diff.std(ddof=1):.4f} (1/2 days better) |" in lines
  assert "### `ranking/ndcg@10`" in lines and "| 2024-01-04 | 0.3000 (step 6) | 0.2900 (step 6) |" in lines
  with open(tmp_path / "out" / "days.csv") as f:
    rows = list(csv.DictReader(f))
  assert [(r["label"], r["first_day"], r["last_day"], r["step"]) for r in rows] == [
      ("a", *D3, "4"), ("a", *D4, "6"), ("a", *D5, "8"), ("other", *D3, "4"), ("other", *D4, "6")]
  assert float(rows[2]["recall_e2e"]) == 0.7
  assert (tmp_path / "out" / "days.md").read_text() == text


def test_a_resumed_run_keeps_one_report_per_day(tmp_path):
  """MetricWriter drops the interrupted run's reports after the checkpoint; the report lists the rest."""
  path = _run(tmp_path / "a", [(4, D3, 0.5), (6, D4, 0.6)])
  _run(tmp_path / "a", [(6, D4, 0.65)], resumed_at=4)  # day 4 evaluated again after a resume at step 4
  rows = day_report.day_rows(path, "a")
  assert [(r["first_day"], r["step"], r["recall_e2e"]) for r in rows] == [(D3[0], 4, 0.5), (D4[0], 6, 0.65)]


def test_errors_name_the_problem(tmp_path):
  with pytest.raises(ValueError, match="metrics.jsonl does not exist"):
    day_report.report([str(tmp_path / "nothing")])
  writer = MetricWriter(str(tmp_path / "nodays"))
  writer.write(4, {"recall_e2e": 0.5}, split="test", final=True)  # a run without config.data.test_days
  writer.close()
  with pytest.raises(ValueError, match="no final report with test_days"):
    day_report.report([str(tmp_path / "nodays")])
  a = _run(tmp_path / "a", [(4, D3, 0.5)])
  with pytest.raises(ValueError, match=r"metric\(s\) \['recall@5'\] are in no final report; reports have .*recall_e2e"):
    day_report.report([a], ["recall@5"])
  with pytest.raises(ValueError, match="distinct labels"):
    day_report.report([a, f"a={a}"])


def test_command_prints_the_table(tmp_path):
  a = _run(tmp_path / "a", [(4, D3, 0.5)])
  out = subprocess.run([sys.executable, "-m", "cascadejax.day_report", f"--workdirs={a}"], capture_output=True,
                       text=True, check=True).stdout
  assert "| 2024-01-03 | 0.5000 (step 4) |" in out and "| mean over 1 day | 0.5000 |" in out
