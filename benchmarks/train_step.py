"""Train-step and evaluation throughput (requests/s) of a cascade config, side by side in one run.

  python benchmarks/train_step.py [--config configs/default.py] [--batch 1024] [--iters 30]

Prints, after compilation and warm-up: the jitted train step alone (batches already on device), the
jitted evaluation step alone, the input pipeline alone (grain batches to device), and the full
training loop (pipeline + step), each as requests/s, plus ratios between them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cascadejax import configuration, sharding  # noqa: E402
from cascadejax.data import pipeline  # noqa: E402
from cascadejax.experiment import Experiment  # noqa: E402


def timed(fn, iters: int) -> float:
  """Seconds per call of `fn` (which must block on its result), after one warm-up call."""
  fn()
  start = time.perf_counter()
  for _ in range(iters):
    fn()
  return (time.perf_counter() - start) / iters


def main() -> None:
  """Builds the config's experiment and prints the throughput table."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/default.py")
  parser.add_argument("--batch", type=int, default=1024)
  parser.add_argument("--iters", type=int, default=30)
  args = parser.parse_args()

  config = configuration.from_file(args.config)
  config.train.batch_size = config.train.eval_batch_size = args.batch
  config.data.num_train = max(config.data.num_train // 4, 8 * args.batch)  # enough distinct batches
  config.data.num_test = 2 * args.batch
  exp = Experiment.build(config)
  ds = pipeline.train_dataset(exp.data.splits["train"], global_batch_size=args.batch, seed=0)
  batches = [sharding.put_batch(ds[i], exp.mesh) for i in range(8)]
  holder = {"state": exp.init_state(), "i": 0}

  def train_only():
    holder["i"] += 1
    holder["state"], m = exp.train_step(holder["state"], batches[holder["i"] % len(batches)])
    jax.block_until_ready(m["loss"])

  params = lambda: holder["state"].params["cascade"]
  eval_only = lambda: jax.block_until_ready(exp.eval_step(params(), batches[0]))
  it = pipeline.train_iterator(ds)
  input_only = lambda: jax.block_until_ready(sharding.put_batch(next(it), exp.mesh))

  def full_loop():
    holder["state"], m = exp.train_step(holder["state"], sharding.put_batch(next(it), exp.mesh))
    jax.block_until_ready(m["loss"])

  results = {name: args.batch / timed(fn, args.iters) for name, fn in
             [("train step", train_only), ("eval step", eval_only), ("input pipeline", input_only),
              ("train loop (input + step)", full_loop)]}
  stages = " -> ".join(f"{s.model}(k={s.k})" for s in exp.cascade.stages)
  print(f"config {args.config}: {stages}, N={config.data.list_size}, batch {args.batch}, "
        f"{jax.device_count()} x {jax.devices()[0].device_kind}, jax {jax.__version__}")
  for name, rate in results.items():
    print(f"  {name:28s} {rate:12,.0f} requests/s")
  print(f"  eval / train step          {results['eval step'] / results['train step']:12.2f} x")
  print(f"  loop / train step          {results['train loop (input + step)'] / results['train step']:12.2f} x")


if __name__ == "__main__":
  main()
