"""Two-tower retrieval model: user tower and item tower meet in a dot product.

    score(u, i) = <f(user features, mean-pooled history), g(item features)>

Scores are separable, so retrieval can be served from an index of `encode_items` outputs; the price
is that the score matrix over (user, item) has rank at most `out_dim`, so feature crosses of higher
rank are out of its reach.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cascadejax.embedding.collection import Embedded
from cascadejax.models.layers import MLP


class TwoTower(nn.Module):
  """Dot product of a user tower and an item tower.

  Attributes:
    hidden: hidden widths of each tower.
    out_dim: width of the tower outputs (the rank of the score matrix).
    dropout: dropout rate inside the towers.
  """

  hidden: tuple[int, ...] = (64,)
  out_dim: int = 16
  dropout: float = 0.0

  def setup(self):
    """The two towers and their output projections."""
    self.user_tower = MLP(self.hidden, dropout=self.dropout)
    self.user_out = nn.Dense(self.out_dim)
    self.item_tower = MLP(self.hidden, dropout=self.dropout)
    self.item_out = nn.Dense(self.out_dim)

  def encode_users(self, emb: Embedded, *, train: bool = False) -> jax.Array:
    """`[B, out_dim]` user vectors."""
    return self.user_out(self.user_tower(emb.user_vector(), train=train))

  def encode_items(self, emb: Embedded, *, train: bool = False) -> jax.Array:
    """`[B, N, out_dim]` candidate vectors."""
    return self.item_out(self.item_tower(emb.item_matrix(), train=train))

  def query_vector(self, emb: Embedded) -> jax.Array:
    """`[B, out_dim]`: the query whose inner product with `item_vectors` is the serving score."""
    return self.encode_users(emb)

  def item_vectors(self, emb: Embedded) -> jax.Array:
    """`[B, N, out_dim]`: the corpus side of the serving score <query_vector, item_vectors>."""
    return self.encode_items(emb)

  def __call__(self, emb: Embedded, *, train: bool = False) -> jax.Array:
    """`[B, N]` scores."""
    u = self.encode_users(emb, train=train)
    v = self.encode_items(emb, train=train)
    return jnp.einsum("bd,bnd->bn", u, v)


Model = TwoTower
