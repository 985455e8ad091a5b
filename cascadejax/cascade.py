"""`Cascade`: ordered stages, each a stage model and the number of candidates it keeps.

Training scores every candidate with every stage in one call (`CascadeOutput.scores`, `[S, B, N]`),
so a training method sees all stages at once and the whole cascade compiles into one program; the
same call returns the stages' auxiliary outputs (`CascadeOutput.aux`, e.g. a multi-task ranker's
task logits, trained through `config.multitask`). Serving and evaluation use
`cascadejax.ops.selection.select`: stage 1 keeps its top k_1 of the valid candidates, stage 2 its
top k_2 of those, and so on.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from cascadejax import models
from cascadejax.sections import plain
from cascadejax.data.schema import FeatureSpec
from cascadejax.embedding.collection import EmbeddingCollection, EmbeddingConfig


RETRIEVAL_MODELS = ("two_tower", "dssm", "moe_nominators")  # stage models that retrieve from a corpus (`Cascade.query_vectors`)


@dataclasses.dataclass(frozen=True)
class StageSpec:
  """One stage: a name, a model (by registry name) with its hyperparameters, and its k."""

  name: str
  model: str
  k: int
  model_kwargs: tuple[tuple[str, object], ...] = ()  # a hashable dict, as module fields must be


@flax.struct.dataclass
class CascadeOutput:
  """What one call of a `Cascade` returns.

  Attributes:
    scores: `[S, B, N]` scores of every stage for every candidate slot (padding slots included).
    aux: stage name -> output name -> `[B, N]`, for the stages whose model has auxiliary outputs
      (a model defining `outputs(emb, train=...) -> (scores, {name: [B, N]})`, e.g. `mmoe`'s task
      logits); empty for the others.
  """

  scores: jax.Array
  aux: dict[str, dict[str, jax.Array]]


def _scored(scorer: nn.Module, embedded, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
  """A stage model's `[B, N]` scores and auxiliary outputs (none unless it defines `outputs`)."""
  if hasattr(type(scorer), "outputs"):
    return scorer.outputs(embedded, train=train)
  return scorer(embedded, train=train), {}


class Cascade(nn.Module):
  """All stages of a cascade ranking system as one Flax module.

  Attributes:
    stages: the stages in order (retrieval first).
    features: the dataset's feature specs, for the embedding component.
    embedding: table width and whether stages share tables.
  """

  stages: tuple[StageSpec, ...]
  features: tuple[FeatureSpec, ...]
  embedding: EmbeddingConfig = EmbeddingConfig()

  def setup(self):
    """Creates the embedding collection(s) and one scorer per stage, named after the stage."""
    names = [s.name for s in self.stages]
    if self.embedding.shared:
      shared = EmbeddingCollection(self.features, self.embedding.dim, table_sharding=self.embedding.sharding,
                                   name="embedding")
      self.embedders = {n: shared for n in names}
    else:
      self.embedders = {n: EmbeddingCollection(self.features, self.embedding.dim,
                                               table_sharding=self.embedding.sharding, name=f"embedding_{n}")
                        for n in names}
    self.scorers = {s.name: models.get_model(s.model, dict(s.model_kwargs), module_name=f"stage_{s.name}")
                    for s in self.stages}

  @property
  def ks(self) -> tuple[int, ...]:
    """Each stage's selection size, in order."""
    return tuple(s.k for s in self.stages)

  def score_stage(self, user: Mapping[str, jax.Array], items: Mapping[str, jax.Array], stage: int,
                  *, train: bool = False) -> jax.Array:
    """`[B, N]` scores of stage `stage` (0-based) for every candidate slot."""
    name = self.stages[stage].name
    return self.scorers[name](self.embedders[name](user, items), train=train)

  def _retrieval_model(self, stage: int) -> nn.Module:
    spec = self.stages[stage]
    if not all(hasattr(type(self.scorers[spec.name]), m) for m in ("query_vector", "item_vectors")):
      raise ValueError(f"config.cascade.{spec.name}.model={spec.model!r} does not score by an inner product of "
                       f"a query and an item vector, so it cannot retrieve from the corpus; use one of {RETRIEVAL_MODELS}")
    return self.scorers[spec.name]

  def _placeholder(self, side: str, batch: int) -> dict[str, jax.Array]:
    """Padding ids for the features of `side`, so one side of the towers can be run alone."""
    return {f.name: jnp.zeros((batch, 1), jnp.int32) if f.sequence or side == "items" else jnp.zeros((batch,), jnp.int32)
            for f in self.features if f.side == side}

  def query_vectors(self, user: Mapping[str, jax.Array], *, stage: int = 0) -> jax.Array:
    """`[B, d]`: stage `stage`'s query vectors; with `item_vectors`, <q_b, v_i> is its score of item i
    for request b (what `__call__` gives on a candidate list, for any list). A model with item pools
    (`moe_nominators`) gives `[B, E, d]`, one query per pool (`item_pools`)."""
    name = self.stages[stage].name
    batch = next(iter(user.values())).shape[0]
    return self._retrieval_model(stage).query_vector(self.embedders[name](user, self._placeholder("items", batch)))

  def item_vectors(self, items: Mapping[str, jax.Array], *, stage: int = 0) -> jax.Array:
    """`[B, N, d]`: stage `stage`'s vectors of the items `items` (`[B, N]` rows of every item
    feature), independent of any request (see `query_vectors`)."""
    name = self.stages[stage].name
    batch = next(iter(items.values())).shape[0]
    return self._retrieval_model(stage).item_vectors(self.embedders[name](self._placeholder("user", batch), items))

  def _of_pools(self, items: Mapping[str, jax.Array], stage: int, method: str) -> jax.Array | None:
    """`model.<method>` of the items for stage `stage`'s model if it has item pools, else None."""
    name = self.stages[stage].name
    model = self._retrieval_model(stage)
    if not hasattr(type(model), "item_pools"):
      return None
    batch = next(iter(items.values())).shape[0]
    return getattr(model, method)(self.embedders[name](self._placeholder("user", batch), items))

  def item_pools(self, items: Mapping[str, jax.Array], *, stage: int = 0) -> jax.Array | None:
    """`[B, N]` int32 serving pool of each item for a model with pools (`moe_nominators`), else None."""
    return self._of_pools(items, stage, "item_pools")

  def item_log_gates(self, items: Mapping[str, jax.Array], *, stage: int = 0) -> jax.Array | None:
    """`[B, N, E]` log of each item's gate over the pools (`moe_nominators.log_gate`; one-hot for
    fixed pools), or None for a model without pools."""
    return self._of_pools(items, stage, "log_gate")

  def mix_pool_scores(self, scores: jax.Array, log_gate: jax.Array, *, stage: int = 0) -> jax.Array:
    """`[...]` training scores of a model with pools from its nominators' scores `[..., E]` (each
    <q_e, v> of `query_vectors` and `item_vectors`) and `item_log_gates` `[..., E]`."""
    return self._retrieval_model(stage).mix(scores, log_gate)

  def __call__(self, user: Mapping[str, jax.Array], items: Mapping[str, jax.Array],
               *, train: bool = False) -> CascadeOutput:
    """Every stage's scores for every candidate slot, and the stages' auxiliary outputs."""
    embedded = {}  # one lookup per embedding collection, however many stages share it
    scores, aux = [], {}
    for stage in self.stages:
      collection = self.embedders[stage.name]
      if collection.name not in embedded:
        embedded[collection.name] = collection(user, items)
      stage_scores, stage_aux = _scored(self.scorers[stage.name], embedded[collection.name], train)
      scores.append(stage_scores)
      if stage_aux:
        aux[stage.name] = stage_aux
    return CascadeOutput(scores=jnp.stack(scores), aux=aux)


def stage_param_names(cascade: Cascade, stage: int) -> tuple[str, ...]:
  """Top-level parameter collections that stage `stage` reads (its embedding and its model)."""
  name = cascade.stages[stage].name
  return ("embedding" if cascade.embedding.shared else f"embedding_{name}", f"stage_{name}")


@dataclasses.dataclass(frozen=True)
class CascadeSection:
  """`config.cascade`: the stages in order (each `config.cascade.<name>` with `model`, `k` and
  optional `model_kwargs`) and `gt_num`, the ground truth's size.

  Attributes:
    stages: one `StageSpec` per stage, retrieval first.
    gt_num: the ground truth is each request's top `gt_num` candidates by label.
  """

  stages: tuple[StageSpec, ...]
  gt_num: int

  @classmethod
  def parse(cls, cfg: ConfigDict, list_size: int) -> "CascadeSection":
    """Checks stage definitions (known model, known hyperparameters, each k smaller than the
    candidates the stage receives: `list_size` for the first) and `gt_num <= k_S`.

    Raises:
      ValueError: naming the `config.cascade` key that cannot work.
    """
    for key in ("stages", "gt_num"):
      if key not in cfg:
        raise ValueError(f"config is missing required key config.cascade.{key}")
    names = cfg.stages
    if not isinstance(names, (tuple, list)):
      raise ValueError(f"config.cascade.stages must be a tuple of stage names, got {names!r}")
    names = tuple(names)
    if not names:
      raise ValueError("config.cascade.stages must name at least one stage")
    if len(set(names)) != len(names):
      raise ValueError(f"config.cascade.stages has repeated names: {names}")
    gt_num = cfg.gt_num
    if not isinstance(gt_num, int) or isinstance(gt_num, bool) or gt_num < 1:
      raise ValueError(f"config.cascade.gt_num must be an int >= 1, got {gt_num!r}")
    received, received_from = list_size, "config.data.list_size (the candidates per request)"
    stages = []
    for name in names:
      prefix = f"config.cascade.{name}"
      section = cfg.get(name, None)
      for key in ("model", "k"):
        if not isinstance(section, (ConfigDict, dict)) or key not in section:
          raise ValueError(f"config is missing required key {prefix}.{key}")
      model, k = section["model"], section["k"]
      if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"{prefix}.k must be a positive int, got {k!r}")
      if k >= received:
        raise ValueError(f"{prefix}.k={k} must be smaller than the {received} candidates the stage "
                         f"receives ({received_from}); a later stage must keep fewer than an earlier one")
      kwargs = plain(section.get("model_kwargs", {}))
      models.get_model(model, kwargs, config_key=f"{prefix}.model")
      stages.append(StageSpec(name=name, model=model, k=k, model_kwargs=tuple(sorted(kwargs.items()))))
      received, received_from = k, f"{prefix}.k"
    if gt_num > received:
      raise ValueError(f"config.cascade.gt_num={gt_num} exceeds the last stage's k ({received_from}="
                       f"{received}): the cascade could never recall all of it")
    return cls(stages=tuple(stages), gt_num=gt_num)


def from_config(config: ConfigDict, features: tuple[FeatureSpec, ...], mesh=None) -> Cascade:
  """Builds the `Cascade` of `config.cascade` and `config.embedding`.

  `mesh` (a `jax.sharding.Mesh`) is needed only to lay out row-sharded tables (`config.embedding.sharded`).
  """
  stages = CascadeSection.parse(config.cascade, config.data.list_size).stages
  return Cascade(stages=stages, features=features, embedding=EmbeddingConfig.from_config(config.embedding, mesh))
