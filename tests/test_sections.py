"""`cascadejax.sections.Section`: parsing a config section into its frozen dataclass."""

import dataclasses

import pytest
from ml_collections import ConfigDict

from cascadejax.embedding.collection import EmbeddingSection
from cascadejax.mesh import MeshSection
from cascadejax.multitask import MultitaskSection
from cascadejax.optimizer import OptimizerSection
from cascadejax.rerank import RerankSection
from cascadejax.sections import Section, flatten, plain


@dataclasses.dataclass(frozen=True)
class Example(Section):
  KEY = "example"
  ADDED = ("axes", "rate")
  size: int
  axes: tuple[str, ...] = ("model",)
  rate: float = 0.5
  name: str | None = None

  def check(self):
    if self.size < 1:
      raise ValueError(f"config.example.size must be >= 1, got {self.size}")


@dataclasses.dataclass(frozen=True)
class Open(Section):
  KEY = "open"
  OPEN = True
  size: int


def test_defaults_fill_absent_keys_and_values_are_converted():
  s = Example.parse(ConfigDict(dict(size=3, axes=["data", "model"], rate=1)))
  assert s == Example(size=3, axes=("data", "model"), rate=1.0, name=None)
  assert isinstance(s.rate, float) and isinstance(s.axes, tuple)
  assert Example.parse({"size": 2}).axes == ("model",)
  assert Example.parse({"size": 2, "name": "x"}).name == "x"
  with pytest.raises(dataclasses.FrozenInstanceError):
    s.size = 4


@pytest.mark.parametrize("given, message", [
    ({}, r"config is missing required key config.example.size"),
    ({"size": 2, "sise": 3}, r"config.example: unknown option\(s\) \['sise'\]; it takes \['axes', 'name', 'rate', 'size'\]"),
    ({"size": True}, r"config.example.size must be of type int, got True"),
    ({"size": 2.0}, r"config.example.size must be of type int, got 2.0"),
    ({"size": 2, "axes": "model"}, r"config.example.axes must be of type"),
    ({"size": 2, "axes": ("a", 1)}, r"config.example.axes must be of type str, got 1"),
    ({"size": 2, "rate": "fast"}, r"config.example.rate must be of type float, got 'fast'"),
    ({"size": 2, "name": 3}, r"config.example.name must be of type"),
    ({"size": 0}, r"config.example.size must be >= 1, got 0"),
])
def test_bad_sections_name_the_key(given, message):
  with pytest.raises(ValueError, match=message):
    Example.parse(given)


def test_open_sections_pass_other_keys_to_their_owner():
  assert Open.parse({"size": 1, "reader_key": 2}) == Open(size=1)


def test_added_keys_are_the_defaults_of_the_listed_fields():
  assert Example.added_keys() == {"example.axes": ("model",), "example.rate": 0.5}


def test_plain_and_flatten():
  c = ConfigDict(dict(a=dict(b=[1, 2], c=dict(d="x")), e=3))
  assert plain(c) == {"a": {"b": (1, 2), "c": {"d": "x"}}, "e": 3}
  assert flatten(c) == {"a.b": (1, 2), "a.c.d": "x", "e": 3}


NAN, INF = float("nan"), float("inf")
OPTIMIZER = dict(name="adam", learning_rate=1e-3, schedule="constant", warmup_steps=0, weight_decay=0.0, grad_clip=0.0)


def opt(**kw):
  return OptimizerSection, {**OPTIMIZER, **kw}


BAD_VALUES = [
    (*opt(grad_clip=-1.0), r"config.optimizer.grad_clip must be >= 0 and finite \(0 = no clipping\), got -1.0"),
    (*opt(grad_clip=NAN), r"config.optimizer.grad_clip must be >= 0 and finite \(0 = no clipping\), got nan"),
    (*opt(weight_decay=-1e-4), r"config.optimizer.weight_decay must be >= 0 and finite \(0 = no decay\)"),
    (*opt(weight_decay=INF), r"config.optimizer.weight_decay must be >= 0 and finite \(0 = no decay\), got inf"),
    (*opt(warmup_steps=-1), r"config.optimizer.warmup_steps must be >= 0 and finite \(0 = no warmup\), got -1"),
    (*opt(learning_rate=0.0), r"config.optimizer.learning_rate must be > 0 and finite, got 0.0"),
    (*opt(learning_rate=NAN), r"config.optimizer.learning_rate must be > 0 and finite, got nan"),
    (*opt(learning_rate=INF), r"config.optimizer.learning_rate must be > 0 and finite, got inf"),
    (MeshSection, dict(axes=("data",), shape=(0,)), r"config.mesh.shape \(0,\): every size must be >= 1, and at most one -1"),
    (MeshSection, dict(axes=("data", "model"), shape=(-2, 2)), r"config.mesh.shape \(-2, 2\): every size must be >= 1"),
    (MeshSection, dict(axes=("data", "model"), shape=(-1, -1)), r"config.mesh.shape \(-1, -1\): .*at most one -1"),
    (MeshSection, dict(axes=("data", "data"), shape=(1, 1)), r"config.mesh.axes must be distinct names"),
    (RerankSection, dict(dpp_jitter=-1e-3), r"config.rerank.dpp_jitter must be a finite number >= 0"),
    (RerankSection, dict(dpp_jitter=NAN), r"config.rerank.dpp_jitter must be a finite number >= 0"),
    (MultitaskSection, dict(weight=NAN), r"config.multitask.weight must be >= 0 \(0 = off\), got nan"),
    (MultitaskSection, dict(task_weights={"click": -1.0}), r"config.multitask.task_weights.click must be a finite "
                                                           r"number >= 0, got -1.0"),
    (EmbeddingSection, dict(dim=4, shared=False, sharded=True, capacity_factor=NAN),
     r"config.embedding.capacity_factor must be a number >= 0, got nan"),
]


@pytest.mark.parametrize("section,given,message", BAD_VALUES, ids=[m.split(" ")[0] for *_, m in BAD_VALUES])
def test_values_that_make_no_sense_are_rejected_naming_the_key(section, given, message):
  """Each of these was accepted before (NaN passed every `x < 0` check, a mesh size of 0 or -2 and a
  negative task weight or DPP jitter were not checked); the optimizer's negatives are kept refused."""
  with pytest.raises(ValueError, match=message):
    section.parse(given)


def test_grad_clip_zero_is_off_and_a_positive_one_clips():
  import jax.numpy as jnp  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  from cascadejax.optimizer import make_optimizer  # noqa: PLC0415

  grads = {"w": jnp.full((4,), 5.0)}  # global norm 10
  for clip, norm in ((0.0, 10.0), (1.0, 1.0)):  # sgd's first update is -lr * (clipped) gradient
    tx = make_optimizer(OptimizerSection.parse({**OPTIMIZER, "name": "sgd", "learning_rate": 1.0, "grad_clip": clip}), 10)
    updates, _ = tx.update(grads, tx.init(grads), grads)
    np.testing.assert_allclose(float(jnp.linalg.norm(updates["w"])), norm, rtol=1e-6)
