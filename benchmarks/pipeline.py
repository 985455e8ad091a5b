"""Input pipeline alone vs the train step's consumption rate, side by side, as a Markdown table.

  python benchmarks/pipeline.py [--configs configs/default.py,configs/movielens_two_stage.py]
                                [--iters 50] [--batch 0]

For each config (MovieLens is skipped with a note when its data directory is absent), after
building the experiment (the MovieLens conversion is read from its cache when present):

  * pipeline alone: batches/s of `pipeline.train_dataset` -> `pipeline.train_iterator` (grain,
    background reader threads) -> `mesh_lib.put_batch` -> ready on device, with no step running;
  * train step alone: steps/s of the jitted `Experiment.train_step` on batches already on device;
  * loop: steps/s of the two together, as `trainer.py` runs them.

`pipeline / step` above 1 means the pipeline outpaces the step; it must stay above 1 (the loop then
runs at the step's rate). Rates are means over `--iters` calls after compilation and warm-up.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cascadejax import configuration, mesh as mesh_lib  # noqa: E402
from cascadejax.data import movielens, pipeline  # noqa: E402
from cascadejax.experiment import Experiment  # noqa: E402


def rate(fn, iters: int, warmup: int = 3) -> float:
  """Calls per second of `fn` (which must block on its result), after `warmup` calls."""
  for _ in range(warmup):
    fn()
  start = time.perf_counter()
  for _ in range(iters):
    fn()
  return iters / (time.perf_counter() - start)


def measure(path: str, iters: int, batch: int) -> dict[str, object]:
  """One table row for the config file at `path`."""
  config = configuration.from_file(path)
  if batch:
    config.train.batch_size = batch
  if config.data.name == "movielens":
    directory = config.data.dir or movielens.DEFAULT_DIR
    if not os.path.isdir(directory):
      return {"config": path, "skipped": f"no MovieLens data in {directory}"}
  start = time.perf_counter()
  exp = Experiment.build(config)
  build_s = time.perf_counter() - start
  b, split = config.train.batch_size, exp.data.splits["train"]
  ds = pipeline.train_dataset(split, global_batch_size=b, seed=0)

  it = pipeline.train_iterator(ds)
  input_rate = rate(lambda: jax.block_until_ready(mesh_lib.put_batch(next(it), exp.mesh)), iters)
  del it

  on_device = [mesh_lib.put_batch(ds[i], exp.mesh) for i in range(4)]
  holder = {"state": exp.init_state(), "i": 0}

  def step(batch):
    holder["state"], m = exp.train_step(holder["state"], batch)
    jax.block_until_ready(m["loss"])

  def step_only():
    holder["i"] += 1
    step(on_device[holder["i"] % len(on_device)])

  step_rate = rate(step_only, iters)
  it = pipeline.train_iterator(ds)
  loop_rate = rate(lambda: step(mesh_lib.put_batch(next(it), exp.mesh)), iters)
  return {"config": path, "N": config.data.list_size, "batch": b, "requests": split.batch_size,
          "build_s": build_s, "input": input_rate, "step": step_rate, "loop": loop_rate,
          "stages": " -> ".join(f"{s.model}(k={s.k})" for s in exp.cascade.stages)}


def main() -> None:
  """Measures every config and prints the Markdown table."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default="configs/default.py,configs/movielens_two_stage.py")
  parser.add_argument("--iters", type=int, default=50)
  parser.add_argument("--batch", type=int, default=0, help="0: each config's train.batch_size")
  args = parser.parse_args()
  rows = [measure(p, args.iters, args.batch) for p in args.configs.split(",")]
  print(f"{jax.device_count()} x {jax.devices()[0].device_kind}, {os.cpu_count()} CPU cores, jax {jax.__version__}, "
        f"{args.iters} calls each after warm-up\n")
  print("| config | cascade | N | batch | train requests | pipeline alone (batches/s) | train step alone (steps/s) "
        "| pipeline / step | loop (steps/s) | loop / step |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    if "skipped" in r:
      print(f"| `{r['config']}` | skipped: {r['skipped']} |||||||||")
      continue
    print(f"| `{r['config']}` | {r['stages']} | {r['N']} | {r['batch']} | {r['requests']:,} | {r['input']:,.1f} "
          f"| {r['step']:,.1f} | {r['input'] / r['step']:.1f}x | {r['loop']:,.1f} | {r['loop'] / r['step']:.2f}x |")
  slow = [r["config"] for r in rows if "input" in r and r["input"] < r["step"]]
  print(f"\nthe pipeline is the bottleneck for: {', '.join(slow)}" if slow else
        "\nthe pipeline outpaces the train step for every config")


if __name__ == "__main__":
  main()
