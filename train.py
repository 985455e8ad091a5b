"""Trains and evaluates a cascade.

  python train.py --config configs/default.py --workdir DIR [--config.train.steps=500 ...]

Running the same command on a workdir that holds a checkpoint resumes the run. It ends by printing
the final metrics as a table (`metric_writer.table`; every digit is in `DIR/metrics.jsonl`).

On multi-host pods and clusters (tpu_scripts/, gpu_scripts/, docs/launch.md) every host runs this same
command with `CASCADEJAX_DISTRIBUTED=1`: `jax.distributed.initialize()` then finds the other processes
itself (TPU VM metadata, SLURM variables) before any device is touched. Anywhere else, give it
JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID, e.g. two
processes on one machine:

  export CASCADEJAX_DISTRIBUTED=1 JAX_COORDINATOR_ADDRESS=127.0.0.1:1234 JAX_NUM_PROCESSES=2
  JAX_PROCESS_ID=0 python train.py --config ... --workdir W &
  JAX_PROCESS_ID=1 python train.py --config ... --workdir W

On Linux it first re-executes itself once with glibc's malloc asking for huge pages, which makes
CPU steps up to 1.7x faster (`cascadejax.huge_pages`; `CASCADEJAX_HUGE_PAGES=0` turns it off).
"""

import os

if __name__ == "__main__":  # first of all: glibc reads its tunables at process start
  from cascadejax import huge_pages
  huge_pages.reexec()

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from cascadejax import metric_writer, overrides, trainer  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (a Python file with get_config()).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and TensorBoard logs.")
flags.mark_flags_as_required(["config", "workdir"])


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  if value is None:
    return None
  try:
    return int(value)
  except ValueError:
    raise app.UsageError(f"{name} must be an integer, got {value!r}") from None


def initialize_distributed() -> None:
  """`jax.distributed.initialize()`, with JAX_NUM_PROCESSES / JAX_PROCESS_ID when set (JAX itself
  reads JAX_COORDINATOR_ADDRESS, and finds all three on TPU VMs and under SLURM)."""
  jax.distributed.initialize(num_processes=_env_int("JAX_NUM_PROCESSES"), process_id=_env_int("JAX_PROCESS_ID"))


def main(argv):
  """Parses flags and the config file, trains and evaluates, and prints the final metrics' table."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if os.environ.get("CASCADEJAX_DISTRIBUTED", "0") not in ("0", "1"):
    raise app.UsageError(f"CASCADEJAX_DISTRIBUTED must be 0 or 1, got {os.environ['CASCADEJAX_DISTRIBUTED']!r}")
  if os.environ.get("CASCADEJAX_DISTRIBUTED") == "1":
    initialize_distributed()
  trainer.quiet_library_logs()
  report = trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if jax.process_index() == 0:  # every process holds the same report: one table is enough
    print(metric_writer.table(report))


if __name__ == "__main__":
  app.run(main, flags_parser=overrides.parse_flags)
