"""Train -> kill -9 -> resume -> evaluate -> export -> reload, on a tiny cascade in a temp dir; the
commands run as programs (`train.py`, `python -m cascadejax.evaluate`, `python -m cascadejax.export`)."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from cascadejax import export, metric_writer, mesh as mesh_lib, trainer
from cascadejax.data import pipeline
from cascadejax.evaluate import evaluate_workdir
from cascadejax.workdir import restore
from cascadejax.experiment import Experiment
from tests.conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 600


def _train_cmd(config_file, workdir):
  return [sys.executable, os.path.join(ROOT, "train.py"), f"--config={config_file}", f"--workdir={workdir}",
          f"--config.train.steps={STEPS}", "--config.train.checkpoint_every=20", "--config.train.log_every=50",
          "--config.train.eval_every=300"]


def _final(workdir):
  finals = [r for r in metric_writer.read(workdir) if r.get("final")]
  assert len(finals) == 1
  return finals[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """An uninterrupted run, and one killed with SIGKILL after its first checkpoint, then rerun."""
  tmp = tmp_path_factory.mktemp("e2e")
  config_file = tmp / "tiny.py"
  config_file.write_text("from tests.conftest import tiny_config\n\ndef get_config():\n  return tiny_config()\n")
  env = {**os.environ, "PYTHONPATH": ROOT}
  straight, killed = tmp / "straight", tmp / "killed"
  done = subprocess.run(_train_cmd(config_file, straight), check=True, env=env, cwd=ROOT, capture_output=True,
                        text=True)
  (tmp / "straight.stdout").write_text(done.stdout)

  proc = subprocess.Popen(_train_cmd(config_file, killed), env=env, cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 120
  while not os.path.exists(killed / "checkpoints" / "20" / "commit_success.txt") and time.time() < deadline:
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL
  interrupted_at = max(int(d) for d in os.listdir(killed / "checkpoints") if d.isdigit())
  assert interrupted_at < STEPS  # it really was cut off before the end
  # Resumed 4 steps per dispatch with the training split on device (overrides of the shipped config's
  # keys): the results below stay bit-identical to the uninterrupted one-step-per-call run.
  again = _train_cmd(config_file, killed) + ["--config.train.steps_per_call", "4", "--config.data.on_device=true"]
  done = subprocess.run(again, env=env, cwd=ROOT, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "resumed from step" in done.stderr
  return straight, killed


def test_killed_run_resumes_to_identical_results(runs):
  straight, killed = runs
  assert _final(killed) == _final(straight)
  _, a = restore(str(straight))
  _, b = restore(str(killed))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # The resumed log holds every report once, as the uninterrupted one does.
  key = lambda r: (r["step"], r["split"])
  assert [key(r) for r in metric_writer.read(str(killed))] == [key(r) for r in metric_writer.read(str(straight))]


def test_workdir_outputs(runs):
  straight, _ = runs
  reports = metric_writer.read(str(straight))
  final = reports[-1]
  assert final["final"] is True and final["step"] == STEPS and 0 <= final["recall_e2e"] <= 1
  assert {"loss", "requests_per_s", "loss/retrieval", "loss/prerank"} <= set(reports[0])
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(straight / "tensorboard"))
  with open(straight / "config.json") as f:
    assert json.load(f)["cascade"]["stages"] == ["retrieval", "prerank"]


def test_train_py_ends_with_the_final_metrics_table(runs):
  straight, _ = runs
  stdout = (straight.parent / "straight.stdout").read_text()
  table = metric_writer.table(_final(str(straight)))
  assert stdout.endswith(table + "\n")
  lines = table.splitlines()  # stages in cascade order, then the end-to-end line
  assert lines[2].startswith("retrieval  4 ") and lines[3].startswith("prerank    2 ")
  assert lines[4].startswith("end-to-end recall_e2e ")


def _command(module, *args):
  """Runs `python -m cascadejax.<module> ARGS...`; returns its stdout."""
  done = subprocess.run([sys.executable, "-m", f"cascadejax.{module}", *args], cwd=ROOT, capture_output=True,
                        text=True, env={**os.environ, "PYTHONPATH": ROOT})
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stdout


def test_evaluate_command_prints_the_table_or_the_json_report(runs):
  straight, _ = runs
  table = _command("evaluate", f"--workdir={straight}")
  report = metric_writer.read(str(straight))[-1]  # what that command appended
  assert report["source"] == "evaluate" and table == metric_writer.table(report) + "\n"
  assert table.startswith(f"test metrics at step {STEPS}\n")
  printed = json.loads(_command("evaluate", "--workdir", str(straight), "--json", "--split=train",
                                "--rerank", "method=mmr", "--rerank=k=2"))
  assert printed == metric_writer.read(str(straight))[-1]
  assert printed["split"] == "train" and printed["source"] == "evaluate"
  assert printed["rerank/size"] == pytest.approx(2.0) and "shown/recall@2@2" in printed


def test_evaluate_reproduces_final_metrics_and_appends(runs):
  straight, _ = runs
  report = evaluate_workdir(str(straight))
  final = _final(str(straight))
  assert report["source"] == "evaluate" and report["step"] == STEPS
  for k, v in final.items():
    if k not in ("final", "source"):
      assert report[k] == pytest.approx(v, abs=1e-6), k
  assert metric_writer.read(str(straight))[-1]["source"] == "evaluate"


def test_export_command_then_reload_scores_equal(runs, tmp_path):
  straight, _ = runs
  exp, state = restore(str(straight))
  printed = json.loads(_command("export", "--workdir", str(straight), f"--out={tmp_path}", "--platforms", "cpu"))
  assert printed == json.loads((tmp_path / "manifest.json").read_text())
  assert printed["step"] == STEPS and printed["platforms"] == ["cpu"]
  loaded = export.load(str(tmp_path))
  assert loaded.names == ("retrieval", "prerank") and loaded.ks == (4, 2)
  batch = exp.data.splits["test"].take(slice(0, 7))  # a batch size the export never saw
  want = exp.cascade.apply({"params": state.params["cascade"]}, batch.user, batch.items).scores
  np.testing.assert_allclose(np.asarray(loaded.score(batch)), np.asarray(want), rtol=1e-5, atol=1e-5)
  alive = loaded.select(batch)
  assert (alive[0].sum(-1) == np.minimum(4, batch.mask.sum(-1))).all() and (alive[1] <= alive[0]).all()


def test_resume_with_fewer_steps_than_the_checkpoint_is_refused(runs):
  straight, _ = runs
  before = (straight / "config.json").read_text()
  c = tiny_config()
  c.train.steps = 10
  with pytest.raises(ValueError, match=rf"config.train.steps=10 is below step {STEPS} of the checkpoint"):
    trainer.train_and_evaluate(c, str(straight))
  assert (straight / "config.json").read_text() == before  # the workdir is left as it was


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  c = tiny_config()
  c.optimizer.learning_rate, c.optimizer.grad_clip = 1e30, 0.0  # parameters blow up within a few steps
  c.train.steps, c.train.checkpoint_every, c.train.log_every = 40, 1, 1
  with pytest.raises(trainer.NonFiniteLossError, match=r"non-finite loss or gradient at step (\d+).*last good checkpoint \(step (\d+)\)") as err:
    trainer.train_and_evaluate(c, str(tmp_path))
  bad, kept = map(int, re.search(r"at step (\d+).*step (\d+)\)", str(err.value)).groups())
  assert kept == bad - 1
  _, state = restore(str(tmp_path))
  assert int(state.step) == kept
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))


def test_same_seed_same_result_other_seed_differs(tmp_path):
  c = tiny_config()
  a = trainer.train_and_evaluate(c, str(tmp_path / "a"))
  b = trainer.train_and_evaluate(c, str(tmp_path / "b"))
  assert a == b
  c.seed = 1
  other = trainer.train_and_evaluate(c, str(tmp_path / "c"))
  assert other != a


def test_accumulate_sums_each_metric_key():
  a = {"loss": np.float32(1.5), "recall": np.float32(0.25)}
  b = {"loss": np.float32(-0.5), "recall": np.float32(0.5)}
  first = trainer.accumulate(None, a)
  assert {k: float(v) for k, v in first.items()} == {"loss": 1.5, "recall": 0.25}
  both = trainer.accumulate(first, b)
  assert {k: float(v) for k, v in both.items()} == {"loss": 1.0, "recall": 0.75}


def test_gradient_norm_overflow_stops_training():
  # Finite gradients near 1e30 whose global norm overflows float32: clipping would zero the update.
  exp = Experiment.build(tiny_config())
  loss = exp.method.loss
  exp.method.loss = lambda *a, **k: jax.tree.map(lambda x: x * 1e30, loss(*a, **k))
  batch = mesh_lib.put_batch(pipeline.train_dataset(exp.data.splits["train"], global_batch_size=16, seed=0)[0],
                             exp.mesh)
  state = exp.init_state()
  before = jax.tree.map(lambda x: np.array(x, copy=True), state.params)
  state, metrics = exp.train_step(state, batch)
  assert np.isfinite(float(metrics["loss"])) and not np.isfinite(float(metrics["grad_norm"]))
  assert int(state.nonfinite_step) == 0
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.params), before)


def test_non_finite_loss_before_any_checkpoint_says_so(tmp_path):
  c = tiny_config()
  c.optimizer.learning_rate, c.optimizer.grad_clip = 1e30, 0.0
  c.train.steps, c.train.checkpoint_every, c.train.log_every = 40, 40, 1
  with pytest.raises(trainer.NonFiniteLossError, match=r"No checkpoint was saved before it") as err:
    trainer.train_and_evaluate(c, str(tmp_path))
  assert 1 <= err.value.step < 40
