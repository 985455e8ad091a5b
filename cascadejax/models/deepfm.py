"""DeepFM (Guo et al., IJCAI 2017, "DeepFM: A Factorization-Machine based Neural Network for CTR
Prediction"): a factorisation machine and a deep MLP reading the same embeddings.

Every feature is a field with embedding v_f `[D]` (sequences mean-pooled into one field, see
`layers.fields`); a candidate's fields are the request's Fu user fields plus its own Fi item fields.

    first order:  w^T [v_1; ...; v_F]                          (a linear map of the shared embeddings)
    FM:           sum_{f < g} <v_f, v_g> = 1/2 sum_k [ (sum_f v_fk)^2 - sum_f v_fk^2 ]
    deep:         w_o^T MLP([v_1; ...; v_F]) + b_o
    score = first order + FM + deep

The FM identity makes the pairwise term O(F D) instead of O(F^2 D). Here it is cheaper still:
the user fields' sum and sum of squares are computed once per request and added to each
candidate's item-field sums, so a candidate costs O(Fi D). (User-user pairs add the same value to
every candidate of a request; they are kept, as in FM, so the score is a calibrated logit.)

Parameters (F = Fu + Fi fields of width D, `hidden` = (h1, ...)):
    F D (first order, no bias) + dense(F D, h1, ..., 1)
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cascadejax.embedding.collection import Embedded
from cascadejax.models.layers import MLP, fields


def fm_interaction(user_fields: jax.Array, item_fields: jax.Array) -> jax.Array:
  """FM's pairwise term over the union of a request's user fields and each candidate's item fields.

  Args:
    user_fields: `[B, Fu, D]`.
    item_fields: `[B, N, Fi, D]`.

  Returns:
    `[B, N]`: sum over unordered field pairs {f, g} (f != g) of <v_f, v_g>.
  """
  u_sum, u_sq = user_fields.sum(-2), (user_fields * user_fields).sum(-2)     # [B, D] each
  i_sum, i_sq = item_fields.sum(-2), (item_fields * item_fields).sum(-2)     # [B, N, D] each
  total = u_sum[:, None] + i_sum
  return 0.5 * (total * total - (u_sq[:, None] + i_sq)).sum(-1)


class DeepFM(nn.Module):
  """FM + deep MLP on shared embeddings.

  Attributes:
    hidden: widths of the deep part.
    dropout: dropout rate in the deep part.
  """

  hidden: tuple[int, ...] = (128, 64)
  dropout: float = 0.0

  @nn.compact
  def __call__(self, emb: Embedded, *, train: bool = False) -> jax.Array:
    """`[B, N]` scores."""
    user, items = fields(emb)
    b, n = items.shape[:2]
    flat_user = user.reshape(b, -1)
    x = jnp.concatenate([jnp.broadcast_to(flat_user[:, None], (b, n, flat_user.shape[-1])),
                         items.reshape(b, n, -1)], axis=-1)
    first = nn.Dense(1, use_bias=False, name="first_order")(x)[..., 0]
    deep = nn.Dense(1, name="deep_out")(MLP(self.hidden, dropout=self.dropout, name="deep")(x, train=train))[..., 0]
    return first + fm_interaction(user, items) + deep


Model = DeepFM
