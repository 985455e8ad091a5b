"""What verified checkpoints cost: saving a config's train state, hashing its files, verifying them.

  python benchmarks/checkpoint_checksums.py [--config configs/default.py] [--repeats 3] [--big_mb 256]

For the config's initial train state (parameters and optimizer state, as `trainer.py` saves them):
the main thread's time in `Checkpointer.save` (orbax copies the arrays and returns; it writes in its
threads), the time until orbax has finished the step, the time to hash every file of the step into
`checksums.json` (done by a background thread in training), and the time `verify_step` takes at
restore, each the median of `--repeats` saves. Then the same for one float32 array of `--big_mb` MB,
to give the hashing rate for larger states.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cascadejax import checksums, configuration  # noqa: E402
from cascadejax.experiment import Experiment  # noqa: E402


def measure(state, repeats: int) -> dict[str, float]:
  """Median seconds of save (main thread), orbax finishing, hashing and verifying one step of `state`."""
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    manager = ocp.CheckpointManager(tmp, options=ocp.CheckpointManagerOptions(max_to_keep=2))
    for step in range(repeats):
      t0 = time.perf_counter()
      manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
      t1 = time.perf_counter()
      manager.wait_until_finished()
      t2 = time.perf_counter()
      step_dir = os.path.join(tmp, str(step))
      checksums.write_checksums(step_dir, step)
      t3 = time.perf_counter()
      assert checksums.verify_step(step_dir) == ("ok", "")
      t4 = time.perf_counter()
      size = sum(os.path.getsize(os.path.join(r, n)) for r, _, ns in os.walk(step_dir) for n in ns)
      rows.append((t1 - t0, t2 - t1, t3 - t2, t4 - t3, size))
    manager.close()
  cols = list(zip(*rows))
  return {"save_s": statistics.median(cols[0]), "write_s": statistics.median(cols[1]),
          "hash_s": statistics.median(cols[2]), "verify_s": statistics.median(cols[3]), "mb": cols[4][-1] / 2**20}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="configs/default.py")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--big_mb", type=int, default=256)
  args = parser.parse_args()
  exp = Experiment.build(configuration.from_file(args.config))
  state = exp.init_state()
  big = {"w": jax.random.normal(jax.random.key(0), (args.big_mb * 2**18,), jnp.float32)}
  for name, tree in ((args.config, state), (f"one {args.big_mb} MB array", big)):
    jax.block_until_ready(tree)
    r = measure(tree, args.repeats)
    print(f"{name}: {r['mb']:.1f} MB on disk; save (main thread) {r['save_s'] * 1e3:.0f} ms, orbax writing "
          f"{r['write_s'] * 1e3:.0f} ms, hashing {r['hash_s'] * 1e3:.0f} ms ({r['mb'] / r['hash_s']:.0f} MB/s), "
          f"verifying {r['verify_s'] * 1e3:.0f} ms; hashing / (save + writing) = "
          f"{r['hash_s'] / (r['save_s'] + r['write_s']):.2f}")


if __name__ == "__main__":
  main()
