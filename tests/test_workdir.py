"""`cascadejax.workdir` (what the commands share), the commands' flags, and the final-metrics table."""

import importlib
import os
import subprocess
import sys

import pytest
from absl import flags

from cascadejax import configuration, evaluate, metric_writer, workdir
from tests.conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A hand-written final report of a two-stage cascade, as MetricWriter.write returns it: metric keys
# sorted (pytrees and JSON sort them), so "prerank" comes before "retrieval".
REPORT = {
    "step": 600, "split": "test", "final": True,
    "recall_e2e": 0.61234, "recall_e2e_random": 0.25,
    "prerank/ndcg@2": 0.6, "prerank/ndcg@2_random": 0.3, "prerank/recall@2@2": 0.7,
    "prerank/recall@2@2_random": 0.25, "prerank/survival": 0.61234,
    "retrieval/ndcg@4": 0.81, "retrieval/ndcg@4_random": 0.4, "retrieval/recall@2@4": 0.9,
    "retrieval/recall@2@4_random": 0.5, "retrieval/survival": 0.9,
}


def test_table_has_a_row_per_stage_with_random_references_and_the_end_to_end_line():
  assert metric_writer.table(REPORT) == (
      "test metrics at step 600\n"
      "stage      k  recall@2@k  random  ndcg@k  random  survival\n"
      "retrieval  4      0.9000  0.5000  0.8100  0.4000    0.9000\n"
      "prerank    2      0.7000  0.2500  0.6000  0.3000    0.6123\n"
      "end-to-end recall_e2e 0.6123 (random 0.2500)")


def test_table_shows_shown_lists_after_the_stages_with_dashes_and_other_metrics_below():
  report = {"shown/distinct_category@5": 3.2, "shown/ndcg@5": 0.4, "shown/recall@2@5": 0.5, **REPORT,
            "source": "evaluate", "rerank/size": 5.0}
  del report["final"]
  lines = metric_writer.table(report).splitlines()
  assert [line.split()[0] for line in lines[2:5]] == ["retrieval", "prerank", "shown"]
  assert lines[4] == "shown      5      0.5000       -  0.4000       -         -"
  assert lines[5:] == ["end-to-end recall_e2e 0.6123 (random 0.2500)",
                       "shown/distinct_category@5  3.2000",
                       "rerank/size                5.0000"]


def test_table_of_a_report_without_stages_or_step():
  assert metric_writer.table({"recall_e2e": 0.5}) == "metrics\nend-to-end recall_e2e 0.5000"


def test_mesh_shape_arg_parses_ints_and_names_the_flag():
  assert workdir.mesh_shape_arg("1,1") == (1, 1) and workdir.mesh_shape_arg("-1,4") == (-1, 4)
  with pytest.raises(ValueError, match=r"^--mesh_shape expects comma-separated ints, got '1,x'$"):
    workdir.mesh_shape_arg("1,x")


def test_shared_flags_parse_and_a_bad_mesh_shape_fails_naming_the_flag():
  fv = flags.FlagValues()
  workdir.define_flags(fv)
  fv(["prog", "--workdir=W", "--step", "20", "--mesh_shape=-1,4"])
  assert (fv.workdir, fv.step, fv.mesh_shape) == ("W", 20, (-1, 4))
  fv = flags.FlagValues()
  workdir.define_flags(fv)
  with pytest.raises(flags.IllegalFlagValueError, match=r"flag --mesh_shape=2,,4: --mesh_shape expects"):
    fv(["prog", "--workdir=W", "--mesh_shape=2,,4"])
  fv = flags.FlagValues()
  workdir.define_flags(fv)
  with pytest.raises(flags.IllegalFlagValueError, match=r"--workdir"):
    fv(["prog"])


def test_rerank_overrides_read_literals_else_strings():
  assert evaluate.rerank_overrides(["method=mmr", "k=5", "mmr_lambda=0.5", "fill=True"]) == {
      "method": "mmr", "k": 5, "mmr_lambda": 0.5, "fill": True}
  with pytest.raises(ValueError, match=r"--rerank expects KEY=VALUE, got 'mmr'"):
    evaluate.rerank_overrides(["mmr"])


def test_importing_the_commands_registers_no_flags():
  """A serving binary with its own --workdir or --out can import them (flags come with `define_flags`)."""
  for name in ("compare", "evaluate", "export"):
    importlib.import_module(f"cascadejax.{name}")
  assert not {"workdir", "out", "step", "mesh_shape", "rerank", "methods"} & set(flags.FLAGS)


def test_saved_config_and_final_report_of_a_workdir(tmp_path):
  assert workdir.saved_config(str(tmp_path)) is None and workdir.final_report(str(tmp_path)) is None
  configuration.save(tiny_config(), str(tmp_path))
  assert workdir.saved_config(str(tmp_path)).cascade.gt_num == tiny_config().cascade.gt_num
  writer = metric_writer.MetricWriter(str(tmp_path))
  writer.write(10, {"loss": 1.0}, split="train")
  assert workdir.final_report(str(tmp_path)) is None
  writer.write(20, {"recall_e2e": 0.5}, split="test", final=True)
  writer.write(20, {"recall_e2e": 0.5}, split="test", source="evaluate")
  writer.close()
  assert workdir.final_report(str(tmp_path)) == {"step": 20, "split": "test", "final": True, "recall_e2e": 0.5}


def test_restore_says_what_is_missing(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"config.json not found: is .* a cascadejax workdir"):
    workdir.restore(str(tmp_path))
  configuration.save(tiny_config(), str(tmp_path))
  with pytest.raises(FileNotFoundError, match=r"no checkpoint in .*checkpoints: train first with train.py"):
    workdir.restore(str(tmp_path))


@pytest.mark.parametrize("module, args, message", [
    ("export", ["--workdir=W", "--out=D", "--mesh_shape=1,x"],
     "flag --mesh_shape=1,x: --mesh_shape expects comma-separated ints, got '1,x'"),
    ("export", ["--workdir=W"], "Flag --out must have a value other than None"),
    ("evaluate", ["--workdir=W", "--rerank", "mmr"], "--rerank expects KEY=VALUE, got 'mmr'"),
    ("evaluate", ["--workdir=W", "extra"], "unexpected arguments: ['extra']"),
])
def test_commands_reject_bad_flags_before_reading_the_workdir(module, args, message):
  done = subprocess.run([sys.executable, "-m", f"cascadejax.{module}", *args], cwd=ROOT, capture_output=True,
                        text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)
  assert done.returncode == 1 and message in done.stderr, done.stderr[-2000:]
  assert "Traceback" not in done.stderr
