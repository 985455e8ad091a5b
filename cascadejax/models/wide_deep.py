"""Wide & Deep (Cheng et al., DLRS 2016, "Wide & Deep Learning for Recommender Systems").

    wide:  w^T [v_1; ...; v_F; c_1; ...; c_W]          a linear model (no bias)
    deep:  w_o^T MLP([v_1; ...; v_F]) + b_o              an MLP on the base features' embeddings
    score = wide + deep

v_f are the base feature fields (user features with sequences mean-pooled, then item features, as
`layers.fields`); c_w are the **cross-product features** named in `wide`, which only the wide part
reads. Models never see ids, so a cross product is a feature of the data: an id feature whose value
is the pair (a, b) of two base ids, looked up in a table of its own. A linear map of a free
embedding row is a free scalar per row, so `w^T c_w` is exactly the per-pair weight of the paper's
cross-product transformation (memorisation of every seen pair). The synthetic simulator builds such
features on request: `config.data.cross_features = (("user_group", "category"),)` adds the item-side
feature `user_group_x_category` (see `cascadejax/data/synthetic.py`).

Parameters (F base fields and W cross features, all of width D, `deep` = (h1, ...)):
    (F + W) D + dense(F D, h1, ..., 1)
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cascadejax.embedding.collection import Embedded, masked_mean
from cascadejax.models.layers import MLP


class WideDeep(nn.Module):
  """Linear model over base + cross-product features, beside an MLP over the base features.

  Attributes:
    wide: names of the features read only by the wide part (cross products, user- or item-side).
    deep: hidden widths of the deep MLP.
    dropout: dropout rate in the deep MLP.
  """

  wide: tuple[str, ...] = ()
  deep: tuple[int, ...] = (128, 64)
  dropout: float = 0.0

  @nn.compact
  def __call__(self, emb: Embedded, *, train: bool = False) -> jax.Array:
    """`[B, N]` scores."""
    available = set(emb.items) | {k for k in emb.user if k not in emb.sequence_mask}
    missing = sorted(set(self.wide) - available)
    if missing:
      raise ValueError(f"wide_deep: wide features {missing} are not in the data; it has {sorted(available)} "
                       "(cross products come from the data, e.g. config.data.cross_features)")
    b, n = next(iter(emb.items.values())).shape[:2]

    def per_candidate(names_values):
      parts = []
      for name, v in names_values:
        if v.ndim == 2:  # a user-side feature: the same for every candidate of the request
          v = jnp.broadcast_to(v[:, None], (b, n, v.shape[-1]))
        parts.append(v)
      return jnp.concatenate(parts, axis=-1) if parts else jnp.zeros((b, n, 0))

    user = [(k, masked_mean(v, emb.sequence_mask[k]) if k in emb.sequence_mask else v)
            for k, v in sorted(emb.user.items()) if k not in self.wide]
    items = [(k, v) for k, v in sorted(emb.items.items()) if k not in self.wide]
    base = per_candidate(user + items)
    crosses = per_candidate([(k, emb.items[k] if k in emb.items else emb.user[k]) for k in self.wide])
    wide = nn.Dense(1, use_bias=False, name="wide")(jnp.concatenate([base, crosses], axis=-1))[..., 0]
    deep = nn.Dense(1, name="deep_out")(MLP(self.deep, dropout=self.dropout, name="deep")(base, train=train))
    return wide + deep[..., 0]


Model = WideDeep
