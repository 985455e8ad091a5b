"""Two local processes joined by `jax.distributed` (coordinator on 127.0.0.1) train like one.

Each process runs `train.py` with CASCADEJAX_DISTRIBUTED=1 and 2 forced CPU devices, so the mesh
(2 data x 2 model) spans both processes: each feeds its half of every global batch, row-sharded
tables (all-to-all routing over both axes) exchange ids across processes, and both write one
checkpoint. The result must equal one process driving 4 devices, and the 2-process checkpoint must
resume in a single process (a different process count) with nothing lost.
"""

import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from cascadejax import metric_writer
from cascadejax.checkpoint import Checkpointer
from tests.conftest import ROOT, cpu_devices_env

CONFIG = """
from tests.conftest import tiny_config


def get_config():
  c = tiny_config()
  c.train.steps, c.train.log_every, c.train.eval_every = 8, 1, 0
  c.mesh.axes, c.mesh.shape = ("data", "model"), (2, 2)
  c.embedding.update(sharded=True, replicate_below=50, shard_axes=("data", "model"), routing="all_to_all")
  return c
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _train(config_file, workdir, processes: int, devices_each: int) -> list[str]:
  """Runs train.py in `processes` processes with `devices_each` CPU devices each; returns their stderr."""
  base = cpu_devices_env(devices_each)
  if processes > 1:
    base.update(CASCADEJAX_DISTRIBUTED="1", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_free_port()}",
                JAX_NUM_PROCESSES=str(processes))
  logs = [open(f"{workdir}.{i}.log", "w+") for i in range(processes)]
  procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), f"--config={config_file}",
                             f"--workdir={workdir}"], env={**base, "JAX_PROCESS_ID": str(i)}, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=logs[i]) for i in range(processes)]
  deadline = time.time() + 600
  while any(p.poll() is None for p in procs) and time.time() < deadline:
    if any(p.poll() not in (None, 0) for p in procs):
      break  # one failed: the others would wait for it forever
    time.sleep(0.2)
  for p in procs:
    if p.poll() is None:
      p.kill()
      p.wait()
  texts = []
  for log in logs:
    log.seek(0)
    texts.append(log.read())
    log.close()
  for i, p in enumerate(procs):
    assert p.returncode == 0, f"process {i} of {processes} exited with {p.returncode}:\n{texts[i][-4000:]}"
  return texts


def _close(got, want):
  assert [(r["step"], r["split"]) for r in got] == [(r["step"], r["split"]) for r in want]
  for a, b in zip(got, want):
    for k, v in b.items():
      if isinstance(v, float) and k != "requests_per_s":
        np.testing.assert_allclose(a[k], v, rtol=2e-5, atol=1e-6, err_msg=f"step {b['step']} {k}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("multiprocess")
  config_file = tmp / "two_by_two.py"
  config_file.write_text(CONFIG)
  two, one = tmp / "two_processes", tmp / "one_process"
  two_logs = _train(config_file, two, processes=2, devices_each=2)
  _train(config_file, one, processes=1, devices_each=4)
  return config_file, two, one, two_logs


def test_two_processes_train_like_one(runs):
  _, two, one, _ = runs
  saved = Checkpointer(str(two / "checkpoints"))
  assert saved.layout(8) == {"devices": 4, "processes": 2, "embedding_shards": 4, "process_shares": False}
  saved.close()
  positions = sorted(f for f in os.listdir(two / "checkpoints" / "8" / "data") if f.endswith(".json"))
  assert positions == ["process_0-of-2.json", "process_1-of-2.json"]
  _close(metric_writer.read(str(two)), metric_writer.read(str(one)))


def test_two_process_checkpoint_resumes_in_one_process(runs, tmp_path):
  config_file, two, one, _ = runs
  moved = tmp_path / "moved"
  shutil.copytree(two, moved)
  shutil.rmtree(moved / "checkpoints" / "8")  # as if both processes had been killed after step 4's save
  logs = _train(config_file, moved, processes=1, devices_each=4)
  assert "resumed from step 4" in logs[0]
  _close(metric_writer.read(str(moved)), metric_writer.read(str(one)))


LOGS_CONFIG = """
from configs import logs_example


def get_config():
  c = logs_example.get_config()
  c.data.update(dir={log!r}, cache_dir={cache!r}, train_days=("2024-01-01", "2024-01-02"),
                test_days=("2024-01-03", "2024-01-03"), vocab_days=("2024-01-01", "2024-01-02"))
  c.train.update(batch_size=8, eval_batch_size=16, steps=4, log_every=2, checkpoint_every=2, eval_every=0,
                 progress_bar=False)
  c.optimizer.warmup_steps = 1
  return c
"""


def test_two_processes_each_convert_their_share_of_the_logs(tmp_path):
  from cascadejax import workdir  # noqa: PLC0415
  from cascadejax import data as data_lib  # noqa: PLC0415
  from cascadejax.data.logs import example  # noqa: PLC0415
  from configs import logs_example  # noqa: PLC0415

  example.write(str(tmp_path / "log"), requests=96, days=3)
  config_file = tmp_path / "logs_two.py"
  config_file.write_text(LOGS_CONFIG.format(log=str(tmp_path / "log"), cache=str(tmp_path / "cache")))
  run = tmp_path / "run"
  _train(config_file, run, processes=2, devices_each=1)
  final = [r for r in metric_writer.read(str(run)) if r.get("final")][0]
  # One process evaluating the same checkpoint on every request gives the same means.
  exp, state = workdir.restore(str(run))
  assert exp.data.process_share is None
  again = exp.evaluate(state.params["cascade"], "test")
  for k, v in again.items():
    np.testing.assert_allclose(final[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
  # The two shares are disjoint and together hold every request.
  cfg = exp.config.data
  shares = [data_lib.load(cfg, 2, process_index=i, process_count=2) for i in range(2)]
  for split in ("train", "test"):
    ids = [np.asarray(d.request_ids[split]) for d in shares]
    assert not set(ids[0]) & set(ids[1]) and min(len(i) for i in ids) > 0
    assert sorted(np.concatenate(ids)) == sorted(np.asarray(exp.data.request_ids[split]))
  assert all(len(d.report["conversions"]) == 1 for d in shares)  # converted by the two processes, not again
  del logs_example
