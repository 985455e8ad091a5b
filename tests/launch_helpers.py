"""Shared pieces of the launch-script tests: paths, the stubbed environment and dry-run helpers.

No test needs gcloud, SLURM or a network: `gcloud`, `srun` and `sbatch` are replaced on PATH by
stubs that record any call, and every dry run must leave them uncalled.
"""

import os
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TPU = REPO / "tpu_scripts"
GPU = REPO / "gpu_scripts"
SCRIPTS = sorted([*TPU.glob("*.sh"), *GPU.glob("*.sh"), *GPU.glob("*.sbatch")])
WHERE = ["--name", "tpu-a", "--zone", "us-central2-b", "--project", "proj-1"]
LOC = ["--zone=us-central2-b", "--project=proj-1"]
CLEARED = {"TPU_NAME", "ZONE", "PROJECT_ID", "ACCELERATOR_TYPE", "RUNTIME_VERSION", "CUDA_VISIBLE_DEVICES",
           "JAX_LOCAL_DEVICE_IDS"}


@pytest.fixture
def env(tmp_path):
  """A clean environment whose gcloud/srun/sbatch are stubs that record being called."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for tool in ("gcloud", "srun", "sbatch"):
    stub = bin_dir / tool
    stub.write_text(f"#!/bin/sh\necho {tool} >> '{tmp_path}/called'\nexit 97\n")
    stub.chmod(0o755)
  home = tmp_path / "home"
  home.mkdir()
  clean = {k: v for k, v in os.environ.items()
           if k not in CLEARED and not k.startswith(("CASCADEJAX_", "SLURM_"))}
  clean.update(PATH=f"{bin_dir}:{os.environ['PATH']}", HOME=str(home), TMPDIR=str(tmp_path),
               CASCADEJAX_WORKER_ID="5")
  return clean


def run(script, *args, env, timeout=60):
  return subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=timeout,
                        cwd=REPO)


def dry_lines(script, *args, env):
  """Runs `script --dry-run args` and returns the lines it printed (one command each)."""
  proc = run(script, "--dry-run", *args, env=env)
  assert proc.returncode == 0, proc.stderr
  assert not (Path(env["TMPDIR"]) / "called").exists(), "a dry run called gcloud/srun/sbatch"
  return proc.stdout.splitlines()


def dry(script, *args, env):
  """Runs `script --dry-run args` and returns its printed commands, each split into argv."""
  return [shlex.split(line) for line in dry_lines(script, *args, env=env)]


def remote(argv):
  """The remote shell line of a `gcloud ... ssh --command=LINE`, split into words."""
  (command,) = [a for a in argv if a.startswith("--command=")]
  return command[len("--command="):]
