"""DSSM / two-tower retrieval with a pooled behaviour sequence (Huang et al. 2013, "Learning Deep
Structured Semantic Models for Web Search using Clickthrough Data"; the two-tower form used by
LCRON's RecFlow experiments for retrieval).

    h_u = pool(history)                       masked mean, or additive attention (layers.AttentionPooling)
    u   = W_u MLP_u([context features; h_u]) + b_u              user tower     [B, out_dim]
    v_i = W_v MLP_v([item features of i]) + b_v                 item tower     [B, N, out_dim]
    score(u, i) = <u, v_i>                      ("dot")
                = cos(u, v_i) / temperature     ("cosine")

The score is separable: serving embeds every item once with `encode_items` into an index and scores
a request with one `encode_users` call and a nearest-neighbour search.

Parameters (Fu non-sequence user features, Fi item features, embedding width D, towers `hidden`,
`dense(a, h..., o)` = sum of (fan_in * fan_out + fan_out) over the chain):
    dense((Fu + S) D, *hidden, out_dim) + dense(Fi D, *hidden, out_dim)
    + S (D * attention_hidden + 2 * attention_hidden)   if pooling == "attention"
with S the number of sequence features (one pooling module per sequence).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cascadejax.embedding.collection import Embedded
from cascadejax.models.layers import MLP, SequencePooling, context_vector

POOLINGS = ("mean", "attention")
SCORES = ("dot", "cosine")


class DSSM(nn.Module):
  """Two towers over user context + pooled behaviour sequence and item features.

  Attributes:
    hidden: hidden widths of each tower.
    out_dim: width of the tower outputs.
    pooling: "mean" (masked mean over valid history steps) or "attention" (learned query).
    attention_hidden: width of the attention projection when `pooling == "attention"`.
    score: "dot" (inner product) or "cosine" (cosine similarity divided by `temperature`).
    temperature: divides cosine scores, so logits span [-1/t, 1/t].
    dropout: dropout rate inside the towers.
  """

  hidden: tuple[int, ...] = (64,)
  out_dim: int = 16
  pooling: str = "mean"
  attention_hidden: int = 16
  score: str = "dot"
  temperature: float = 0.1
  dropout: float = 0.0

  def __post_init__(self):
    # Checked at construction, so a bad config fails in config validation, before any compilation.
    if self.pooling not in POOLINGS:
      raise ValueError(f"dssm model_kwargs.pooling must be one of {POOLINGS}, got {self.pooling!r}")
    if self.score not in SCORES:
      raise ValueError(f"dssm model_kwargs.score must be one of {SCORES}, got {self.score!r}")
    super().__post_init__()

  def setup(self):
    """The towers, their output projections and the history pooling."""
    self.user_tower = MLP(self.hidden, dropout=self.dropout)
    self.user_out = nn.Dense(self.out_dim)
    self.item_tower = MLP(self.hidden, dropout=self.dropout)
    self.item_out = nn.Dense(self.out_dim)
    self.history = SequencePooling(self.pooling, self.attention_hidden)

  def encode_users(self, emb: Embedded, *, train: bool = False) -> jax.Array:
    """`[B, out_dim]` user vectors (L2-normalised when `score == "cosine"`)."""
    x = jnp.concatenate([context_vector(emb), self.history(emb)], axis=-1)
    return self._finish(self.user_out(self.user_tower(x, train=train)))

  def encode_items(self, emb: Embedded, *, train: bool = False) -> jax.Array:
    """`[B, N, out_dim]` candidate vectors (L2-normalised when `score == "cosine"`)."""
    return self._finish(self.item_out(self.item_tower(emb.item_matrix(), train=train)))

  def _finish(self, v: jax.Array) -> jax.Array:
    if self.score == "dot":
      return v
    return v * jax.lax.rsqrt(jnp.maximum((v * v).sum(-1, keepdims=True), 1e-12))

  def query_vector(self, emb: Embedded) -> jax.Array:
    """`[B, out_dim]`: the query whose inner product with `item_vectors` is the serving score (the
    temperature folded in for cosine scores)."""
    u = self.encode_users(emb)
    return u if self.score == "dot" else u / self.temperature

  def item_vectors(self, emb: Embedded) -> jax.Array:
    """`[B, N, out_dim]`: the corpus side of the serving score <query_vector, item_vectors>."""
    return self.encode_items(emb)

  def __call__(self, emb: Embedded, *, train: bool = False) -> jax.Array:
    """`[B, N]` scores."""
    s = jnp.einsum("bd,bnd->bn", self.encode_users(emb, train=train), self.encode_items(emb, train=train))
    return s if self.score == "dot" else s / self.temperature


Model = DSSM
