"""The whole LCRON two-stage train step in LCRON's RecFlow setup, requests/s, with its variants side by side.

  python benchmarks/recflow_step.py [--batch 1024] [--candidates 40] [--history 50] [--dim 8]
                                    [--width 128] [--repeats 5] [--calls 4] [--variants a,b,...]
                                    [--breakdown]

The setup of LCRON's two-stage RecFlow experiments: DSSM retrieval + DIN pre-rank, N = 40 candidates,
behaviour histories of 50 steps, embedding dim 8, MLP width 128 (DSSM towers (128,), DIN output MLP
(128, 64)), batch 1024, Adam. Every variant is built through the library's own path: a config derived
from `configs/dssm_din.py` with the method and the options of `configs/lcron.py`
(`lcron_options()`), the data shapes above (every request has exactly N valid candidates and a full
history), then `Experiment.build(config)`, `init_state()` and the jitted, state-donating
`train_step` (forward of both stages, the method's loss, backward, global-norm clipping, Adam, the
finiteness guard), fed batches of the built-in simulator already on device.

Variants (`--variants`): `lcron` (the published options: NeuralSort soft top-k at temperature 50;
DIN's split first layer in blocks of 16 requests, as `configs/dssm_din.py` sets it), `lcron-chunk4`
(blocks of 4), `lcron-unblocked` (`chunk=0`), `lcron-naive` (DIN `fast=False`: its first layer over
the explicit `[B, N, L, 4D]` concatenation), `lcron-threshold` (the linear-memory soft top-k),
`independent` and `independent-naive` (per-stage BCE instead of the LCRON loss).

Timing: the first call (compilation) and one warm-up call are excluded; then `repeats` rounds of
`calls` back-to-back steps, each round blocking once on its last result (no host round-trip between
steps, as in the training loop). The figure is batch / mean seconds per step over all timed steps;
the range is over rounds; "CPU cores used" is the process's CPU time per wall second over the timed
rounds (up to the machine's cores when it has them to itself). The load average is printed with the
figures: on a shared machine, compare rows of one run, not runs.

`--breakdown` times the parts of the first variant's step alone (each jitted on its own): each
stage model's forward + backward (its embeddings and model, a sum of its scores as the loss), the
method's loss forward + backward given the scores, and the optimizer update.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # as train.py: glibc's malloc asks for huge pages (CASCADEJAX_HUGE_PAGES=0: without)
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from cascadejax import huge_pages
  huge_pages.reexec()

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.models import add_shape_args  # noqa: E402
from cascadejax import mesh as mesh_lib  # noqa: E402
from cascadejax.data import pipeline  # noqa: E402
from cascadejax.experiment import Experiment  # noqa: E402
from configs import dssm_din, lcron  # noqa: E402

# name -> (method, DIN options, LCRON options over `lcron_options()`). The first is the headline.
VARIANTS = {
    "lcron": ("lcron", dict(fast=True, chunk=16), {}),
    "lcron-chunk4": ("lcron", dict(fast=True, chunk=4), {}),
    "lcron-unblocked": ("lcron", dict(fast=True, chunk=0), {}),
    "lcron-naive": ("lcron", dict(fast=False, chunk=0), {}),
    "lcron-threshold": ("lcron", dict(fast=True, chunk=16), dict(topk_method="threshold")),
    "independent": ("independent", dict(fast=True, chunk=16), {}),
    "independent-naive": ("independent", dict(fast=False, chunk=0), {}),
}


def recflow_config(method: str, din: dict, lcron_overrides: dict | None = None, *, batch: int,
                   candidates: int, history: int, dim: int, width: int):
  """`configs/dssm_din.py` at the RecFlow shapes, trained with `method` (`lcron` with `lcron_options()`).

  Args:
    method: "lcron" or "independent".
    din: DIN model options to override (`fast`, `chunk`).
    lcron_overrides: `config.method.lcron` options to change (e.g. `topk_method`).
    batch, candidates, history, dim, width: batch size, N, history length, embedding dim, MLP width.
  """
  c = dssm_din.get_config()
  c.method.name = method
  c.method.lcron = lcron.lcron_options()
  c.method.lcron.update(lcron_overrides or {})
  c.embedding.dim = dim
  c.data.list_size = c.data.min_candidates = candidates
  c.data.history_len = c.data.min_history = history
  c.data.num_train, c.data.num_test = 4 * batch, batch
  c.data.production.ks = (candidates // 2, candidates // 4)
  c.train.batch_size = c.train.eval_batch_size = batch
  c.cascade.retrieval.k, c.cascade.prerank.k = candidates // 2, candidates // 4
  c.cascade.gt_num = min(c.cascade.gt_num, candidates // 4)
  c.cascade.retrieval.model_kwargs.hidden = (width,)
  c.cascade.prerank.model_kwargs.hidden = (width, width // 2)
  for key, value in din.items():
    c.cascade.prerank.model_kwargs[key] = value
  return c


def build(config):
  """`(experiment, state, batches)`: the built run, a fresh state and 4 train batches on device."""
  exp = Experiment.build(config)
  ds = pipeline.train_dataset(exp.data.splits["train"], global_batch_size=config.train.batch_size, seed=0)
  batches = [mesh_lib.put_batch(ds[i], exp.mesh) for i in range(4)]
  for name, x in {**batches[0].user, **batches[0].items}.items():
    assert x.shape[0] == config.train.batch_size, (name, x.shape)
  return exp, exp.init_state(), batches


def time_steps(exp, state, batches, repeats: int, calls: int) -> dict[str, float]:
  """Seconds per step: `mean`, `fastest` and `slowest` round, `compile` (the first call), and `cores`
  (process CPU seconds per wall second over the timed rounds: how much of the machine the step got)."""
  start = time.perf_counter()
  state, m = exp.train_step(state, batches[0])
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - start
  state, m = exp.train_step(state, batches[1])  # warm-up
  jax.block_until_ready(m)
  rounds, i, cpu = [], 0, time.process_time()
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(calls):
      i += 1
      state, m = exp.train_step(state, batches[i % len(batches)])
    jax.block_until_ready(m)
    rounds.append((time.perf_counter() - start) / calls)
  cores = (time.process_time() - cpu) / (sum(rounds) * calls)
  if not bool(jnp.isfinite(m["loss"])):
    raise RuntimeError(f"non-finite loss {m['loss']}")
  return dict(mean=sum(rounds) / len(rounds), fastest=min(rounds), slowest=max(rounds), compile=compile_s, cores=cores)


def _timed(fn, *args, calls: int = 5) -> float:
  """Mean seconds per call of jitted `fn` after compilation and one warm-up call."""
  fn = jax.jit(fn)
  jax.block_until_ready(fn(*args))
  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  for _ in range(calls):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / calls


def breakdown(exp, state, batch, calls: int) -> dict[str, float]:
  """Seconds of each part of the step, each jitted alone (see the module docstring)."""
  params, cascade, rng = state.params, exp.cascade, jax.random.key(0)
  out = {}
  for s, stage in enumerate(cascade.stages):
    def stage_sum(p, b, s=s):
      return cascade.apply({"params": p}, b.user, b.items, s, train=True, method=cascade.score_stage).sum()
    out[f"{stage.name} ({stage.model}) fwd+bwd"] = _timed(jax.grad(stage_sum), params["cascade"], batch, calls=calls)
  scores = jax.jit(cascade.apply)({"params": params["cascade"]}, batch.user, batch.items).scores
  loss = lambda p, sc, b: exp.method.loss(p, sc, b, rng=rng)[0]
  out[f"method loss ({exp.method.name}) fwd+bwd"] = _timed(jax.grad(loss, argnums=(0, 1)), params["method"],
                                                          scores, batch, calls=calls)
  out["optimizer update"] = _timed(lambda g, o, p: exp.update.apply(g, o, p), params, state.opt_state, params, calls=calls)
  return out


def main() -> None:
  """Prints the machine, the load and a Markdown table of every variant's step throughput."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_shape_args(parser)
  parser.add_argument("--width", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--calls", type=int, default=4)
  parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {list(VARIANTS)}")
  parser.add_argument("--breakdown", action="store_true", help="also time each part of the first variant")
  args = parser.parse_args()
  names = [v.strip() for v in args.variants.split(",") if v.strip()]
  unknown = [v for v in names if v not in VARIANTS]
  if unknown:
    parser.error(f"unknown variants {unknown}; available: {list(VARIANTS)}")
  shapes = dict(batch=args.batch, candidates=args.candidates, history=args.history, dim=args.dim, width=args.width)

  print(f"LCRON two-stage step, RecFlow setup: dssm -> din, batch {args.batch}, N={args.candidates}, "
        f"history {args.history}, emb dim {args.dim}, MLP width {args.width}, adam; "
        f"{jax.device_count()} x {jax.devices()[0].device_kind}, jax {jax.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
  print("load average at start: %.2f %.2f %.2f" % os.getloadavg(), flush=True)
  print("| variant | method | DIN | ms per step (range over rounds) | requests/s | vs first row | "
        "CPU cores used | compile s |")
  print("|---|---|---|---|---|---|---|---|")
  first = None
  for name in names:
    method, din, options = VARIANTS[name]
    exp, state, batches = build(recflow_config(method, din, options, **shapes))
    t = time_steps(exp, state, batches, args.repeats, args.calls)
    rate = args.batch / t["mean"]
    first = first or rate
    form = ("fast" if din["fast"] else "naive concat") + (f", chunk={din['chunk']}" if din["chunk"] else "")
    method += "".join(f", {k}={v}" for k, v in options.items())
    print(f"| {name} | {method} | {form} | {t['mean'] * 1e3:,.1f} ({t['fastest'] * 1e3:,.1f}-{t['slowest'] * 1e3:,.1f}) | "
          f"{rate:,.0f} | {rate / first:.2f}x | {t['cores']:.2f} | "
          f"{t['compile']:.1f} |", flush=True)
    if args.breakdown and name == names[0]:
      parts = breakdown(exp, exp.init_state(), batches[0], args.calls)
    del exp, state, batches
  print("load average at end: %.2f %.2f %.2f" % os.getloadavg())
  if args.breakdown:
    print(f"\nparts of the `{names[0]}` step, each jitted alone (ms):")
    for part, seconds in parts.items():
      print(f"  {part:40s} {seconds * 1e3:9.1f}")


if __name__ == "__main__":
  main()
