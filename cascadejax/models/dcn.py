"""DCN-v2 ranker (Wang et al. 2021, "DCN V2: Improved Deep & Cross Network"), parallel structure, and
the original DCN-v1 cross layer (Wang et al. 2017, "Deep & Cross Network for Ad Click Predictions").

Cross network, from x_0 = [user features; mean-pooled history; item features]:

    x_{l+1} = x_0 * (W_l x_l + b_l) + x_l          (elementwise *, W_l a full d x d matrix)

beside a deep MLP on x_0; the score is a linear layer on [x_L; MLP(x_0)]. Each cross layer raises
the polynomial degree of the feature interactions by one.

With `low_rank=r` each W_l is factored as U_l V_l^T (d x r times r x d), the paper's low-rank cross
layer, which cuts the layer's cost from d^2 to 2dr per candidate:

    x_{l+1} = x_0 * (U_l (V_l^T x_l) + b_l) + x_l
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cascadejax.embedding.collection import Embedded
from cascadejax.models.layers import MLP
from cascadejax.models.mlp import joint_features


class CrossLayerV2(nn.Module):
  """One DCN-v2 cross layer: `x0 * (W x + b) + x`, with `W = U V^T` if `low_rank` is set.

  Attributes:
    low_rank: rank r of the factored W (None: a full d x d matrix).
  """

  low_rank: int | None = None

  @nn.compact
  def __call__(self, x0: jax.Array, x: jax.Array) -> jax.Array:
    """`[..., d], [..., d] -> [..., d]`."""
    if self.low_rank is None:
      return x0 * nn.Dense(x.shape[-1])(x) + x
    projected = nn.Dense(self.low_rank, use_bias=False, name="V")(x)
    return x0 * nn.Dense(x.shape[-1], name="U")(projected) + x


class CrossLayerV1(nn.Module):
  """One DCN-v1 cross layer: `x0 * (x . w) + b + x`, with `w, b` vectors of the input width."""

  @nn.compact
  def __call__(self, x0: jax.Array, x: jax.Array) -> jax.Array:
    """`[..., d], [..., d] -> [..., d]`."""
    d = x.shape[-1]
    w = self.param("kernel", nn.initializers.lecun_normal(), (d, 1))
    b = self.param("bias", nn.initializers.zeros, (d,))
    return x0 * (x @ w) + b + x


class DCNv1(nn.Module):
  """Deep & Cross Network (v1) scorer: rank-one cross layers beside a deep MLP.

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
      x = CrossLayerV1()(x0, x)
    deep = MLP(self.deep, dropout=self.dropout)(x0, train=train)
    return nn.Dense(1)(jnp.concatenate([x, deep], axis=-1))[..., 0]


class DCN(nn.Module):
  """Deep & Cross Network v2 scorer.

  Attributes:
    num_cross: number of cross layers.
    low_rank: rank of each cross layer's W (None: full rank).
    deep: hidden widths of the deep MLP beside the cross network.
    dropout: dropout rate in the deep MLP.
  """

  num_cross: int = 2
  low_rank: int | None = None
  deep: tuple[int, ...] = (128, 64)
  dropout: float = 0.0

  @nn.compact
  def __call__(self, emb: Embedded, *, train: bool = False) -> jax.Array:
    """`[B, N]` scores."""
    x0 = joint_features(emb)
    x = x0
    for _ in range(self.num_cross):
      x = CrossLayerV2(self.low_rank)(x0, x)
    deep = MLP(self.deep, dropout=self.dropout)(x0, train=train)
    return nn.Dense(1)(jnp.concatenate([x, deep], axis=-1))[..., 0]


Model = DCN
