"""DIN, Deep Interest Network (Zhou et al., KDD 2018, "Deep Interest Network for Click-Through Rate
Prediction"): each candidate attends over the user's behaviour sequence.

For candidate t (its `target` feature embedding, `[D]`) and history step s_l (`[D]`, valid steps only):

    z_l   = [s_l; t; s_l - t; s_l * t]                                  [4D]   (the attention input)
    a_l   = w^T MLP_att(act(W z_l + b))                                 scalar (W is 4D x H)
    v(t)  = sum_l mask_l a_l s_l          ("none": DIN's unnormalised weights)
          = sum_l softmax_l(a_l) s_l      ("softmax")
    score = w_o^T MLP([context features; v(t); item features of t]) + b_o

**The cheap form of the first attention layer.** Write W = [W1; W2; W3; W4], one D x H block per
input block. Then

    W z_l + b = (s_l W1 + s_l W3 + b)  +  (t W2 - t W3)  +  (s_l * t) W4
                `--- per sequence ---'     `-- per item --'   `-- per (item, step) pair --'

The s, t, (s - t) blocks and the bias split: the sequence term is computed once per request
(`[B, L, H]`, B L D H multiply-adds) and the item term once per candidate (`[B, N, H]`, B N D H),
then broadcast-added. The product block cannot split: (s * t) W4 = sum_d s_d t_d W4[d] is bilinear
in (s, t), and no f(s) + g(t) equals it. It is computed as a batched matmul of t `[B, N, D]` with
the per-request tensor s ⊗ W4 `[B, D, L H]`: B N L D H multiply-adds, without materialising the
`[B, N, L, 4D]` concatenation. The naive form costs B N L 4D H for this layer, so the fast form does
about a quarter of its work (the later attention layers, on `[B, N, L, H]`, are the same in both).
`fast=False` computes the naive form from the same parameters (tests check the two agree).
`chunk=c` also evaluates the `[B, N, L, H]` part in blocks of c requests, recomputed in the backward
pass, so each block's activations stay in cache (same values; see `TargetAttention`). The output
MLP's first layer applies the context features' rows of its kernel once per request, not once per
candidate (`layers.MLP(shared=...)`, same parameters as over the concatenation).

Parameters (Fc non-sequence user features, Fi item features, embedding width D, `attention` =
(H, H2, ...), `hidden` = (h1, ...); `dense(a, ..., o)` = sum of fan_in * fan_out + fan_out):
    attention:  4 D H + H + dense(H, H2, ..., 1)
    output MLP: dense((Fc + 1 + Fi) D, h1, ..., 1)
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cascadejax.embedding.collection import Embedded
from cascadejax.models.layers import MLP, activation, context_vector, masked_softmax

NORMALIZATIONS = ("none", "softmax")


class TargetAttention(nn.Module):
  """DIN's activation unit: weights of every history step for every candidate.

  Parameters: `kernel [4D, H]`, `bias [H]` (the first layer, blocks in the order s, t, s - t, s * t),
  then `kernel_i`, `bias_i` of the later layers and `logit_kernel [H_last, 1]`, `logit_bias [1]`.

  Attributes:
    hidden: widths of the attention MLP (the first layer is the one with the cheap form).
    activation: name of the nonlinearity after each attention layer (see `layers.ACTIVATIONS`).
    fast: compute the first layer in the split form (True) or over the explicit concatenation.
    chunk: if > 0 and the batch size is a concrete number, evaluate the `[B, N, L, H]` part in
      blocks of `chunk` requests (`lax.map`), each block forming its own s ⊗ W4, and recompute it
      in the backward pass (`jax.checkpoint`), so a block's activations stay in cache instead of
      round-tripping through memory. Same values; on CPU it is faster (benchmarks/RESULTS.md).
      Shapes unknown at trace time (symbolic export) use the unblocked form.
  """

  hidden: tuple[int, ...] = (36,)
  activation: str = "sigmoid"
  fast: bool = True
  chunk: int = 0

  @nn.compact
  def __call__(self, seq: jax.Array, target: jax.Array) -> jax.Array:
    """`seq [B, L, D]`, `target [B, N, D]` -> attention logits `[B, N, L]` (unmasked)."""
    d = seq.shape[-1]
    widths = (4 * d,) + tuple(self.hidden)
    init_k, init_b = nn.initializers.lecun_normal(), nn.initializers.zeros
    layers = [(self.param("kernel", init_k, (4 * d, widths[1])), self.param("bias", init_b, (widths[1],)))]
    layers += [(self.param(f"kernel_{i}", init_k, (a, b)), self.param(f"bias_{i}", init_b, (b,)))
               for i, (a, b) in enumerate(zip(widths[1:-1], widths[2:]), start=1)]
    logit = (self.param("logit_kernel", init_k, (widths[-1], 1)), self.param("logit_bias", init_b, (1,)))
    act = activation(self.activation)
    if not self.fast:
      x = naive_attention_input(seq, target) @ layers[0][0] + layers[0][1]
      return _attention_mlp(act(x), layers[1:], logit, act)
    w1, w2, w3, w4 = jnp.split(layers[0][0], 4, axis=0)
    per_seq = seq @ (w1 + w3) + layers[0][1]                        # [B, L, H]
    per_item = target @ (w2 - w3)                                   # [B, N, H]

    def pairs(per_seq, per_item, seq, target):
      # s ⊗ W4 is formed here, so with `chunk` neither it nor its gradient is ever a whole-batch
      # [B, L, D, H] array in memory: writing, broadcasting and zeroing those cost more than the
      # block's own product did (benchmarks/RESULTS.md, issue 6).
      pair = jnp.einsum("bnd,bldh->bnlh", target, seq[..., :, None] * w4)   # [B, N, L, H]
      return _attention_mlp(act(pair + per_seq[:, None] + per_item[:, :, None]), layers[1:], logit, act)

    b = seq.shape[0]
    if self.chunk <= 0 or not isinstance(b, int) or b <= self.chunk:
      return pairs(per_seq, per_item, seq, target)
    blocks = -(-b // self.chunk)
    pad = lambda x: jnp.pad(x, [(0, blocks * self.chunk - b)] + [(0, 0)] * (x.ndim - 1))
    split = lambda x: pad(x).reshape((blocks, self.chunk) + x.shape[1:])
    out = jax.lax.map(lambda xs: jax.checkpoint(pairs)(*xs), tuple(map(split, (per_seq, per_item, seq, target))))
    return out.reshape((blocks * self.chunk,) + out.shape[2:])[:b]


def _attention_mlp(x, layers, logit, act):
  """The attention MLP after its first layer: `[..., H] -> [...]` logits."""
  for kernel, bias in layers:
    x = act(x @ kernel + bias)
  return (x @ logit[0] + logit[1])[..., 0]


def naive_attention_input(seq: jax.Array, target: jax.Array) -> jax.Array:
  """`[B, N, L, 4D]`: the explicit `[s; t; s - t; s * t]` for every (candidate, step) pair."""
  b, n, l, d = seq.shape[0], target.shape[1], seq.shape[1], seq.shape[-1]
  s = jnp.broadcast_to(seq[:, None], (b, n, l, d))
  t = jnp.broadcast_to(target[:, :, None], (b, n, l, d))
  return jnp.concatenate([s, t, s - t, s * t], axis=-1)


class DIN(nn.Module):
  """Deep Interest Network scorer.

  Attributes:
    sequence: the user sequence feature attended over (e.g. the behaviour history of item ids).
    target: the candidate feature that queries it (sharing the sequence's table, e.g. `item_id`).
    attention: widths of the attention MLP.
    attention_activation: nonlinearity inside the attention MLP.
    normalization: "none" (DIN's masked, unnormalised weights) or "softmax" over valid steps.
    hidden: widths of the output MLP.
    dropout: dropout rate in the output MLP.
    fast: use the split form of the first attention layer (see the module docstring).
    chunk: evaluate the attention in blocks of this many requests (see `TargetAttention.chunk`).
  """

  sequence: str = "history"
  target: str = "item_id"
  attention: tuple[int, ...] = (36,)
  attention_activation: str = "sigmoid"
  normalization: str = "none"
  hidden: tuple[int, ...] = (128, 64)
  dropout: float = 0.0
  fast: bool = True
  chunk: int = 0

  def __post_init__(self):
    if self.normalization not in NORMALIZATIONS:
      raise ValueError(f"din model_kwargs.normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
    if not self.attention:
      raise ValueError("din model_kwargs.attention needs at least one layer width")
    activation(self.attention_activation)
    super().__post_init__()

  def setup(self):
    """The attention unit, the output MLP and its output layer."""
    self.attention_unit = TargetAttention(self.attention, self.attention_activation, self.fast, self.chunk)
    self.mlp = MLP(self.hidden, dropout=self.dropout)
    self.out = nn.Dense(1)

  def interest(self, emb: Embedded) -> jax.Array:
    """`[B, N, D]`: each candidate's attention-pooled view of the sequence (zeros if it is empty)."""
    if self.sequence not in emb.sequence_mask or self.target not in emb.items:
      raise ValueError(f"din: needs user sequence {self.sequence!r} and item feature {self.target!r}; "
                       f"the data has sequences {sorted(emb.sequence_mask)} and items {sorted(emb.items)}")
    seq, mask = emb.user[self.sequence], emb.sequence_mask[self.sequence]
    seq = jnp.where(mask[..., None], seq, 0.0)  # padded steps hold whatever row 0 holds
    logits = self.attention_unit(seq, emb.items[self.target])
    valid = jnp.broadcast_to(mask[:, None, :], logits.shape)
    weights = masked_softmax(logits, valid) if self.normalization == "softmax" else jnp.where(valid, logits, 0.0)
    return jnp.einsum("bnl,bld->bnd", weights, seq)

  def __call__(self, emb: Embedded, *, train: bool = False) -> jax.Array:
    """`[B, N]` scores."""
    x = jnp.concatenate([self.interest(emb), emb.item_matrix()], axis=-1)
    # The context is the same for every candidate: its part of the first layer runs once per request.
    return self.out(self.mlp(x, train=train, shared=context_vector(emb)))[..., 0]


Model = DIN
