"""Building blocks shared by the stage models."""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from cascadejax.embedding.collection import Embedded, masked_mean

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu, "sigmoid": nn.sigmoid, "tanh": jnp.tanh, "gelu": nn.gelu, "silu": nn.silu}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """The nonlinearity called `name` (configs name activations by string so they stay JSON).

  Raises:
    ValueError: for an unknown name, listing the known ones.
  """
  if name not in ACTIVATIONS:
    raise ValueError(f"unknown activation {name!r}; available: {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


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
  def __call__(self, x: jax.Array, *, train: bool = False, shared: jax.Array | None = None) -> jax.Array:
    """`[..., D_in] -> [..., hidden[-1]]` (identity if `hidden` is empty).

    `shared` (`[B, D_s]`, with `x` `[B, N, D_x]`): features common to all N rows of a list. The
    result equals the MLP of `[shared broadcast over N; x]` (same parameters: the first kernel is
    `[D_s + D_x, hidden[0]]`), but the first layer multiplies `shared` once per list, not N times.
    """
    if shared is not None and not self.hidden:
      return jnp.concatenate([jnp.broadcast_to(shared[:, None], x.shape[:2] + shared.shape[-1:]), x], axis=-1)
    for i, width in enumerate(self.hidden):
      # Named as the auto-naming of a plain chain of nn.Dense would name them.
      if i == 0 and shared is not None:
        x = self.activation(SharedInputDense(width, name="Dense_0")(shared, x))
      else:
        x = self.activation(nn.Dense(width, name=f"Dense_{i}")(x))
      if self.dropout:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return x


class SharedInputDense(nn.Module):
  """`nn.Dense` over `[shared broadcast over N; x]`, computed as shared W_s (once per list) + x W_x + b.

  Holds the parameters `nn.Dense` would (`kernel [D_s + D_x, features]`, `bias`, same initialisers),
  so checkpoints and parameter counts are those of the concatenated form.

  Attributes:
    features: output width.
  """

  features: int

  @nn.compact
  def __call__(self, shared: jax.Array, x: jax.Array) -> jax.Array:
    """`shared [B, D_s]`, `x [B, N, D_x]` -> `[B, N, features]`."""
    d_s = shared.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (d_s + x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    return (shared @ kernel[:d_s] + bias)[:, None] + x @ kernel[d_s:]


def masked_softmax(logits: jax.Array, mask: jax.Array, axis: int = -1) -> jax.Array:
  """Softmax of `logits` over `axis` restricted to `mask`; all-zero weights where nothing is valid.

  Masked entries get exactly 0 weight (never NaN), so padding can hold any value.
  """
  logits = jnp.where(mask, logits, -jnp.inf)
  top = jax.lax.stop_gradient(jnp.max(logits, axis=axis, keepdims=True))  # softmax is shift-invariant
  e = jnp.where(mask, jnp.exp(logits - jnp.where(jnp.isfinite(top), top, 0.0)), 0.0)
  return e / jnp.maximum(e.sum(axis=axis, keepdims=True), jnp.finfo(e.dtype).tiny)


class AttentionPooling(nn.Module):
  """Pools a sequence with learned additive attention (one learned query per module):

      a_l = softmax_l over valid steps ( v^T tanh(W x_l + b) ),     out = sum_l a_l x_l

  Parameters: `D * hidden + hidden` (W, b) + `hidden` (v).

  Attributes:
    hidden: width of the attention projection.
  """

  hidden: int = 16

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    """`x [..., L, D]`, `mask [..., L]` -> `[..., D]` (zeros when no step is valid)."""
    logits = nn.Dense(1, use_bias=False, name="query")(jnp.tanh(nn.Dense(self.hidden, name="proj")(x)))[..., 0]
    weights = masked_softmax(logits, mask)
    return jnp.einsum("...l,...ld->...d", weights, jnp.where(mask[..., None], x, 0.0))


def context_vector(emb: Embedded) -> jax.Array:
  """`[B, sum D]`: the non-sequence user/context features, concatenated in name order.

  For models that treat the behaviour sequence separately (DSSM pooling, DIN, SASRec).
  """
  parts = [v for k, v in sorted(emb.user.items()) if k not in emb.sequence_mask]
  if not parts:  # only sequences: an empty context
    return jnp.zeros(next(iter(emb.user.values())).shape[:1] + (0,))
  return jnp.concatenate(parts, axis=-1)


def fields(emb: Embedded) -> tuple[jax.Array, jax.Array]:
  """Every feature as one embedding "field", for factorisation models (FM, DeepFM).

  Returns:
    `(user_fields [B, Fu, D], item_fields [B, N, Fi, D])`: user features in name order, each
    sequence mean-pooled over its valid steps into one field; candidate features in name order.
  """
  user = [masked_mean(v, emb.sequence_mask[k]) if k in emb.sequence_mask else v
          for k, v in sorted(emb.user.items())]
  items = [v for _, v in sorted(emb.items.items())]
  return jnp.stack(user, axis=-2), jnp.stack(items, axis=-2)


class SequencePooling(nn.Module):
  """Pools every sequence feature of an `Embedded` batch over its valid steps.

  Attributes:
    pooling: "mean" (masked mean) or "attention" (one `AttentionPooling` per sequence feature,
      named `attention_<feature>`).
    attention_hidden: width of each attention projection.
  """

  pooling: str = "mean"
  attention_hidden: int = 16

  @nn.compact
  def __call__(self, emb: Embedded) -> jax.Array:
    """`[B, S * D]`: the S sequence features pooled, in name order (`[B, 0]` if there are none)."""
    if self.pooling not in ("mean", "attention"):
      raise ValueError(f"pooling must be 'mean' or 'attention', got {self.pooling!r}")
    parts = []
    for name in sorted(emb.sequence_mask):
      x, mask = emb.user[name], emb.sequence_mask[name]
      parts.append(masked_mean(x, mask) if self.pooling == "mean"
                   else AttentionPooling(self.attention_hidden, name=f"attention_{name}")(x, mask))
    if not parts:
      return jnp.zeros((next(iter(emb.user.values())).shape[0], 0))
    return jnp.concatenate(parts, axis=-1)
