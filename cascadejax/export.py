"""Serving export: `python -m cascadejax.export --workdir W --out D [--step N] [--platforms cpu,cuda]`.

`--mesh_shape=1,1` reads a checkpoint written on more devices than this machine has (docs/sharding.md).

Writes, for every stage, its scoring function serialized with `jax.export` (batch size, list size
and history length symbolic) and its parameters, plus a manifest:

  D/manifest.json                 stage names and k's, gt_num, features, platforms, source step
  D/<stage>/scorer.jax            serialized `jax.export.Exported`: (params, user, items) -> [B, N]
  D/<stage>/params.msgpack        that stage's parameters (its embedding tables and its model)
  D/vocab/<table>.arrow, .json    for data read through vocabularies (the logs reader): raw id -> row,
                                  so serving maps raw ids as training did (`ExportedCascade.rows`)

`load(D)` rebuilds an `ExportedCascade` from these files alone (no config, checkpoint or model
code) that scores a `CascadeBatch` with every stage and runs the hard cascade selection.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Mapping, Sequence

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax import export as jax_export

from cascadejax.cascade import Cascade, stage_param_names
from cascadejax.ops.selection import select
from cascadejax.data.schema import CascadeBatch


def _feature_specs(features, b, n, length) -> tuple[dict, dict]:
  user = {f.name: jax.ShapeDtypeStruct((b, length) if f.sequence else (b,), jnp.int32)
          for f in features if f.side == "user"}
  items = {f.name: jax.ShapeDtypeStruct((b, n), jnp.int32) for f in features if f.side == "items"}
  return user, items


def export_cascade(cascade: Cascade, params: Mapping[str, Any], out: str, *, gt_num: int,
                   platforms: tuple[str, ...] = ("cpu",), step: int | None = None,
                   vocab_dir: str | None = None) -> dict[str, Any]:
  """Writes every stage of `cascade` (with the cascade parameters `params`) to directory `out`, and
  the vocabularies in `vocab_dir` (the data's `report["vocab_dir"]`, if it has one) to `out/vocab`.

  Returns:
    The manifest (also written to `out/manifest.json`).
  """
  os.makedirs(out, exist_ok=True)
  b, n, length = jax_export.symbolic_shape("b, n, l")
  user_spec, item_spec = _feature_specs(cascade.features, b, n, length)
  stages = []
  for s, stage in enumerate(cascade.stages):
    stage_params = jax.device_get({k: params[k] for k in stage_param_names(cascade, s)})

    def score(p, user, items, s=s):
      return cascade.apply({"params": p}, user, items, s, method=Cascade.score_stage)

    param_spec = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), stage_params)
    exported = jax_export.export(jax.jit(score), platforms=platforms)(param_spec, user_spec, item_spec)
    os.makedirs(os.path.join(out, stage.name), exist_ok=True)
    with open(os.path.join(out, stage.name, "scorer.jax"), "wb") as f:
      f.write(exported.serialize())
    with open(os.path.join(out, stage.name, "params.msgpack"), "wb") as f:
      f.write(flax.serialization.msgpack_serialize(stage_params))
    stages.append({"name": stage.name, "k": stage.k, "model": stage.model})
  manifest = {
      "stages": stages, "gt_num": gt_num, "platforms": list(platforms), "step": step,
      "features": [{"name": f.name, "side": f.side, "sequence": f.sequence, "vocab_size": f.vocab_size,
                    "table": f.table} for f in cascade.features],
      "vocab": _copy_vocab(vocab_dir, out, cascade.features),
      "jax_version": jax.__version__,
  }
  with open(os.path.join(out, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=2)
  return manifest


def _copy_vocab(vocab_dir: str | None, out: str, features) -> str | None:
  if not vocab_dir:
    return None
  if not os.path.isdir(vocab_dir):
    raise ValueError(f"export: the vocabularies {vocab_dir!r} the data was read with are gone; convert the "
                     "data again (with config.data.cache_dir set) before exporting")
  target = os.path.join(out, "vocab")
  shutil.rmtree(target, ignore_errors=True)
  shutil.copytree(vocab_dir, target)
  return "vocab"


class ExportedCascade:
  """A cascade loaded from export artifacts: every stage's scorer and parameters.

  Attributes:
    names: stage names in order.
    ks: their selection sizes.
    gt_num: the ground-truth size the cascade was trained for.
    manifest: the export's manifest.
  """

  def __init__(self, directory: str):
    with open(os.path.join(directory, "manifest.json")) as f:
      self.manifest = json.load(f)
    self.names = tuple(s["name"] for s in self.manifest["stages"])
    self.ks = tuple(s["k"] for s in self.manifest["stages"])
    self.gt_num = self.manifest["gt_num"]
    self._scorers, self._params = [], []
    for name in self.names:
      with open(os.path.join(directory, name, "scorer.jax"), "rb") as f:
        self._scorers.append(jax_export.deserialize(bytearray(f.read())))
      with open(os.path.join(directory, name, "params.msgpack"), "rb") as f:
        self._params.append(flax.serialization.msgpack_restore(f.read()))
    self._features = {side: [x["name"] for x in self.manifest["features"] if x["side"] == side]
                      for side in ("user", "items")}

    self._directory = directory

  def rows(self, feature: str, raw_ids) -> np.ndarray:
    """The table rows of raw ids (strings or ints) of `feature`, mapped by the exported vocabulary as
    training mapped them (unknown ids -> the out-of-vocabulary rows)."""
    from cascadejax.data.logs.vocab import Vocabulary  # noqa: PLC0415 (pyarrow, only for vocabularies)
    import pyarrow as pa  # noqa: PLC0415

    if not self.manifest.get("vocab"):
      raise ValueError("this export holds no vocabularies (its data had dense ids already)")
    table = {f["name"]: f.get("table", f["name"]) for f in self.manifest["features"]}.get(feature)
    if table is None:
      raise ValueError(f"unknown feature {feature!r}; the cascade reads {sorted(f['name'] for f in self.manifest['features'])}")
    vocab = Vocabulary.load(os.path.join(self._directory, self.manifest["vocab"]), table)
    raw = np.asarray(raw_ids)
    rows, _ = vocab.lookup(pa.array(raw.ravel().tolist()), f"feature {feature!r}")
    return rows.reshape(raw.shape)

  def score_stage(self, stage: int, batch: CascadeBatch) -> jax.Array:
    """`[B, N]` scores of stage `stage` (0-based) for every candidate slot."""
    user = {k: jnp.asarray(batch.user[k], jnp.int32) for k in self._features["user"]}
    items = {k: jnp.asarray(batch.items[k], jnp.int32) for k in self._features["items"]}
    return self._scorers[stage].call(self._params[stage], user, items)

  def score(self, batch: CascadeBatch) -> jax.Array:
    """`[S, B, N]` scores of every stage."""
    return jnp.stack([self.score_stage(s, batch) for s in range(len(self.names))])

  def select(self, batch: CascadeBatch) -> np.ndarray:
    """`[S, B, N]` bool: the candidates alive after each stage of the hard cascade."""
    return np.asarray(select(self.score(batch), self.ks, where=jnp.asarray(batch.mask)))


def load(directory: str) -> ExportedCascade:
  """Loads an export directory written by `export_cascade`."""
  return ExportedCascade(directory)


def define_flags() -> None:
  """Registers the command's flags; only `python -m cascadejax.export` does, so importing this module
  (for `load`, in a serving binary that may have its own `--workdir` or `--out`) registers none."""
  from cascadejax import workdir  # noqa: PLC0415 (the loader needs none of the training code)

  workdir.define_flags()
  flags.adopt_module_key_flags(workdir)
  flags.DEFINE_string("out", None, "Directory to write the artifacts to.")
  flags.DEFINE_list("platforms", ["cpu"], "Comma-separated platforms to export for: any of cpu, cuda, rocm, tpu.")
  flags.mark_flag_as_required("out")


def main(argv: Sequence[str]) -> None:
  """Exports `--workdir`'s checkpoint to `--out` and prints the manifest (see the module docstring)."""
  from cascadejax import workdir  # noqa: PLC0415 (the loader needs none of the training code)

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  FLAGS = flags.FLAGS
  exp, state = workdir.restore(FLAGS.workdir, FLAGS.step, FLAGS.mesh_shape)
  manifest = export_cascade(exp.cascade, state.params["cascade"], FLAGS.out, gt_num=exp.config.cascade.gt_num,
                            platforms=tuple(FLAGS.platforms), step=int(state.step),
                            vocab_dir=exp.data.report.get("vocab_dir"))
  print(json.dumps(manifest, indent=2))


if __name__ == "__main__":
  define_flags()
  app.run(main)
