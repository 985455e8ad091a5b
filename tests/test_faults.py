"""Faults a long run meets (issue 24): kill -9 at named points, a full disk inside orbax's threads,
damaged checkpoint bytes and files, damaged config.json and metrics.jsonl, two runs in one workdir,
a checkpoint of another config. Each case ran wrongly before (the issue's list); docs/reliability.md
maps every promise to its test here.

Kills are real: `python -m tests.fault_cases W` runs with `CASCADEJAX_FAULT` (`cascadejax.faults`)
and dies by SIGKILL at the named point; the chain of kills and reruns in one workdir must end with
the final metrics, the parameters and the report log of one uninterrupted run.
"""

import errno
import glob
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath

from cascadejax import checksums, compare, configuration, evaluate, faults, metric_writer, trainer, workdir, \
    workdir_lock
from cascadejax.checkpoint import Checkpointer, CheckpointSaveError
from tests import fault_cases

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _key(report):  # a report without its wall-clock throughput
  return {k: v for k, v in report.items() if k != "requests_per_s"}


def _leaves(workdir_, step=None):
  _, state = workdir.restore(str(workdir_), step)
  return [np.asarray(x) for x in jax.tree.leaves(state)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """One uninterrupted run of `fault_cases.config()` (in this process)."""
  path = tmp_path_factory.mktemp("faults") / "reference"
  trainer.train_and_evaluate(fault_cases.config(), str(path))
  return path


def _run(workdir_, fault=None, cache=None):
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_COMPILATION_CACHE_DIR": str(cache),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
  env.pop(faults.ENV, None)
  if fault:
    env[faults.ENV] = fault
  return subprocess.run([sys.executable, "-m", "tests.fault_cases", str(workdir_)], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
  """One workdir killed inside the config write, before the first (compiling) step, inside the first
  checkpoint save (after the step-2 report), inside the step-4 report's append, after step 5 (a step
  past the last checkpoint) and during the final evaluation, each time started again; then run to
  the end. Returns the workdir and what was seen after each kill."""
  tmp = tmp_path_factory.mktemp("chain")
  path, cache, seen = tmp / "w", tmp / "xla_cache", {}
  for fault in ("config_write", "before_compile", "inside_save:2", "metrics_write:4", "after_step:5", "final_eval"):
    done = _run(path, fault, cache)
    assert done.returncode == -signal.SIGKILL, (fault, done.stderr[-3000:])
    seen[fault] = {"stderr": done.stderr, "files": sorted(os.listdir(path)),
                   "metrics": (path / "metrics.jsonl").read_text() if (path / "metrics.jsonl").exists() else None,
                   "steps": checksums.verify_directory(str(path / "checkpoints"))}
  done = _run(path, None, cache)
  assert done.returncode == 0, done.stderr[-3000:]
  seen["end"] = {"stderr": done.stderr}
  return path, seen


def test_killed_at_every_point_the_rerun_ends_as_the_uninterrupted_run(reference, chain):
  path, _ = chain
  assert _key(workdir.final_report(str(path))) == _key(workdir.final_report(str(reference)))
  for a, b in zip(_leaves(path), _leaves(reference), strict=True):
    np.testing.assert_array_equal(a, b)
  # metrics.jsonl: every report once, in order, with the uninterrupted run's values
  assert [_key(r) for r in metric_writer.read(str(path))] == [_key(r) for r in metric_writer.read(str(reference))]
  assert [line.split()[-1] for line in evaluate.verify_workdir(str(path))] == ["ok"] * 3


def test_a_kill_inside_the_config_write_leaves_no_half_config(chain):
  _, seen = chain
  assert "config.json" not in seen["config_write"]["files"]  # the half-written file never took its name
  assert "config.json.tmp" in seen["config_write"]["files"]


def test_a_kill_before_the_first_step_leaves_the_config_and_nothing_else(chain):
  _, seen = chain
  before = seen["before_compile"]
  assert before["files"] == ["checkpoints", "config.json", "lock.0", "tensorboard"]
  assert before["steps"] == [] and before["metrics"] is None
  assert "resumed from step" not in seen["inside_save:2"]["stderr"]


def test_a_kill_after_a_step_past_the_last_checkpoint_resumes_from_that_checkpoint(chain):
  _, seen = chain
  after = seen["after_step:5"]
  intact = [s for s, status, _ in after["steps"] if status == "ok"]
  # step 4's save is asynchronous: the kill may come before it is committed (then step 2 is the newest)
  assert intact[:1] in ([4], [2]) and all(status == "ok" for _, status, _ in after["steps"])
  assert '"step": 4' in after["metrics"] and '"step": 6' not in after["metrics"]
  assert f"resumed from step {intact[0]} of" in seen["final_eval"]["stderr"]  # the steps after it trained again


def test_a_kill_inside_a_metrics_append_is_repaired_with_a_warning_naming_the_file(chain):
  path, seen = chain
  text = seen["metrics_write:4"]["metrics"]
  assert text and not text.endswith("\n") and '"step": 4' not in text.rpartition("\n")[0]  # half a line
  assert f"{path / 'metrics.jsonl'}: its last line" in seen["after_step:5"]["stderr"]  # the next start


def test_a_kill_inside_the_first_save_starts_over_without_doubling_its_reports(chain):
  _, seen = chain
  assert '"step": 2' in seen["inside_save:2"]["metrics"]  # the report written before the save
  assert ("ok" not in {status for s, status, _ in seen["inside_save:2"]["steps"] if s == 2})
  assert "resumed from step" not in seen["metrics_write:4"]["stderr"]  # nothing intact: it started over
  # (the final comparison with the uninterrupted run shows the step-2 report is not doubled)


def _scalars(directory):
  """{(tag, step): value} of a TensorBoard directory as TensorBoard shows it: files in the order they
  were started, a `SessionLog.START` at step p hiding the earlier files' events at steps >= p."""
  from tensorboardX.proto import event_pb2
  runs = []
  for name in os.listdir(directory):
    data, events, at = (directory / name).read_bytes(), [], 0
    while at < len(data):
      (length,) = np.frombuffer(data[at:at + 8], "<u8")
      events.append(event_pb2.Event.FromString(data[at + 12:at + 12 + int(length)]))
      at += 12 + int(length) + 4
    if events:  # a start killed before its writer flushed leaves an empty file (TensorBoard shows nothing of it)
      runs.append(events)
  shown, counts = {}, {}
  for events in sorted(runs, key=lambda e: e[0].wall_time):
    for e in events:
      if e.HasField("session_log") and e.session_log.status == e.session_log.START:
        shown = {k: v for k, v in shown.items() if k[1] < e.step}
      for value in e.summary.value:
        counts[value.tag, e.step] = counts.get((value.tag, e.step), 0) + 1
        shown[value.tag, e.step] = value.simple_value
  return shown, counts


def test_tensorboard_shows_every_step_once_with_the_uninterrupted_values(reference, chain):
  path, _ = chain
  shown, _ = _scalars(path / "tensorboard")
  expected, counts = _scalars(reference / "tensorboard")
  assert set(counts.values()) == {1}
  drop = lambda d: {k: v for k, v in d.items() if "requests_per_s" not in k[0]}
  assert drop(shown) == drop(expected)


def test_an_evaluate_after_the_run_never_doubles_a_tensorboard_point(reference, tmp_path):
  path = _copy(reference, tmp_path)
  report = evaluate.evaluate_workdir(str(path))
  shown, counts = _scalars(path / "tensorboard")
  assert set(counts.values()) == {1}
  assert shown["evaluate/test/recall_e2e", 6] == pytest.approx(report["recall_e2e"])
  assert shown["test/recall_e2e", 6] == pytest.approx(workdir.final_report(str(reference))["recall_e2e"])


def test_a_second_start_fails_at_once_naming_the_holder_and_the_lock_dies_with_it(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys\nfrom cascadejax import workdir_lock\nwith workdir_lock.hold(sys.argv[1]):\n"
       "  print('held', flush=True)\n  sys.stdin.read()", str(tmp_path)],
      cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline() == "held\n"
    match = rf"is in use by another run \(host {os.uname().nodename}, pid {holder.pid}, started 20"
    with pytest.raises(workdir_lock.WorkdirLockedError, match=match):
      trainer.train_and_evaluate(fault_cases.config(), str(tmp_path))
    with pytest.raises(workdir_lock.WorkdirLockedError, match=match):  # compare's runs take it too
      compare.run_one(fault_cases.config(), str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["lock.0"]  # nothing written
    with workdir_lock.hold(str(tmp_path), 1):  # another process of a multi-host run has its own lock
      pass
  finally:
    holder.kill()
    holder.wait()
  with workdir_lock.hold(str(tmp_path)) as lock, workdir_lock.hold(str(tmp_path)):  # no stale lock; re-entrant
    assert workdir_lock.holder(lock)["pid"] == os.getpid()


def _copy(reference, tmp_path):
  shutil.copytree(reference, tmp_path / "w")
  return tmp_path / "w"


def _bit_flip(step_dir):
  path = max(glob.glob(f"{step_dir}/state/ocdbt.process_0/d/*"), key=os.path.getsize)
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0x10
  open(path, "wb").write(data)
  return os.path.relpath(path, step_dir)


def _truncate(step_dir):
  path = f"{step_dir}/state/manifest.ocdbt"
  os.truncate(path, os.path.getsize(path) // 2)
  return "state/manifest.ocdbt"


def _delete(step_dir):
  os.remove(f"{step_dir}/data/process_0-of-1.json")
  return "data/process_0-of-1.json"


def _garble_checksums(step_dir):
  with open(f"{step_dir}/checksums.json", "r+") as f:
    f.seek(40)
    f.write("0")
  return "checksums.json"


@pytest.mark.parametrize("damage", [_bit_flip, _truncate, _delete, _garble_checksums])
def test_damaged_newest_step_is_named_and_the_newest_intact_one_is_chosen(reference, tmp_path, damage, caplog):
  path = _copy(reference, tmp_path)
  name = damage(path / "checkpoints" / "6")
  lines = evaluate.verify_workdir(str(path))
  assert lines[0].startswith(f"step 6: damaged ({name} ") and lines[1:] == ["step 4: ok", "step 2: ok"]
  with caplog.at_level(logging.WARNING):
    assert Checkpointer(str(path / "checkpoints")).intact_step() == 4
  assert f"checkpoint step 6 in {path / 'checkpoints'} is damaged ({name} " in caplog.text


def test_a_damaged_step_never_restores_and_training_resumes_from_the_previous_one(reference, tmp_path, caplog):
  path = _copy(reference, tmp_path)
  name = _bit_flip(path / "checkpoints" / "6")
  with pytest.raises(ValueError, match=rf"checkpoint step 6 in .* is damaged \({name} differs from its checksum\)"):
    workdir.restore(str(path), step=6)
  for a, b in zip(_leaves(path), _leaves(reference, 4), strict=True):  # the default falls back to step 4
    np.testing.assert_array_equal(a, b)
  with caplog.at_level(logging.WARNING):
    report = trainer.train_and_evaluate(fault_cases.config(), str(path))  # trains steps 5 and 6 again
  assert "checkpoint step 6 (not intact) moved to" in caplog.text
  assert _key(report) == _key(workdir.final_report(str(reference)))
  assert [line.split()[-1] for line in evaluate.verify_workdir(str(path))] == ["ok"] * 3
  assert os.listdir(path / "checkpoints.set_aside") == ["6"]


def test_a_checkpoint_of_another_config_names_the_differing_keys(reference, tmp_path):
  path = _copy(reference, tmp_path)
  os.remove(path / "config.json")  # the user deleted it and starts another config in the same workdir
  other = fault_cases.config()
  other.embedding.dim, other.optimizer.learning_rate = 8, 0.5
  with pytest.raises(ValueError) as err:
    trainer.train_and_evaluate(other, str(path))
  message = str(err.value)
  assert message.startswith(f"checkpoint step 6 in {path / 'checkpoints'} was saved with a different config "
                            "(2 key(s)): config.embedding.dim: 4 in the checkpoint, 8 now; "
                            "config.optimizer.learning_rate:")
  assert len(message.splitlines()) == 1 and not (path / "config.json").exists()


@pytest.mark.parametrize("content, what", [("", "is empty"), ('{"seed": 0, "data": {', "is not valid JSON")])
def test_a_damaged_config_json_names_the_file_and_what_to_do(reference, tmp_path, content, what):
  path = _copy(reference, tmp_path)
  (path / "config.json").write_text(content)
  for read in (workdir.saved_config, workdir.restore):
    with pytest.raises(ValueError, match=rf"{path / 'config.json'} {what}.*delete it and run train.py again"):
      read(str(path))


def test_resumed_config_is_not_rewritten(reference, tmp_path):
  path = _copy(reference, tmp_path)
  before = os.stat(path / "config.json")
  configuration.save(fault_cases.config(), str(path))
  assert os.stat(path / "config.json").st_ino == before.st_ino and os.stat(path / "config.json").st_mtime_ns == \
      before.st_mtime_ns


class _Killed(BaseException):
  pass


def _kill_at(monkeypatch, point):
  monkeypatch.setenv(faults.ENV, point)
  monkeypatch.setattr(faults.os, "kill", lambda pid, sig: (_ for _ in ()).throw(_Killed()))


def test_a_kill_inside_the_resume_rewrite_of_metrics_loses_no_line(tmp_path, monkeypatch):
  writer = metric_writer.MetricWriter(str(tmp_path))
  for step in (2, 4, 6):
    writer.write(step, {"loss": step}, split="train")
  writer.close()
  before = (tmp_path / "metrics.jsonl").read_text()
  _kill_at(monkeypatch, "metrics_rewrite")
  with pytest.raises(_Killed):
    metric_writer.MetricWriter(str(tmp_path), resume_step=2)  # drops 4 and 6 through a temp file
  assert (tmp_path / "metrics.jsonl").read_text() == before
  monkeypatch.delenv(faults.ENV)
  metric_writer.MetricWriter(str(tmp_path), resume_step=2).close()
  assert [r["step"] for r in metric_writer.read(str(tmp_path))] == [2]


def test_an_evaluate_report_appended_during_a_resume_rewrite_is_kept(tmp_path):
  writer = metric_writer.MetricWriter(str(tmp_path))
  for step in (2, 4, 6):
    writer.write(step, {"loss": step}, split="train")
  writer.close()
  log = str(tmp_path / "metrics.jsonl")
  appender = subprocess.Popen(  # `cascadejax.evaluate` in the middle of its append
      [sys.executable, "-c", "import sys\nfrom cascadejax import files\nwith files.exclusive(sys.argv[1]):\n"
       "  print('held', flush=True)\n  sys.stdin.readline()\n  open(sys.argv[1], 'a').write("
       "'{\"step\": 6, \"source\": \"evaluate\", \"loss\": 6.0}\\n')", log],
      cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert appender.stdout.readline() == "held\n"
    resume = threading.Thread(target=lambda: metric_writer.MetricWriter(str(tmp_path), resume_step=2).close())
    resume.start()  # a run resuming from step 2: rewrites the log without steps 4 and 6
    resume.join(1.0)
    assert resume.is_alive()  # it waits for the append
    appender.communicate("go\n", timeout=60)
    resume.join(60)
  finally:
    appender.kill()
  assert [(r["step"], r.get("source", "train")) for r in metric_writer.read(str(tmp_path))] == \
      [(2, "train"), (6, "evaluate")]


def test_a_cut_off_last_metrics_line_is_left_out_a_damaged_earlier_one_is_named(tmp_path, caplog):
  (tmp_path / "metrics.jsonl").write_text('{"step": 2, "loss": 1.0}\n{"step": 4, "lo')
  with caplog.at_level(logging.WARNING):
    assert metric_writer.read(str(tmp_path)) == [{"step": 2, "loss": 1.0}]
  assert f"{tmp_path / 'metrics.jsonl'}: its last line (15 characters" in caplog.text
  (tmp_path / "metrics.jsonl").write_text('{"step": 2, "lo\n{"step": 4, "loss": 1.0}\n')
  with pytest.raises(ValueError, match=rf"{tmp_path / 'metrics.jsonl'}, line 1, is not a JSON report"):
    metric_writer.read(str(tmp_path))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES])
def test_a_failed_write_inside_orbax_threads_stops_on_the_main_thread_naming_what_is_kept(tmp_path, monkeypatch, code):
  directory = tmp_path / "checkpoints"
  saver, state, threads = Checkpointer(str(directory)), {"w": jnp.arange(4.0)}, []
  saver.save(1, state, layout={"n": 1})
  saver.wait()
  write_text = type(epath.Path("/")).write_text

  def failing(self, *args, **kwargs):
    if "layout" in str(self):
      threads.append(threading.current_thread().name)
      raise OSError(code, os.strerror(code), str(self))
    return write_text(self, *args, **kwargs)

  monkeypatch.setattr(type(epath.Path("/")), "write_text", failing)
  with pytest.raises(CheckpointSaveError) as err:
    saver.save(2, state, layout={"n": 2})
    saver.wait()
  assert threads and "MainThread" not in threads  # it failed in orbax's thread, and stopped this one
  assert str(err.value).startswith(f"saving checkpoint step 2 to {directory} failed: [Errno {code}]")
  assert " MiB free there); the last intact checkpoint, step 1, is kept. Free space" in str(err.value)
  monkeypatch.undo()
  assert Checkpointer(str(directory)).intact_step() == 1


def test_a_non_finite_loss_just_after_a_restore_says_the_restored_step_may_be_damaged():
  stub = types.SimpleNamespace(wait=lambda: None, latest_step=lambda: 4, every=2, directory="/w/checkpoints",
                               restored_step=4)
  state = types.SimpleNamespace(nonfinite_step=np.int32(5))  # step 6, two after the restore
  with pytest.raises(trainer.NonFiniteLossError, match=r"resumed from step 4 only 2 step\(s\) before: the restored "
                     r"checkpoint may be damaged \(check every step with python -m cascadejax.evaluate --verify "
                     r"--workdir /w\)"):
    trainer._check_finite(state, stub)
  stub.restored_step = 2  # longer ago than checkpoint_every: the usual advice
  with pytest.raises(trainer.NonFiniteLossError, match=r"The last good checkpoint \(step 4\) is kept"):
    trainer._check_finite(state, stub)


def test_a_step_whose_checksums_were_never_written_is_not_restored(tmp_path, monkeypatch, caplog):
  directory, state = tmp_path / "checkpoints", {"w": jnp.arange(4.0)}
  saver = Checkpointer(str(directory))
  saver.save(1, state)
  saver.wait()
  _kill_at(monkeypatch, "before_checksums:2")  # dies after orbax finished step 2, before its checksums
  saver.save(2, state)
  with pytest.raises(_Killed):
    saver.wait()
  with caplog.at_level(logging.WARNING):
    assert Checkpointer(str(directory)).intact_step() == 1
  assert f"checkpoint step 2 in {directory} is unverified (no checksums.json" in caplog.text


def test_a_full_disk_inside_the_config_write_leaves_the_old_config(reference, tmp_path, monkeypatch):
  path = _copy(reference, tmp_path)
  before = (path / "config.json").read_text()
  monkeypatch.setenv(faults.ENV, "config_write::enospc")
  changed = fault_cases.config()
  changed.train.steps = 8  # a resumable change: the file is replaced
  with pytest.raises(OSError, match=r"No space left on device \(injected by CASCADEJAX_FAULT at config_write\)"):
    configuration.save(changed, str(path))
  assert (path / "config.json").read_text() == before and not (path / "config.json.tmp").exists()


def test_a_full_disk_inside_a_metrics_append_names_the_file(tmp_path, monkeypatch):
  writer = metric_writer.MetricWriter(str(tmp_path))
  writer.write(2, {"loss": 1.0}, split="train")
  monkeypatch.setenv(faults.ENV, "metrics_write:4:enospc")
  with pytest.raises(OSError, match=rf"appending the step-4 report to {tmp_path / 'metrics.jsonl'} failed: No space"):
    writer.write(4, {"loss": 1.0}, split="train")
  writer.close()
