"""Train-step and evaluation throughput (requests/s) of a cascade config, side by side in one run.

  python benchmarks/train_step.py [--config configs/default.py] [--batch 1024] [--iters 32] [--rounds 3]
      [--set corpus.negatives=sampled ...]

Prints, after compilation and warm-up: the jitted train step alone (batches already on device), the
jitted evaluation step alone, the input pipeline alone (grain batches to device), and the training
loop as `trainer.py` runs it (`trainer._advance`: read, place, K steps per dispatch, running sums)
for `config.train.steps_per_call` K = 1, 4 and 16, with the batches read on the host (grain) and with
the split on device (`config.data.on_device`: only row indices move), each as requests/s and as a
ratio to the bare step (dispatched back to back on batches already on device). The loop dispatches
asynchronously and waits only at the end, as the trainer does between log lines. Every variant runs
once per round, round after round, so that a shared machine's drifting load falls on all of them.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # as train.py: glibc's malloc asks for huge pages (CASCADEJAX_HUGE_PAGES=0: without)
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from cascadejax import huge_pages
  huge_pages.reexec()

import argparse  # noqa: E402
import ast  # noqa: E402
import time  # noqa: E402

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cascadejax import configuration, mesh as mesh_lib, trainer  # noqa: E402
from cascadejax.data import pipeline  # noqa: E402
from cascadejax.experiment import Experiment  # noqa: E402


def timed(fn, iters: int, sync=lambda: None) -> float:
  """Seconds per call of `fn`, after one warm-up call; `sync()` blocks on the work `fn` dispatched."""
  fn()
  sync()
  start = time.perf_counter()
  for _ in range(iters):
    fn()
  sync()
  return (time.perf_counter() - start) / iters


def main() -> None:
  """Builds the config's experiment and prints the throughput table."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/default.py")
  parser.add_argument("--batch", type=int, default=1024)
  parser.add_argument("--iters", type=int, default=32)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="a config value (dotted key below config, a Python literal or a string), repeatable")
  args = parser.parse_args()

  config = configuration.from_file(args.config)
  for item in args.set:
    key, _, text = item.partition("=")
    *sections, name = key.split(".")
    holder = config
    for part in sections:
      holder = holder[part]
    try:
      holder[name] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      holder[name] = text
  config.train.batch_size = config.train.eval_batch_size = args.batch
  config.data.num_train = max(config.data.num_train // 4, 8 * args.batch)  # enough distinct batches
  config.data.num_test = 2 * args.batch
  exps = {False: Experiment.build(config)}
  on_device = config.copy_and_resolve_references()
  on_device.data.on_device = True
  exps[True] = Experiment.build(on_device)
  exp = exps[False]
  ds = pipeline.train_dataset(exp.data.splits["train"], global_batch_size=args.batch, seed=0)
  batches = [mesh_lib.put_batch(ds[i], exp.mesh) for i in range(8)]
  holder = {"state": exp.init_state(), "i": 0, "sums": None}

  def train_only():  # dispatched back to back on batches already on device: the device's own rate
    holder["i"] += 1
    holder["state"], holder["sums"] = exp.train_step(holder["state"], batches[holder["i"] % len(batches)])

  params = lambda: holder["state"].params["cascade"]
  eval_only = lambda: jax.block_until_ready(exp.eval_step(params(), batches[0]))
  it = pipeline.train_iterator(ds)
  input_only = lambda: jax.block_until_ready(mesh_lib.put_batch(next(it), exp.mesh))
  sync = lambda: jax.block_until_ready((holder["state"].step, holder["sums"]))
  variants = [("train step", train_only, 1), ("eval step", eval_only, 1), ("input pipeline", input_only, 1)]
  for gather in (False, True):
    e = exps[gather]
    loop_it = pipeline.train_iterator(pipeline.train_dataset(e.data.splits["train"], global_batch_size=args.batch,
                                                             seed=0, indices=gather))
    for k in (1, 4, 16):
      def loop(k=k, e=e, loop_it=loop_it):
        holder["state"], holder["sums"] = trainer._advance(e, holder["state"], loop_it, holder["sums"], k)
      variants.append((f"train loop, K={k}" + (", on device" if gather else ""), loop, k))

  rates = {name: [] for name, _, _ in variants}  # every variant once per round: load drifts between rounds
  for _ in range(args.rounds):
    for name, fn, k in variants:
      holder["sums"] = None
      rates[name].append(args.batch * k / timed(fn, max(args.iters // k, 2), sync))
  stages = " -> ".join(f"{s.model}(k={s.k})" for s in exp.cascade.stages)
  print(f"config {args.config}: {stages}, N={config.data.list_size}, batch {args.batch}, "
        f"{jax.device_count()} x {jax.devices()[0].device_kind}, jax {jax.__version__}, {args.rounds} rounds "
        "(medians; ratios are medians of each round's ratio)")
  for name, values in rates.items():
    print(f"  {name:38s} {np.median(values):12,.0f} requests/s")
  for name in [n for n in rates if n.startswith(("eval", "train loop"))]:
    ratio = np.median(np.array(rates[name]) / np.array(rates["train step"]))
    print(f"  {name + ' / train step':38s} {ratio:12.2f} x")


if __name__ == "__main__":
  main()
