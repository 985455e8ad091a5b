"""The training-method interface: how a cascade's stage scores become one training loss.

A method sees the scores of every stage on every candidate (`[S, B, N]`), the batch (stage reached,
label, mask, feedback) and its own parameters (e.g. learned loss weights), and returns a scalar
loss plus named values to log. It is a plain Python object holding static options; `init` and
`loss` are pure functions of their arguments, so the train step that calls them is jitted once.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Mapping

import jax

from cascadejax.data.schema import CascadeBatch


class CascadeMethod(abc.ABC):
  """Base class of training methods.

  Subclasses set `name` and `defaults` (option name -> default value; the options a user may set in
  `config.method.<name>`) and implement `loss`; methods with parameters override `init`.

  Args:
    options: values for (a subset of) `defaults`.
    stage_names: the cascade's stage names, in order.
    ks: each stage's selection size.
    gt_num: size of the ground-truth set (the top `gt_num` labels of a request).
  """

  name: ClassVar[str]
  defaults: ClassVar[Mapping[str, Any]] = {}

  def __init__(self, options: Mapping[str, Any], *, stage_names: tuple[str, ...], ks: tuple[int, ...],
               gt_num: int):
    unknown = sorted(set(options) - set(self.defaults))
    if unknown:
      raise ValueError(f"config.method.{self.name}: unknown option(s) {unknown}; "
                       f"{self.name!r} takes {sorted(self.defaults)}")
    self.options = {**self.defaults, **dict(options)}
    self.stage_names, self.ks, self.gt_num = tuple(stage_names), tuple(ks), gt_num

  @property
  def num_stages(self) -> int:
    """S, the number of stages."""
    return len(self.stage_names)

  def init(self, rng: jax.Array) -> Any:
    """The method's own trainable parameters (a pytree; empty by default)."""
    del rng
    return {}

  @abc.abstractmethod
  def loss(self, params: Any, stage_scores: jax.Array, batch: CascadeBatch, *,
           rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Training loss of one batch.

    Args:
      params: the method's parameters (from `init`, as updated by the optimizer).
      stage_scores: `[S, B, N]` scores of every stage for every candidate slot.
      batch: the `CascadeBatch` the scores were computed on.
      rng: a PRNG key for methods that sample.

    Returns:
      `(loss, aux)`: a scalar, and named scalars to log (e.g. per-stage loss terms).
    """
