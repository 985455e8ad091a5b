"""DCN-v2 ranker (Wang et al. 2021, "DCN V2: Improved Deep & Cross Network"), parallel structure.

Cross network, from x_0 = [user features; mean-pooled history; item features]:

    x_{l+1} = x_0 * (W_l x_l + b_l) + x_l          (elementwise *, W_l a full d x d matrix)

beside a deep MLP on x_0; the score is a linear layer on [x_L; MLP(x_0)]. Each cross layer raises
the polynomial degree of the feature interactions by one.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cascadejax.embedding import Embedded
from cascadejax.models.layers import MLP
from cascadejax.models.mlp import joint_features


class CrossLayerV2(nn.Module):
  """One DCN-v2 cross layer: `x0 * (W x + b) + x`."""

  @nn.compact
  def __call__(self, x0: jax.Array, x: jax.Array) -> jax.Array:
    return x0 * nn.Dense(x.shape[-1])(x) + x


class DCN(nn.Module):
  """Deep & Cross Network v2 scorer.

  Attributes:
    num_cross: number of cross layers.
    deep: hidden widths of the deep MLP beside the cross network.
    dropout: dropout rate in the deep MLP.
  """

  num_cross: int = 2
  deep: tuple[int, ...] = (128, 64)
  dropout: float = 0.0

  @nn.compact
  def __call__(self, emb: Embedded, *, train: bool = False) -> jax.Array:
    """`[B, N]` scores."""
    x0 = joint_features(emb)
    x = x0
    for _ in range(self.num_cross):
      x = CrossLayerV2()(x0, x)
    deep = MLP(self.deep, dropout=self.dropout)(x0, train=train)
    return nn.Dense(1)(jnp.concatenate([x, deep], axis=-1))[..., 0]


Model = DCN
