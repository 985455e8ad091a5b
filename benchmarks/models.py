"""Forward + backward throughput of every stage model, side by side in one run.

  python benchmarks/models.py [--batch 1024] [--candidates 40] [--history 50] [--dim 8] [--iters 10]
                              [--models din,dssm,...]

Each model scores `batch` requests of `candidates` candidates whose users have a behaviour history of
up to `history` steps (lengths uniform in [1, history], padded), reading the simulator's features
(user id, group, context, history; item id, category, creator) through its own embedding tables of
width `dim`. One timed call is the jitted gradient of a pointwise BCE over all candidates with
respect to the embeddings and the model (no optimizer update), after compilation and one warm-up
call; the figure is requests per second over `iters` calls. `din (naive concat)` is DIN with its
first attention layer over the explicit `[B, N, L, 4D]` concatenation (`fast=False`), for comparison;
`din (chunk=16)` evaluates the attention in blocks of 16 requests, recomputed in the backward pass.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cascadejax.data.schema import FeatureSpec  # noqa: E402
from cascadejax.embedding.collection import EmbeddingCollection  # noqa: E402
from cascadejax.losses.ranking import sigmoid_bce_loss  # noqa: E402
from cascadejax.models import get_model  # noqa: E402

# Widths in the spirit of LCRON's RecFlow setup (MLP width 128); every model at comparable size.
MODELS = {
    "two_tower": ("two_tower", dict(hidden=(128,), out_dim=16)),
    "dssm (mean pooling)": ("dssm", dict(hidden=(128,), out_dim=16)),
    "dssm (attention pooling)": ("dssm", dict(hidden=(128,), out_dim=16, pooling="attention")),
    "sasrec (2 blocks)": ("sasrec", dict(hidden=(128,), out_dim=16, num_blocks=2)),
    "mlp": ("mlp", dict(hidden=(128, 64))),
    "din": ("din", dict(attention=(36,), hidden=(128, 64))),
    "din (naive concat)": ("din", dict(attention=(36,), hidden=(128, 64), fast=False)),
    "din (chunk=16)": ("din", dict(attention=(36,), hidden=(128, 64), chunk=16)),
    "deepfm": ("deepfm", dict(hidden=(128, 64))),
    "wide_deep": ("wide_deep", dict(deep=(128, 64))),
    "dcn_v1": ("dcn_v1", dict(num_cross=2, deep=(128, 64))),
    "dcn (v2)": ("dcn", dict(num_cross=2, deep=(128, 64))),
    "mmoe (4 experts, 3 tasks)": ("mmoe", dict(num_experts=4, expert=(128,), tower=(64,))),
}


def features(items: int = 100_000, users: int = 50_000) -> tuple[FeatureSpec, ...]:
  """The simulator's feature layout at a larger vocabulary."""
  return (FeatureSpec("user_id", "user", "user_id", users), FeatureSpec("user_group", "user", "user_group", 65),
          FeatureSpec("context", "user", "context", 9),
          FeatureSpec("history", "user", "item_id", items, sequence=True),
          FeatureSpec("item_id", "items", "item_id", items), FeatureSpec("category", "items", "category", 65),
          FeatureSpec("creator", "items", "creator", 401))


def inputs(rng: np.random.Generator, b: int, n: int, length: int, specs) -> tuple[dict, dict, jax.Array]:
  """Random ids of every feature, padded histories, and random 0/1 labels."""
  sizes = {f.name: f.vocab_size for f in specs}
  user = {k: jnp.asarray(rng.integers(1, sizes[k], b), jnp.int32) for k in ("user_id", "user_group", "context")}
  hist = rng.integers(1, sizes["history"], (b, length))
  lengths = rng.integers(1, length + 1, b)
  user["history"] = jnp.asarray(np.where(np.arange(length) < lengths[:, None], hist, 0), jnp.int32)
  items = {k: jnp.asarray(rng.integers(1, sizes[k], (b, n)), jnp.int32) for k in ("item_id", "category", "creator")}
  return user, items, jnp.asarray(rng.random((b, n)) < 0.3)


def measure(name: str, kwargs: dict, specs, dim: int, user, items, labels, iters: int) -> tuple[float, int]:
  """`(seconds per forward+backward, parameter count)` of one model."""
  embed = EmbeddingCollection(specs, dim)
  model = get_model(name, kwargs)
  k1, k2 = jax.random.split(jax.random.key(0))
  params = {"embedding": embed.init(k1, user, items), "model": None}
  params["model"] = model.init(k2, embed.apply(params["embedding"], user, items))

  def loss(p):
    return sigmoid_bce_loss(model.apply(p["model"], embed.apply(p["embedding"], user, items)), labels)

  grad = jax.jit(jax.value_and_grad(loss))
  jax.block_until_ready(grad(params))  # compile
  jax.block_until_ready(grad(params))  # warm up
  start = time.perf_counter()
  for _ in range(iters):
    jax.block_until_ready(grad(params))
  count = sum(x.size for x in jax.tree.leaves(params["model"]))
  return (time.perf_counter() - start) / iters, count


def add_shape_args(parser: argparse.ArgumentParser) -> None:
  """`--batch`, `--candidates`, `--history`, `--dim`, defaulting to LCRON's RecFlow shapes."""
  parser.add_argument("--batch", type=int, default=1024)
  parser.add_argument("--candidates", type=int, default=40)
  parser.add_argument("--history", type=int, default=50)
  parser.add_argument("--dim", type=int, default=8)


def main() -> None:
  """Prints a Markdown table: model, hyperparameters, parameters, ms per step, requests/s."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_shape_args(parser)
  parser.add_argument("--iters", type=int, default=10)
  parser.add_argument("--models", default="", help="comma-separated row names (default: all)")
  args = parser.parse_args()
  rows = [m.strip() for m in args.models.split(",") if m.strip()] or list(MODELS)
  specs = features()
  user, items, labels = inputs(np.random.default_rng(0), args.batch, args.candidates, args.history, specs)
  print(f"batch {args.batch}, N={args.candidates}, history {args.history}, emb dim {args.dim}, "
        f"{jax.device_count()} x {jax.devices()[0].device_kind}, jax {jax.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
  print("| model | hyperparameters | model params | ms per fwd+bwd | requests/s |")
  print("|---|---|---|---|---|")
  for row in rows:
    name, kwargs = MODELS[row]
    seconds, count = measure(name, kwargs, specs, args.dim, user, items, labels, args.iters)
    hyper = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    print(f"| {row} | {hyper} | {count:,} | {seconds * 1e3:,.1f} | {args.batch / seconds:,.0f} |", flush=True)


if __name__ == "__main__":
  main()
