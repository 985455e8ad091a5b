"""Building blocks shared by the stage models."""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax


class MLP(nn.Module):
  """Dense layers with an activation (and optional dropout) after each.

  Attributes:
    hidden: widths of the layers.
    activation: nonlinearity applied after every layer.
    dropout: dropout rate after each activation (0 disables it).
  """

  hidden: tuple[int, ...]
  activation: Callable[[jax.Array], jax.Array] = nn.relu
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """`[..., D_in] -> [..., hidden[-1]]` (identity if `hidden` is empty)."""
    for width in self.hidden:
      x = self.activation(nn.Dense(width)(x))
      if self.dropout:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return x
