"""How a run's parameters are updated: ONE interface, a dense and a row-sparse implementation.

`Experiment` holds one `Update` (`from_config`) and calls only its methods: `init` (optimizer state),
`state_sharding`, `value_and_grad`, `global_norm`, `apply`, `in_mesh` and, for checkpoints written
with another shard count, `needs_relayout` / `saved_abstract` / `relayout`.

`DenseUpdate` is plain optax: `jax.value_and_grad` of the loss and `tx.update`, every leaf replicated.

`RowSparseUpdate` (with `config.embedding.sharded`) does not differentiate the row-sharded tables at
all: each sharded lookup receives a zero "tap" `[B, T, D]` (through the `embedding_grads` variable
collection) whose cotangent carries the gradient of every id the batch looked up
(`cascadejax.embedding.sharded.lookup`). Those are routed to the owning shards and summed per row
(`RowGrads`), and `apply` updates exactly those rows with the row-wise rule of
`cascadejax.embedding.row_rules`, while every other parameter (stage models, method parameters,
tables below the replication threshold) goes through the dense optax optimizer. Gradient clipping
uses the global norm of both parts together, as `optax.clip_by_global_norm` would on the dense
gradient. With a bounded all-to-all (`capacity_factor > 0`) the step's metrics gain
`embedding/dropped_ids`.

Row-sparse optimizer state: `{"dense": optax state of the dense parameters, "rows": collection ->
table -> row-rule state laid out like the table, "count": updates applied}`; `count` drives the row
rules' learning-rate schedule and Adam's bias correction (global step count, see `row_rules`).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from ml_collections import ConfigDict

from cascadejax import mesh as mesh_lib
from cascadejax import optimizer
from cascadejax.data.schema import table_sizes
from cascadejax.embedding import row_rules, sharded
from cascadejax.embedding.collection import GRADS_COLLECTION
from cascadejax.embedding.layout import TableSharding
from cascadejax.embedding.row_rules import RowRule

LossFn = Callable[[Any, Any], tuple[jax.Array, Any]]  # (params, extra variables or None) -> (loss, aux)


class Update(abc.ABC):
  """The update path of a run's parameters (module docstring); `from_config` picks one."""

  num_shards: int | None = None  # row shards of the sharded tables (None: no table is row-sharded)

  @abc.abstractmethod
  def init(self, params: Any) -> Any:
    """Fresh optimizer state for `params`."""

  @abc.abstractmethod
  def state_sharding(self, abstract_state: Any, mesh: Mesh) -> Any:
    """Shardings for a `TrainState`-shaped tree of this path's parameters and optimizer state."""

  @abc.abstractmethod
  def value_and_grad(self, loss_fn: LossFn, params: Any, batch: Any) -> tuple[tuple[jax.Array, Any], Any]:
    """`((loss, aux), grads)` of `loss_fn` at `params` on `batch`, in this path's gradient form."""

  @abc.abstractmethod
  def global_norm(self, grads: Any) -> jax.Array:
    """The L2 norm of the whole gradient."""

  @abc.abstractmethod
  def apply(self, grads: Any, opt_state: Any, params: Any) -> tuple[Any, Any]:
    """One optimizer step: `(new params, new optimizer state)`."""

  def in_mesh(self, fn: Callable, mesh: Mesh) -> Callable:
    """`fn`, traced with whatever context its lookups need (none for the dense path)."""
    del mesh
    return fn

  def needs_relayout(self, saved_shards: int | None) -> bool:
    """Whether a checkpoint saved with `saved_shards` row shards must be converted on restore."""
    del saved_shards
    return False

  def saved_abstract(self, abstract_state: Any, saved_shards: int) -> Any:
    """The abstract state of a checkpoint saved with `saved_shards` shards (`needs_relayout`)."""
    raise NotImplementedError(f"{type(self).__name__} never relays out a checkpoint")

  def relayout(self, state: Any, saved_shards: int) -> Any:
    """A state read with `saved_abstract`, moved to this run's layout."""
    raise NotImplementedError(f"{type(self).__name__} never relays out a checkpoint")


class DenseUpdate(Update):
  """Plain optax over the whole parameter tree, every leaf replicated.

  Args:
    tx: the optax optimizer (clipping included).
  """

  def __init__(self, tx: optax.GradientTransformation):
    self.tx = tx

  def init(self, params: Any) -> Any:
    return self.tx.init(params)

  def state_sharding(self, abstract_state: Any, mesh: Mesh) -> Any:
    return jax.tree.map(lambda _: mesh_lib.replicated(mesh), abstract_state)

  def value_and_grad(self, loss_fn: LossFn, params: Any, batch: Any) -> tuple[tuple[jax.Array, Any], Any]:
    del batch
    return jax.value_and_grad(lambda p: loss_fn(p, None), has_aux=True)(params)

  def global_norm(self, grads: Any) -> jax.Array:
    return optax.tree.norm(grads)

  def apply(self, grads: Any, opt_state: Any, params: Any) -> tuple[Any, Any]:
    updates, opt_state = self.tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def from_config(cascade: Any, cfg: ConfigDict, total_steps: int) -> Update:
  """The update path of `cascade` (a `Cascade`) under `config.optimizer` `cfg` for `total_steps`:
  row-sparse when the cascade row-shards its tables, else dense."""
  if cascade.embedding.sharding is None:
    return DenseUpdate(optimizer.make_optimizer(cfg, total_steps))
  return RowSparseUpdate(cascade, row_rules.from_config(cfg), optimizer.make_optimizer(cfg, total_steps, clip=False),
                         optimizer.learning_rate(cfg, total_steps), cfg.grad_clip)


@flax.struct.dataclass
class SparseGrads:
  """Gradients of the sparse path.

  Attributes:
    dense: gradients of every parameter except the sharded tables (the params tree without them).
    rows: collection -> table -> `RowGrads` at the owning shards.
  """

  dense: Any
  rows: Any


class RowSparseUpdate(Update):
  """Splits a cascade's parameters into sharded tables and the rest, and trains each its own way.

  Args:
    cascade: the `Cascade` (its `embedding.sharding` must be set).
    rule: the row-wise rule of the sharded tables.
    dense_tx: the optax optimizer of all other parameters, without gradient clipping.
    schedule: the learning-rate schedule (a function of the update count).
    grad_clip: global-norm clipping threshold over both parts; 0 disables.
  """

  def __init__(self, cascade, rule: RowRule, dense_tx: optax.GradientTransformation,
               schedule: Callable[[jax.Array], jax.Array], grad_clip: float = 0.0):
    self.sharding = cascade.embedding.sharding
    self.num_shards = self.sharding.num_shards
    self.features = cascade.features
    self.dim = cascade.embedding.dim
    self.rule, self.dense_tx, self.schedule, self.grad_clip = rule, dense_tx, schedule, grad_clip
    sizes = table_sizes(self.features)
    collections = ["embedding"] if cascade.embedding.shared else [f"embedding_{s.name}" for s in cascade.stages]
    # (collection, table, vocab) of every sharded table.
    self.tables = tuple((c, t, sizes[t]) for c in collections for t in sorted(sizes) if self.sharding.shards(sizes[t]))

  # ---- parameter trees ----
  def split(self, params: Any) -> tuple[dict, Any]:
    """(collection -> table -> sharded table, the params tree without them)."""
    cascade, tables = dict(params["cascade"]), {}
    for c, t, _ in self.tables:
      cascade[c] = dict(cascade[c])
      tables.setdefault(c, {})[t] = cascade[c].pop(t)
    return tables, {**params, "cascade": cascade}

  def merge(self, dense: Any, tables: dict) -> Any:
    """Inverse of `split`."""
    cascade = {k: dict(v) if k in tables else v for k, v in dense["cascade"].items()}
    for c, by_name in tables.items():
      cascade[c].update(by_name)
    return {**dense, "cascade": cascade}

  def init(self, params: Any) -> dict[str, Any]:
    """Fresh optimizer state."""
    tables, dense = self.split(params)
    rows = jax.tree.map(self.rule.init, tables)
    return {"dense": self.dense_tx.init(dense), "rows": rows, "count": jnp.zeros([], jnp.int32)}

  def _vocab(self, path: tuple) -> int | None:
    """The vocabulary of the sharded table a `TrainState` leaf belongs to (the table itself or its
    row-rule state), or None for every other leaf."""
    names = tuple(getattr(k, "key", getattr(k, "name", None)) for k in path)
    if names[:2] not in (("params", "cascade"), ("opt_state", "rows")):
      return None
    return next((v for c, t, v in self.tables if names[2:4] == (c, t)), None)

  def state_sharding(self, abstract_state: Any, mesh: Mesh) -> Any:
    """Shardings for a `TrainState`-shaped tree: tables and their row states split over rows."""
    rows, rep = NamedSharding(mesh, P(self.sharding.axes)), NamedSharding(mesh, P())
    return jax.tree_util.tree_map_with_path(lambda path, _: rep if self._vocab(path) is None else rows,
                                            abstract_state)

  def in_mesh(self, fn: Callable, mesh: Mesh) -> Callable:
    """Sharded lookups find the mesh in context (`jax.set_mesh`) when the step is traced."""
    return mesh_lib.with_mesh(fn, mesh)

  # ---- checkpoints saved with another shard count ----
  def needs_relayout(self, saved_shards: int | None) -> bool:
    return saved_shards not in (None, self.num_shards)

  def _saved(self, saved_shards: int) -> TableSharding:
    return dataclasses.replace(self.sharding, num_shards=saved_shards)

  def saved_abstract(self, abstract_state: Any, saved_shards: int) -> Any:
    """`abstract_state` with every sharded table (and row state) in the `[K' R', D]` layout of
    `saved_shards` shards, to read such a checkpoint: split over rows where K' R' divides evenly,
    else whole."""
    k, saved = self.sharding.num_shards, self._saved(saved_shards)

    def leaf(path, x):
      vocab = self._vocab(path)
      if vocab is None:
        return x
      rows = saved.num_shards * saved.rows_per_shard(vocab)
      spec = P(self.sharding.axes) if rows % k == 0 else P()
      return jax.ShapeDtypeStruct((rows,) + x.shape[1:], x.dtype, sharding=NamedSharding(x.sharding.mesh, spec))

    return jax.tree_util.tree_map_with_path(leaf, abstract_state)

  def relayout(self, state: Any, saved_shards: int) -> Any:
    """Moves every sharded table and its row state from the layout of `saved_shards` shards to this
    one's (`to_logical` then `to_physical`: each logical row keeps its values); jit it with the
    state's shardings."""
    saved = self._saved(saved_shards)

    def leaf(path, x):
      vocab = self._vocab(path)
      return x if vocab is None else self.sharding.to_physical(saved.to_logical(x, vocab))

    return jax.tree_util.tree_map_with_path(leaf, state)

  # ---- gradients ----
  def _ids(self, batch: Any) -> dict[str, jax.Array]:
    return {t: sharded.table_ids([f for f in self.features if f.table == t], batch.user, batch.items)
            for _, t, _ in self.tables}

  def value_and_grad(self, loss_fn: LossFn, params: Any, batch: Any) -> tuple[tuple[jax.Array, Any], SparseGrads]:
    """Like `jax.value_and_grad(loss_fn, has_aux=True)(params)`, with sparse table gradients.

    Args:
      loss_fn: `(params, variables) -> (loss, aux)`, applying the cascade with the extra variable
        collections `variables` (the taps).
      params: the full parameter tree.
      batch: the `CascadeBatch` the loss reads (for the ids of each table).
    """
    tables, dense = self.split(params)
    ids = self._ids(batch)
    taps = {}
    for c, t, _ in self.tables:
      taps.setdefault(c, {})[t] = jnp.zeros(ids[t].shape + (self.dim,), tables[c][t].dtype)

    def f(dense, taps):
      return loss_fn(self.merge(dense, tables), {GRADS_COLLECTION: taps})

    (loss, aux), (g_dense, g_taps) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(dense, taps)
    rows = {}
    for c, t, vocab in self.tables:
      rows.setdefault(c, {})[t] = sharded.owner_row_grads(ids[t], g_taps[c][t], self.sharding, vocab)
    if self.sharding.capacity_factor > 0:  # ids that overflowed an all-to-all bucket this step
      aux = {**aux, "embedding/dropped_ids": sum(r.dropped for by_name in rows.values() for r in by_name.values())}
    return (loss, aux), SparseGrads(dense=g_dense, rows=rows)

  def global_norm(self, grads: SparseGrads) -> jax.Array:
    """The L2 norm of the whole gradient (dense part and deduplicated table rows)."""
    row_grads = [r.grads for by_name in grads.rows.values() for r in by_name.values()]
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(grads.dense) + row_grads))

  # ---- update ----
  def apply(self, grads: SparseGrads, opt_state: dict[str, Any], params: Any) -> tuple[Any, dict[str, Any]]:
    """One optimizer step: dense optax on the dense part, the row rule on the looked-up rows."""
    tables, dense = self.split(params)
    dense_grads, rows = grads.dense, grads.rows
    if self.grad_clip > 0:  # optax.clip_by_global_norm's formula, over both parts
      norm = self.global_norm(grads)
      clip = lambda x: jax.lax.select(norm < self.grad_clip, x, (x / norm.astype(x.dtype)) * self.grad_clip)
      dense_grads = jax.tree.map(clip, dense_grads)
      rows = jax.tree.map(lambda r: r.replace(grads=clip(r.grads)), rows,
                          is_leaf=lambda x: isinstance(x, sharded.RowGrads))
    updates, dense_state = self.dense_tx.update(dense_grads, opt_state["dense"], dense)
    dense = optax.apply_updates(dense, updates)
    count = opt_state["count"]
    step_size = -self.schedule(count)
    new_tables, new_rows = {}, {}
    for c, t, _ in self.tables:
      new_tables.setdefault(c, {})[t], new_rows.setdefault(c, {})[t] = sharded.update_rows(
          tables[c][t], opt_state["rows"][c][t], rows[c][t], self.rule, self.sharding,
          jnp.asarray(step_size, jnp.float32), count + 1)
    return self.merge(dense, new_tables), {"dense": dense_state, "rows": new_rows, "count": count + 1}
