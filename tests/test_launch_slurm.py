"""The SLURM launch scripts (gpu_scripts/): the sbatch and srun commands of dry runs, and how each task
picks its local GPUs. `srun` and `sbatch` are stubs that record any call (launch_helpers.py).
"""

import pytest

from tests.launch_helpers import REPO, GPU, run, dry


def test_submit_one_process_per_gpu(env):
  (mkdir, sbatch) = dry(GPU / "submit.sh", "--config", "configs/default.py", "--workdir", "/shared/my run",
                        "--nodes", "4", "--partition", "gpu", "--sbatch-arg=--exclusive", "--env", "A=1", "--",
                        "--config.train.steps=9", env=env)
  assert mkdir[:2] == ["mkdir", "-p"]
  script = sbatch.index(str(GPU / "slurm_multinode.sbatch"))
  assert sbatch[:script] == [
      "sbatch", "--parsable", f"--chdir={REPO}", "--job-name=cascadejax", "--nodes=4", "--ntasks-per-node=8",
      "--gpus-per-node=8", "--cpus-per-task=8", "--time=01:00:00", f"--output={env['HOME']}/cascadejax-logs/"
      "cascadejax-%j.out", "--partition=gpu", "--exclusive"]
  assert sbatch[script + 1:] == ["--process-per", "gpu", "--config", "configs/default.py", "--workdir",
                                 "/shared/my run", "--venv", f"{env['HOME']}/cascadejax-venv", "--env", "A=1",
                                 "--", "--config.train.steps=9"]


def test_submit_one_process_per_node_gets_all_cores(env):
  (_, sbatch) = dry(GPU / "submit.sh", "--config", "configs/default.py", "--workdir", "w", "--process-per", "node",
                    "--gpus-per-node", "4", env=env)
  assert {"--ntasks-per-node=1", "--gpus-per-node=4", "--cpus-per-task=32", "node"} <= set(sbatch)
  proc = run(GPU / "submit.sh", "--dry-run", "--workdir", "w", env=env)
  assert proc.returncode == 2 and "missing required flag --config (or set $CASCADEJAX_CONFIG)" in proc.stderr


@pytest.mark.parametrize("process_per, extra", [("gpu", []), ("node", ["--ntasks-per-node=1", "--ntasks=3"])])
def test_sbatch_script_launches_every_task_with_srun(env, process_per, extra):
  env.update(SLURM_JOB_ID="42", SLURM_JOB_NUM_NODES="3", SLURM_CPUS_PER_TASK="6")
  export, srun = dry(GPU / "slurm_multinode.sbatch", "--config", "configs/default.py", "--workdir", "/s/w",
                     "--process-per", process_per, "--env", "K=v w", "--venv", "/opt/venv", "--", "--config.x=1",
                     env=env)
  assert export == ["export", "CASCADEJAX_DISTRIBUTED=1", "PYTHONUNBUFFERED=1", "K=v w"]
  assert srun == ["srun", "--label", "--kill-on-bad-exit=1", "--cpus-per-task=6", *extra, "bash",
                  str(GPU / "slurm_task.sh"), "--process-per", process_per, "--", "/opt/venv/bin/python", "train.py",
                  "--config", "configs/default.py", "--workdir", "/s/w", "--config.x=1"]
  proc = run(GPU / "slurm_multinode.sbatch", "--config", "c", "--workdir", "w", env=env | {"SLURM_JOB_ID": ""})
  assert proc.returncode == 1 and "not inside a SLURM job" in proc.stderr


@pytest.mark.parametrize("process_per, visible, preset, expected", [
    ("node", "0,1,2,3", None, "0,1,2,3"),   # one process drives the node's 4 GPUs
    ("gpu", "5", None, "0"),                # SLURM bound one GPU to the task: it is device 0
    ("gpu", "0,1,2,3", None, None),         # all visible: JAX picks SLURM_LOCALID itself
    ("gpu", "", None, None),
    ("node", "0,1", "1", "1")])             # the user's choice wins
def test_slurm_task_chooses_the_local_devices(env, process_per, visible, preset, expected):
  env["CUDA_VISIBLE_DEVICES"] = visible
  if preset is not None:
    env["JAX_LOCAL_DEVICE_IDS"] = preset
  proc = run(GPU / "slurm_task.sh", "--process-per", process_per, "--", "printenv", "JAX_LOCAL_DEVICE_IDS", env=env)
  if expected is None:
    assert proc.returncode == 1 and proc.stdout == ""
  else:
    assert proc.returncode == 0 and proc.stdout == expected + "\n"
