"""MLP scorer (pre-ranker): an MLP over the concatenation of user and candidate features.

    score(u, i) = w^T MLP([user features; mean-pooled history; item features]) + b

Unlike the two-tower model it sees user and item features together, so it can learn crosses.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cascadejax.embedding.collection import Embedded
from cascadejax.models.layers import MLP


def joint_features(emb: Embedded) -> jax.Array:
  """`[B, N, Du + Di]`: the user vector broadcast to every candidate, next to its item features."""
  items = emb.item_matrix()
  user = emb.user_vector()
  user = jnp.broadcast_to(user[:, None, :], items.shape[:2] + user.shape[-1:])
  return jnp.concatenate([user, items], axis=-1)


class MLPScorer(nn.Module):
  """Pointwise MLP over joint user-item features.

  Attributes:
    hidden: hidden layer widths.
    dropout: dropout rate after each hidden layer.
  """

  hidden: tuple[int, ...] = (128, 64)
  dropout: float = 0.0

  @nn.compact
  def __call__(self, emb: Embedded, *, train: bool = False) -> jax.Array:
    """`[B, N]` scores."""
    x = MLP(self.hidden, dropout=self.dropout)(joint_features(emb), train=train)
    return nn.Dense(1)(x)[..., 0]


Model = MLPScorer
