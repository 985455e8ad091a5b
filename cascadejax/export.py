"""Serving export: `python -m cascadejax.export --workdir W --out D [--step N] [--platforms cpu,cuda]`.

`--mesh_shape=1,1` reads a checkpoint written on more devices than this machine has (docs/sharding.md).

Writes, for every stage, its scoring function serialized with `jax.export` (batch size, list size
and history length symbolic) and its parameters, plus a manifest:

  D/manifest.json                 stage names and k's, gt_num, features, platforms, source step
  D/<stage>/scorer.jax            serialized `jax.export.Exported`: (params, user, items) -> [B, N]
  D/<stage>/params.msgpack        that stage's parameters (its embedding tables and its model)
  D/vocab/<table>.arrow, .json    for data read through vocabularies (the logs reader): raw id -> row,
                                  so serving maps raw ids as training did (`ExportedCascade.rows`)

and, with an item corpus and a first stage that scores by an inner product (`two_tower`, `dssm`),
the retrieval index:

  D/index/vectors.npy             [M, d] float32: the first stage's vector of every corpus item
  D/index/items.npz               [M] int32 rows of every item feature of the corpus items (the key
                                  feature identifies them; the vocabularies map rows to raw ids)
  D/<stage 1>/query.jax           serialized (params, user) -> [B, d] query vectors; score = <q, v>
  D/index/pools.npy               [M] int32 item pools, for `moe_nominators` (queries [B, E, d], one
                                  per pool, the pools' top k merged round-robin)

`vectors.npy` is a plain float32 matrix, so it loads into FAISS as an inner-product index:
`index = faiss.IndexFlatIP(d); index.add(np.load("D/index/vectors.npy"))`, then
`index.search(queries, k)` with the `query.jax` vectors (`ExportedCascade.query_vectors`); its
row numbers are positions in `items.npz`.

`load(D)` rebuilds an `ExportedCascade` from these files alone (no config, checkpoint or model
code) that scores a `CascadeBatch` with every stage and runs the hard cascade selection, and, with an
index, retrieves from the corpus (`retrieve`) and runs the whole cascade from it (`cascade`).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from typing import Any, Mapping, Sequence

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from jax import export as jax_export

from cascadejax.cascade import RETRIEVAL_MODELS, Cascade, stage_param_names
from cascadejax.corpus.pooled import pooled_top_k
from cascadejax.corpus.topk import exact_top_k
from cascadejax.ops.selection import select
from cascadejax.data.schema import CascadeBatch


def _feature_specs(features, b, n, length) -> tuple[dict, dict]:
  user = {f.name: jax.ShapeDtypeStruct((b, length) if f.sequence else (b,), jnp.int32)
          for f in features if f.side == "user"}
  items = {f.name: jax.ShapeDtypeStruct((b, n), jnp.int32) for f in features if f.side == "items"}
  return user, items


def export_cascade(cascade: Cascade, params: Mapping[str, Any], out: str, *, gt_num: int,
                   platforms: tuple[str, ...] = ("cpu",), step: int | None = None,
                   vocab_dir: str | None = None, corpus: Any = None) -> dict[str, Any]:
  """Writes every stage of `cascade` (with the cascade parameters `params`) to directory `out`, the
  vocabularies in `vocab_dir` (the data's `report["vocab_dir"]`, if it has one) to `out/vocab`, and
  with `corpus` (a `cascadejax.data.item_corpus.Corpus`) the retrieval index of its items.

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
  index = None
  if corpus is not None:
    index = _write_index(cascade, params, corpus, out, platforms, user_spec)
  manifest = {
      "stages": stages, "gt_num": gt_num, "platforms": list(platforms), "step": step, "index": index,
      "features": [{"name": f.name, "side": f.side, "sequence": f.sequence, "vocab_size": f.vocab_size,
                    "table": f.table} for f in cascade.features],
      "vocab": _copy_vocab(vocab_dir, out, cascade.features),
      "jax_version": jax.__version__,
  }
  with open(os.path.join(out, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=2)
  return manifest


def _write_index(cascade: Cascade, params, corpus, out: str, platforms, user_spec) -> dict[str, Any]:
  """The first stage's item vectors of every corpus item, the items' rows and the query tower."""
  from cascadejax.corpus.evaluation import has_pools, item_table  # noqa: PLC0415 (only the exporter runs the towers)

  first = cascade.stages[0]
  if first.model not in RETRIEVAL_MODELS:
    raise ValueError(f"export: the index needs a first stage that scores by an inner product ({RETRIEVAL_MODELS}); "
                     f"config.cascade.{first.name}.model is {first.model!r}")
  os.makedirs(os.path.join(out, "index"), exist_ok=True)
  vectors = np.asarray(item_table(cascade, params, corpus), np.float32)
  np.save(os.path.join(out, "index", "vectors.npy"), vectors)
  np.savez(os.path.join(out, "index", "items.npz"), **{f: np.asarray(v, np.int32) for f, v in corpus.items.items()})
  pools = None
  if has_pools(cascade):  # one query per item pool, merged round-robin (cascadejax.corpus.pooled)
    pools = "index/pools.npy"
    np.save(os.path.join(out, pools), np.asarray(item_table(cascade, params, corpus, method=Cascade.item_pools)))
  stage_params = jax.device_get({k: params[k] for k in stage_param_names(cascade, 0)})

  def query(p, user):
    return cascade.apply({"params": p}, user, method=Cascade.query_vectors)

  param_spec = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), stage_params)
  exported = jax_export.export(jax.jit(query), platforms=platforms)(param_spec, user_spec)
  with open(os.path.join(out, first.name, "query.jax"), "wb") as f:
    f.write(exported.serialize())
  return {"vectors": "index/vectors.npy", "items": "index/items.npz", "key": corpus.key, "size": len(corpus),
          "dim": int(vectors.shape[1]), "metric": "inner_product", "query": f"{first.name}/query.jax", "pools": pools}


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
    self._sizes = {x["name"]: x["vocab_size"] for x in self.manifest["features"]}
    self._directory = directory

  def _ids(self, given: Mapping[str, Any], side: str) -> dict[str, jax.Array]:
    """The `side` ("user" or "items") features of `given` as int32 rows, each checked against its
    table (`[0, vocab_size)`): a scorer would read an out-of-range row as NaN and a negative one as
    some other row, so either raises a ValueError naming the feature, the ids and the range."""
    out = {}
    for name in self._features[side]:
      if name not in given:
        raise ValueError(f"missing {side} feature {name!r} (the cascade reads {self._features[side]}, got "
                         f"{sorted(given)})")
      ids, size = np.asarray(given[name]), self._sizes[name]
      if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{side} feature {name!r} must hold integer table rows, got {ids.dtype}")
      bad = (ids < 0) | (ids >= size)
      if bad.any():
        how = (f"map raw ids to rows with rows({name!r}, raw_ids) first (unknown ids -> the out-of-vocabulary "
               "rows, as in training)" if self.manifest.get("vocab") else "ids are rows of the training data's table")
        raise ValueError(f"{side} feature {name!r}: ids {np.unique(ids[bad])[:5].tolist()} ({int(bad.sum())} of "
                         f"{ids.size}) are outside its table's rows [0, {size}); {how}")
      out[name] = jnp.asarray(ids, jnp.int32)
    return out

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

  def _index(self) -> dict[str, Any]:
    info = self.manifest.get("index")
    if not info:
      raise ValueError(f"{self._directory} holds no retrieval index (export it with an item corpus and a "
                       "first stage that scores by an inner product)")
    if not hasattr(self, "_vectors"):
      self._vectors = jnp.asarray(np.load(os.path.join(self._directory, info["vectors"])))
      with np.load(os.path.join(self._directory, info["items"])) as z:
        self.corpus_items = {k: z[k] for k in z.files}
      with open(os.path.join(self._directory, info["query"]), "rb") as f:
        self._query = jax_export.deserialize(bytearray(f.read()))
      self._pools = jnp.asarray(np.load(os.path.join(self._directory, info["pools"]))) if info.get("pools") else None
    return info

  def query_vectors(self, user: Mapping[str, Any]) -> jax.Array:
    """`[B, d]` query vectors of the first stage for the requests `user` (feature -> `[B]` or `[B, L]`);
    `[B, E, d]`, one per item pool (`index/pools.npy`), for `moe_nominators`."""
    self._index()
    return self._query.call(self._params[0], self._ids(user, "user"))

  def retrieve(self, user: Mapping[str, Any], k: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Each request's top k corpus items by the first stage (exact inner-product search of the index).

    Returns:
      (scores `[B, k]`, corpus positions `[B, k]` (-1 where the corpus has fewer than k items), and
      item feature -> `[B, k]` rows of the retrieved items, 0 at empty positions).
    """
    self._index()
    search = functools.partial(exact_top_k, chunk_size=min(32768, self._vectors.shape[0]))
    q = self.query_vectors(user)
    scores, idx = (search(q, self._vectors, k) if self._pools is None else
                   pooled_top_k(q, self._vectors, self._pools, k, top_k=search))
    idx = np.asarray(idx)
    items = {f: np.where(idx >= 0, v[np.maximum(idx, 0)], 0) for f, v in self.corpus_items.items()}
    return np.asarray(scores), idx, items

  def cascade(self, user: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The cascade as it serves: stage 1 retrieves its k_1 from the index, every later stage keeps its
    top k_s of the survivors.

    Returns:
      `positions` `[B, k_1]` (corpus positions retrieved, -1 = empty), `items` (their feature rows),
      `scores` `[S, B, k_1]` and `alive` `[S, B, k_1]` bool (the survivors after each stage).
    """
    _, idx, items = self.retrieve(user, self.ks[0])
    batch = CascadeBatch(user=dict(user), items=items, stage=np.zeros(idx.shape, np.int32),
                         label=np.zeros(idx.shape, np.float32), mask=idx >= 0)
    scores = self.score(batch)
    return {"positions": idx, "items": items, "scores": np.asarray(scores),
            "alive": np.asarray(select(scores, self.ks, where=jnp.asarray(idx >= 0)))}

  def score_stage(self, stage: int, batch: CascadeBatch) -> jax.Array:
    """`[B, N]` scores of stage `stage` (0-based) for every candidate slot (ids checked by `_ids`)."""
    return self._scorers[stage].call(self._params[stage], self._ids(batch.user, "user"),
                                     self._ids(batch.items, "items"))

  def score(self, batch: CascadeBatch) -> jax.Array:
    """`[S, B, N]` scores of every stage."""
    user, items = self._ids(batch.user, "user"), self._ids(batch.items, "items")
    return jnp.stack([self._scorers[s].call(self._params[s], user, items) for s in range(len(self.names))])

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
  flags.DEFINE_bool("index", True, "Also write the retrieval index of the data's item corpus (when the first "
                    "stage scores by an inner product).")
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
                            vocab_dir=exp.data.report.get("vocab_dir"), corpus=_corpus(exp) if FLAGS.index else None)
  print(json.dumps(manifest, indent=2))


def _corpus(exp):
  """The run's item corpus, or None (with a note) when its first stage cannot retrieve from one."""
  from cascadejax import data as data_lib  # noqa: PLC0415 (the loader needs none of the training code)

  if exp.cascade.stages[0].model not in RETRIEVAL_MODELS:
    logging.warning(f"no retrieval index: the first stage's model {exp.cascade.stages[0].model!r} is not one of {RETRIEVAL_MODELS}")
    return None
  return data_lib.corpus(exp.config.data, exp.data)


if __name__ == "__main__":
  define_flags()
  app.run(main)
