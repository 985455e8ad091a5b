"""Everything a run is built from its config: mesh, data, cascade, method, optimizer, state, steps.

The trainer, `cascadejax.evaluate` and `cascadejax.export` all start from `Experiment.build`, so a
checkpoint is always read back into exactly the structures that wrote it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from ml_collections import ConfigDict

from cascadejax import cascade as cascade_lib
from cascadejax import configuration, data as data_lib, metrics, mesh as mesh_lib, steps as steps_lib
from cascadejax.checkpoint import Checkpointer
from cascadejax.corpus import evaluation as corpus_eval, training as corpus_training
from cascadejax.corpus.sharded import pad_corpus
from cascadejax.data import item_corpus, pipeline
from cascadejax.data.schema import CascadeBatch, CascadeData
from cascadejax.embedding import update as update_lib
from cascadejax.embedding.collection import EmbeddingConfig
from cascadejax.methods import CascadeMethod
from cascadejax.steps import TrainState


@dataclasses.dataclass
class Experiment:
  """A built run. Use `Experiment.build(config)`.

  Attributes:
    sections: every config section, parsed and checked (`configuration.validate`).
    update: how the parameters are updated (`cascadejax.embedding.update`: dense optax, or the
      row-sparse path of row-sharded tables); the steps below call only its interface.
  """

  config: ConfigDict
  sections: configuration.Sections
  mesh: Mesh
  data: CascadeData
  cascade: cascade_lib.Cascade
  method: CascadeMethod
  update: update_lib.Update

  @classmethod
  def build(cls, config: ConfigDict, mesh: Mesh | None = None) -> "Experiment":
    """Validates `config` (raising before any compilation), then builds mesh, data and modules.

    Args:
      config: the run's config.
      mesh: the device mesh to run on; default `config.mesh` over every device
        (`cascadejax.mesh.make_mesh`). Its axes must be `config.mesh.axes`.
    """
    sections = configuration.validate(config)
    if mesh is None:
      mesh = mesh_lib.make_mesh(sections.mesh)
    elif tuple(mesh.axis_names) != tuple(config.mesh.axes):
      raise ValueError(f"Experiment.build: the mesh's axes {tuple(mesh.axis_names)} are not config.mesh.axes "
                       f"{tuple(config.mesh.axes)}")
    mesh_lib.check_batch_size(sections.train.batch_size, mesh, "config.train.batch_size")
    mesh_lib.check_batch_size(sections.train.eval_batch_size, mesh, "config.train.eval_batch_size")
    data = data_lib.load(config.data, num_stages=len(sections.cascade.stages), process_index=jax.process_index(),
                         process_count=jax.process_count())
    n = next(iter(data.splits.values())).list_size
    if n != sections.data.list_size:
      raise ValueError(f"config.data.list_size={sections.data.list_size} but the data has {n} candidate slots")
    if sections.rerank.method != "none":  # the default section names features only the simulator has
      sections.rerank.check_features(tuple(f.name for f in data.features if f.side == "items"))
    cascade = cascade_lib.Cascade(stages=sections.cascade.stages, features=data.features,
                                  embedding=EmbeddingConfig.from_config(sections.embedding, mesh))
    return cls(config=config, sections=sections, mesh=mesh, data=data, cascade=cascade, method=sections.method,
               update=update_lib.from_config(cascade, sections.optimizer, sections.train.steps))

  # ---- state ----
  @property
  def stage_names(self) -> tuple[str, ...]:
    """The cascade's stage names, in order."""
    return tuple(s.name for s in self.cascade.stages)

  def _sample(self) -> CascadeBatch:
    return self.data.splits["train"].take(slice(0, 1))

  def _init(self, rng: jax.Array) -> TrainState:
    sample = self._sample()
    c_rng, m_rng = jax.random.split(rng)
    params = {"cascade": self.cascade.init(c_rng, sample.user, sample.items)["params"],
              "method": self.method.init(m_rng)}
    opt_state = self.update.init(params)
    return TrainState(step=jnp.int32(0), params=params, opt_state=opt_state,
                      nonfinite_step=jnp.int32(-1))

  def _keys(self) -> tuple[jax.Array, jax.Array]:
    return tuple(jax.random.split(jax.random.key(self.sections.seed)))

  @functools.cached_property
  def state_sharding(self) -> Any:
    """A `TrainState`-shaped pytree of shardings (replicated, but for row-sharded tables and their state)."""
    return self.update.state_sharding(jax.eval_shape(self._init, self._keys()[0]), self.mesh)

  @functools.cached_property
  def _jitted_init(self):
    return jax.jit(self._init, out_shardings=self.state_sharding)

  def init_state(self) -> TrainState:
    """Fresh parameters and optimizer state, created directly with their shardings (compiled once
    per experiment)."""
    return self._jitted_init(self._keys()[0])

  def abstract_state(self) -> TrainState:
    """Shapes, dtypes and shardings of the state, for restoring checkpoints."""
    shapes = jax.eval_shape(self._init, self._keys()[0])
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, self.state_sharding)

  # ---- checkpoints ----
  def layout(self) -> dict[str, Any]:
    """How this run lays out its state, saved with every checkpoint (see `restore`)."""
    return {"devices": self.mesh.size, "processes": jax.process_count(), "embedding_shards": self.update.num_shards,
            "process_shares": self.data.process_share is not None}

  def restore(self, checkpointer: Checkpointer, data_iterator: Any = None, step: int | None = None) -> TrainState:
    """The state of a checkpoint (the newest intact one unless `step`), on this run's mesh and shardings.

    The checkpoint may come from another device or process count: arrays are read onto this mesh,
    and row-sharded tables saved with another shard count are converted to this one's layout
    (`Update.relayout`), so every logical row keeps its values and optimizer state.

    Raises:
      ValueError: naming the config keys, if this config differs from the one the checkpoint
        recorded in keys a resumed run may not change (`configuration.RESUMABLE_CHANGES`), or, for a
        checkpoint that recorded none, if its arrays do not fit this config's.
      FileNotFoundError: if there is no intact checkpoint.
    """
    step = checkpointer.intact_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no intact checkpoint in {checkpointer.directory} "
                              "(python -m cascadejax.evaluate --verify says why)")
    recorded = checkpointer.recorded_config(step)
    if recorded is not None:
      flat_recorded, flat_now = configuration.flatten(recorded), configuration.flatten(self.config)
      bad = [k for k in configuration.differing_keys(recorded, self.config) if k not in configuration.RESUMABLE_CHANGES]
      if bad:
        lines = "; ".join(f"config.{k}: {flat_recorded.get(k, '<missing>')!r} in the checkpoint, "
                          f"{flat_now.get(k, '<missing>')!r} now" for k in bad)
        raise ValueError(f"checkpoint step {step} in {checkpointer.directory} was saved with a different config "
                         f"({len(bad)} key(s)): {lines}. Use the run's own config (or a new --workdir)")
    saved = (checkpointer.layout(step) or {}).get("embedding_shards")
    relayout = self.update.needs_relayout(saved)
    abstract = self.update.saved_abstract(self.abstract_state(), saved) if relayout else self.abstract_state()
    try:
      state = checkpointer.restore(abstract, data_iterator, step)
    except ValueError as err:
      if "shape" not in str(err).lower() and "structure" not in str(err).lower():
        raise
      first = str(err).strip().splitlines()[0][:300]
      raise ValueError(f"checkpoint step {step} in {checkpointer.directory} does not fit this config's arrays "
                       f"({first}...): the workdir's config.json is not the one it was trained with (the "
                       "checkpoint predates recorded configs, so the differing keys are unknown)") from None
    if not relayout:
      return state
    return jax.jit(functools.partial(self.update.relayout, saved_shards=saved), out_shardings=self.state_sharding)(state)

  # ---- steps ----
  @functools.cached_property
  def _batch_sharding(self) -> Any:
    return jax.tree.map(lambda _: mesh_lib.batch_sharding(self.mesh), self._sample())

  @functools.cached_property
  def corpus(self) -> item_corpus.Corpus:
    """The data's item corpus (`cascadejax.data.corpus`), built once for training and evaluation."""
    return data_lib.corpus(self.config.data, self.data)

  @functools.cached_property
  def _corpus_arrays(self) -> tuple[str, dict[str, Any]] | None:
    """(key feature, corpus arrays) for the corpus-negatives term, None when it is off."""
    section = self.sections.corpus
    if section.negatives == "none":
      return None
    corpus = self.corpus
    return corpus.key, corpus_training.device_arrays(corpus, section.smoothing)

  @functools.cached_property
  def _step(self) -> steps_lib.StepFn:
    """The pure train step (`cascadejax.steps.make_step`): the one body that `train_step` (one step
    per call) and `train_steps` (K steps per call) both compile."""
    return steps_lib.make_step(self.cascade, self.method, self.update, self.sections, train_key=self._keys()[1],
                               corpus_key=(self._corpus_arrays or (None, None))[0])

  @functools.cached_property
  def train_step(self):
    """Jitted `(state, batch) -> (state, metrics)`; the state's buffers are donated."""
    corpus_arrays = (self._corpus_arrays or (None, None))[1]
    replicated = mesh_lib.replicated(self.mesh)
    jitted = self._in_mesh(jax.jit(self._step, in_shardings=(self.state_sharding, self._batch_sharding, replicated),
                                   out_shardings=(self.state_sharding, replicated), donate_argnums=0))
    return lambda state, batch: jitted(state, batch, corpus_arrays)

  def train_steps(self, k: int):
    """Jitted `(state, batches, sums) -> (state, sums)`: `k` train steps in one dispatch.

    `batches` holds `k` batches stacked on a new leading axis (`stack_batches`), or, with the
    training split on device (`device_split`), `[k, B]` row indices into it, gathered on device.
    `sums` are the running sums of the metrics (`zero_sums()` at the start of a log window), added
    step by step in the same order as `trainer.accumulate` adds one step's, so K steps per call give
    bit for bit the parameters and logged means of K calls of `train_step` (tests/test_steps_per_call).
    """
    if k not in self._multi_steps:
      self._multi_steps[k] = self._compile_steps(k)
    return self._multi_steps[k]

  @functools.cached_property
  def _multi_steps(self) -> dict[int, Any]:
    return {}

  def _compile_steps(self, k: int):
    corpus_arrays = (self._corpus_arrays or (None, None))[1]
    replicated = mesh_lib.replicated(self.mesh)
    gather = self.sections.data.on_device

    steps = steps_lib.scan_steps(self._step, k, gather=gather, batch_sharding=self._batch_sharding)
    stacked = (NamedSharding(self.mesh, PartitionSpec(None, "data")) if gather else
               jax.tree.map(lambda _: NamedSharding(self.mesh, PartitionSpec(None, "data")), self._sample()))
    jitted = self._in_mesh(jax.jit(steps, in_shardings=(self.state_sharding, stacked, replicated, replicated,
                                                        replicated),
                                   out_shardings=(self.state_sharding, replicated), donate_argnums=(0, 2)))
    split = self.device_split if gather else None
    return lambda state, batches, sums: jitted(state, batches, sums, split, corpus_arrays)

  @functools.cached_property
  def _metric_shapes(self) -> dict[str, jax.ShapeDtypeStruct]:
    return jax.eval_shape(self._step, self.abstract_state(), self._sample(),
                          (self._corpus_arrays or (None, None))[1])[1]

  def zero_sums(self) -> dict[str, jax.Array]:
    """Zeros shaped like one train step's metrics: the running sums `train_steps` starts a window from."""
    return jax.device_put(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), self._metric_shapes),
                          mesh_lib.replicated(self.mesh))

  def stack_batches(self, batches: list[CascadeBatch] | list[np.ndarray]) -> CascadeBatch | jax.Array:
    """This process's rows of `k` global batches (or, with `config.data.on_device`, their row
    indices), stacked and placed as `train_steps` reads them."""
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *batches)
    return mesh_lib.put_batch(stacked, self.mesh, axis=1)

  @functools.cached_property
  def device_split(self) -> CascadeBatch:
    """The whole training split on device (replicated), for `config.data.on_device`: a step then
    moves only its `[B]` row indices from the host."""
    return jax.device_put(self.data.splits["train"], mesh_lib.replicated(self.mesh))

  @functools.cached_property
  def eval_step(self):
    """Jitted `(cascade params, batch) -> {metric: (sum, count)}`."""

    def step(params, batch: CascadeBatch):
      scores = self.cascade.apply({"params": params}, batch.user, batch.items).scores
      return metrics.batch_metrics(scores, batch, ks=self.cascade.ks, gt_num=self.sections.cascade.gt_num,
                              stage_names=self.stage_names)

    return self._in_mesh(jax.jit(step, in_shardings=(self.state_sharding.params["cascade"], self._batch_sharding),
                                 out_shardings=mesh_lib.replicated(self.mesh)))

  def _in_mesh(self, fn):
    return self.update.in_mesh(fn, self.mesh)

  def evaluate(self, params: Any, split: str = "test") -> dict[str, float]:
    """Metrics of the cascade with `params` (the cascade's part) over a whole split."""
    return self.over_split(self.eval_step, params, split)

  def evaluate_corpus(self, params: Any, split: str = "test") -> dict[str, float]:
    """Full-corpus metrics of the cascade with `params` over a whole split (`cascadejax.corpus.evaluation`:
    stage 1 retrieves from every item of the data's corpus, the later stages rank what it retrieved)."""
    section = self.sections.corpus
    corpus = self.corpus
    table = corpus_eval.item_table(self.cascade, params, corpus, item_batch=section.item_batch, wrap=self._in_mesh)
    pools = (corpus_eval.item_table(self.cascade, params, corpus, item_batch=section.item_batch, wrap=self._in_mesh,
                                    method=cascade_lib.Cascade.item_pools)
             if corpus_eval.has_pools(self.cascade) else None)
    items = {f: jnp.asarray(v) for f, v in corpus.items.items()}
    index = jnp.asarray(corpus.index())
    replicated = mesh_lib.replicated(self.mesh)
    rows, valid = replicated, None
    sharded = self.mesh.size > 1  # the item table's rows split over every device, one merge of their top-k
    if sharded:
      rows = NamedSharding(self.mesh, PartitionSpec(tuple(self.mesh.axis_names)))
      table, valid = pad_corpus(table, None, self.mesh.size)
      pools = None if pools is None else jnp.pad(pools, (0, table.shape[0] - pools.shape[0]))
      table, valid, pools = jax.device_put((table, valid, pools), rows)
    fn = functools.partial(corpus_eval.corpus_metrics, self.cascade, key=corpus.key, section=section,
                           gt_num=self.sections.cascade.gt_num, stage_names=self.stage_names,
                           mesh=self.mesh if sharded else None)
    jitted = self._in_mesh(jax.jit(lambda p, b, t, i, x, w, g: fn(p, b, t, i, x, where=w, pools=g),
                                   out_shardings=replicated,
                                   in_shardings=(self.state_sharding.params["cascade"], self._batch_sharding,
                                                 rows, replicated, replicated, rows, rows)))
    return self.over_split(lambda p, batch: jitted(p, batch, table, items, index, valid, pools), params, split)

  def over_split(self, step: Any, params: Any, split: str = "test") -> dict[str, float]:
    """Means over a whole split of a jitted `step(params, batch) -> {metric: (sum, count)}`: the
    one evaluation loop (padded eval batches, each process feeding its share of every batch)."""
    if split not in self.data.splits:
      raise ValueError(f"unknown split {split!r}; the data has {sorted(self.data.splits)}")
    sums = metrics.MetricSums()
    size, procs, me = self.sections.train.eval_batch_size, jax.process_count(), jax.process_index()
    if self.data.process_share is None:
      for batch in pipeline.eval_batches(self.data.splits[split], size):
        local = batch.take(slice(me * size // procs, (me + 1) * size // procs))
        sums.add(step(params, mesh_lib.put_batch(local, self.mesh)))
      return sums.means()
    # Each process holds its own share: every process feeds its share in blocks of size / procs, for
    # as many batches as the largest share needs (the others feed empty, masked-out requests).
    own = self.data.splits[split]
    counts = multihost_utils.process_allgather(np.array([own.batch_size]))
    batches = -(-int(np.max(counts)) // (size // procs))
    local_batches = pipeline.eval_batches(own, size // procs)
    empty = jax.tree.map(lambda a: np.zeros((size // procs,) + a.shape[1:], a.dtype), own.take(slice(0, 0)))
    for _ in range(batches):
      sums.add(step(params, mesh_lib.put_batch(next(local_batches, empty), self.mesh)))
    return sums.means()
