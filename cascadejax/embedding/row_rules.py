"""Row-wise (lazy) optimizer rules for sharded embedding tables.

A rule updates only the rows looked up in the step, each from its summed gradient g (duplicates of an
id in the batch add up), with the same formulas, constants and order of operations as optax, so a
touched row moves exactly as the dense optax update would move it:

  adagrad:  a <- a + g^2;  p <- p - lr * g / sqrt(a + eps)       (a starts at 0.1, eps = 1e-7; optax.adagrad)
  adam:     m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
            p <- p - lr * m_hat / (sqrt(v_hat) + eps),  m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t)
            (b1 = 0.9, b2 = 0.999, eps = 1e-8; optax.adam)
  adamw:    adam, plus lr * wd * p inside the step (decoupled decay, optax.adamw)
  sgd:      u <- g + 0.9 u;  p <- p - lr * u                      (optax.sgd with momentum 0.9)

Lazy semantics: a row that is not looked up in a step keeps its parameters and its optimizer state
(Adagrad's accumulator, Adam's moments, SGD's momentum) unchanged: its moments are not decayed and
momentum does not carry it along. Adagrad is therefore exactly dense Adagrad (an untouched row's
dense update is zero too). For Adam the step count t is **global** (the number of updates applied
to the whole model, shared with the dense optimizer and the learning-rate schedule), as in
TensorFlow's LazyAdam and PyTorch's SparseAdam: a row first touched at step t gets the bias
correction of step t, not of its own first step. Coupled weight decay (`config.optimizer.weight_decay`
with adam, sgd or adagrad) and adamw's decoupled decay likewise apply to the touched rows only.
"""

from __future__ import annotations

import dataclasses
import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

RULES = ("adagrad", "adam", "adamw", "sgd")


@dataclasses.dataclass(frozen=True)
class RowRule:
  """One row-wise rule and its constants (optax's defaults).

  Attributes:
    name: "adagrad", "adam", "adamw" or "sgd".
    weight_decay: decoupled (adamw) or added to the gradient (the others); 0 disables.
    b1, b2, eps: Adam's constants.
    initial_accumulator, adagrad_eps: Adagrad's constants.
    momentum: SGD's momentum.
  """

  name: str
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  initial_accumulator: float = 0.1
  adagrad_eps: float = 1e-7
  momentum: float = 0.9

  def __post_init__(self):
    if self.name not in RULES:
      raise ValueError(f"config.optimizer.name: no row-wise rule for {self.name!r}; available: {RULES}")

  def init(self, table: jax.Array) -> dict[str, jax.Array]:
    """The state of every row, laid out like `table`."""
    if self.name == "adagrad":
      return {"sum_of_squares": jnp.full_like(table, self.initial_accumulator)}
    if self.name == "sgd":
      return {"trace": jnp.zeros_like(table)}
    return {"mu": jnp.zeros_like(table), "nu": jnp.zeros_like(table)}

  def __call__(self, rows: jax.Array, state: dict[str, jax.Array], g: jax.Array, step_size: jax.Array,
               count: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Updates `rows [S, D]` and their `state` from gradients `g [S, D]`.

    Args:
      rows: the rows' parameters.
      state: the rows' optimizer state (as `init` lays it out).
      g: their summed gradients (already clipped).
      step_size: minus the learning rate of this step.
      count: the global update count including this step (t above).

    Returns:
      The new rows and their new state.
    """
    if self.weight_decay and self.name != "adamw":
      g = g + self.weight_decay * rows
    if self.name == "adagrad":
      acc = jnp.square(g) + state["sum_of_squares"]
      u = jnp.where(acc > 0, jax.lax.rsqrt(acc + self.adagrad_eps), 0.0) * g
      new_state = {"sum_of_squares": acc}
    elif self.name == "sgd":
      u = g + self.momentum * state["trace"]
      new_state = {"trace": u}
    else:
      mu = (1 - self.b1) * g + self.b1 * state["mu"]
      nu = (1 - self.b2) * g ** 2 + self.b2 * state["nu"]
      mu_hat = mu / (1 - self.b1 ** count).astype(mu.dtype)
      nu_hat = nu / (1 - self.b2 ** count).astype(nu.dtype)
      u = mu_hat / (jnp.sqrt(nu_hat) + self.eps)
      if self.name == "adamw":
        u = u + self.weight_decay * rows
      new_state = {"mu": mu, "nu": nu}
    return rows + jnp.asarray(step_size, u.dtype) * u, new_state


def from_config(cfg: ConfigDict) -> RowRule:
  """The row-wise counterpart of `config.optimizer` (name and weight decay)."""
  return RowRule(name=cfg.name, weight_decay=float(cfg.weight_decay))
