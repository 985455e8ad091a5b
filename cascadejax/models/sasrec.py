"""SASRec sequence encoder as a retrieval user tower (Kang & McAuley, ICDM 2018, "Self-Attentive
Sequential Recommendation"), with a BERT4Rec-style masked-item auxiliary loss (Sun et al., CIKM 2019).

Encoder, over the behaviour sequence s_1..s_L (`[D]` each; padding steps are zeroed and never read):

    x_l^0 = sqrt(D) s_l + p_l                          p: learned `[max_len, D]` or sinusoidal
    y     = x + MHA(LN(x), mask = causal & valid key)  per block (pre-LN, as SASRec's code)
    x'    = (y + FFN(LN(y))) * valid                   FFN: D -> D -> D, ReLU
    h     = LN(x^blocks)[last valid step]              the user's sequence state (0 if no step)

Retrieval scores are those of a two-tower model whose user tower reads [context features; h]:

    u = W_u MLP_u([context; h]) + b_u,   v_i = W_v MLP_v(item features of i) + b_v,   score = <u, v_i>

so `encode_users` / `encode_items` serve retrieval from an item-embedding index as in `dssm`.

**Masked-item loss** (`masked_item_loss`): each valid step is replaced by a learned [mask] vector
with probability `mask_prob`; the encoder reads the sequence bidirectionally (BERT4Rec); a head
maps each masked step's output o_l to o_l' = W_m o_l + b_m, which must pick the original item out of
sampled ones: softmax cross-entropy over [s_l; n_1..n_M], negatives n_j drawn uniformly from the
batch's valid history steps (steps holding the same item as s_l, i.e. the same embedding row, are
excluded).

Parameters (Fc non-sequence user features, Fi item features, width D, K blocks, towers `hidden`):
    max_len D (learned positions only) + K (4 (D^2 + D) + 2 (D^2 + D) + 4 D) + 2 D (final LN)
    + D (mask vector) + D^2 + D (masked-item head)
    + dense((Fc + 1) D, *hidden, out_dim) + dense(Fi D, *hidden, out_dim)
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cascadejax.embedding.collection import Embedded
from cascadejax.models.layers import MLP, context_vector

POSITIONS = ("learned", "sinusoidal")


def sinusoidal_positions(length: int, dim: int) -> jax.Array:
  """`[length, dim]` Transformer positions: sin/cos of pos / 10000^(2i / dim) in interleaved pairs."""
  pos = jnp.arange(length, dtype=jnp.float32)[:, None]
  freq = jnp.exp(-jnp.log(10000.0) * (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
  angles = pos * freq
  out = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(length, -1)
  return out[:, :dim]


class Block(nn.Module):
  """One pre-LN self-attention block; padded steps come out as zeros.

  Attributes:
    num_heads: attention heads (must divide D).
    dropout: dropout on attention weights and block outputs.
  """

  num_heads: int = 1
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, valid: jax.Array, causal: bool, *, train: bool = False) -> jax.Array:
    """`x [B, L, D]`, `valid [B, L]` -> `[B, L, D]`."""
    d, length = x.shape[-1], x.shape[-2]
    mask = valid[:, None, None, :]
    if causal:
      mask = mask & jnp.tril(jnp.ones((length, length), bool))[None, None]
    h = nn.LayerNorm(name="ln_attention")(x)
    h = nn.MultiHeadDotProductAttention(self.num_heads, dropout_rate=self.dropout, deterministic=not train,
                                        name="attention")(h, h, mask=mask)
    y = x + nn.Dropout(self.dropout, deterministic=not train)(h)
    h = nn.LayerNorm(name="ln_ffn")(y)
    h = nn.Dense(d, name="ffn_out")(nn.relu(nn.Dense(d, name="ffn_in")(h)))
    y = y + nn.Dropout(self.dropout, deterministic=not train)(h)
    return jnp.where(valid[..., None], y, 0.0)


class SequenceInput(nn.Module):
  """Encoder input: `sqrt(D) s_l + p_l` at valid steps (steps in `replace` read the [mask] vector).

  Attributes:
    positions: "learned" or "sinusoidal".
    max_len: rows of the learned position table (later steps reuse its last row).
  """

  positions: str = "learned"
  max_len: int = 50

  @nn.compact
  def __call__(self, seq: jax.Array, valid: jax.Array, replace: jax.Array | None = None) -> jax.Array:
    """`seq [B, L, D]`, `valid [B, L]`, `replace [B, L]` or None -> `[B, L, D]`, zeros at padding."""
    d, length = seq.shape[-1], seq.shape[-2]
    token = self.param("mask_token", nn.initializers.normal(0.02), (d,))
    if replace is not None:
      seq = jnp.where(replace[..., None], token, seq)
    if self.positions == "learned":
      table = self.param("positions", nn.initializers.normal(0.02), (self.max_len, d))
      pos = jnp.take(table, jnp.arange(length), axis=0, mode="clip")
    else:
      pos = sinusoidal_positions(length, d)
    return jnp.where(valid[..., None], seq * jnp.sqrt(float(d)) + pos, 0.0)


class SameWidthDense(nn.Module):
  """A dense layer whose output width is its input width (known only at the first call)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """`[..., D] -> [..., D]`."""
    return nn.Dense(x.shape[-1])(x)


class SASRec(nn.Module):
  """Self-attentive sequence encoder as the user tower of a two-tower retrieval model.

  Attributes:
    sequence: the user sequence feature to encode.
    num_blocks: self-attention blocks.
    num_heads: attention heads per block.
    positions: "learned" (a `[max_len, D]` table; later steps reuse its last row) or "sinusoidal".
    max_len: rows of the learned position table.
    hidden: hidden widths of the user and item towers.
    out_dim: width of the tower outputs.
    dropout: dropout inside the encoder and towers.
  """

  sequence: str = "history"
  num_blocks: int = 2
  num_heads: int = 1
  positions: str = "learned"
  max_len: int = 50
  hidden: tuple[int, ...] = (64,)
  out_dim: int = 16
  dropout: float = 0.0

  def __post_init__(self):
    if self.positions not in POSITIONS:
      raise ValueError(f"sasrec model_kwargs.positions must be one of {POSITIONS}, got {self.positions!r}")
    super().__post_init__()

  def setup(self):
    """Encoder blocks, the final layer norm, the towers and the masked-item parameters."""
    self.blocks = [Block(self.num_heads, self.dropout, name=f"block_{i}") for i in range(self.num_blocks)]
    self.final_ln = nn.LayerNorm()
    self.user_tower = MLP(self.hidden, dropout=self.dropout)
    self.user_out = nn.Dense(self.out_dim)
    self.item_tower = MLP(self.hidden, dropout=self.dropout)
    self.item_out = nn.Dense(self.out_dim)
    self.inputs = SequenceInput(self.positions, self.max_len)
    self.masked_item_head = SameWidthDense()

  def _sequence(self, emb: Embedded) -> tuple[jax.Array, jax.Array]:
    if self.sequence not in emb.sequence_mask:
      raise ValueError(f"sasrec: no user sequence {self.sequence!r}; the data has {sorted(emb.sequence_mask)}")
    return emb.user[self.sequence], emb.sequence_mask[self.sequence]

  def encode_sequence(self, seq: jax.Array, valid: jax.Array, *, causal: bool = True,
                      replace: jax.Array | None = None, train: bool = False) -> jax.Array:
    """Encoder outputs `[B, L, D]` (zeros at padded steps).

    Args:
      seq: `[B, L, D]` step embeddings.
      valid: `[B, L]` bool.
      causal: step l attends only to steps <= l (SASRec) or to every valid step (BERT4Rec).
      replace: optional `[B, L]` bool; those steps' inputs become the learned [mask] vector.
      train: dropout on.
    """
    x = self.inputs(seq, valid, replace)
    for block in self.blocks:
      x = block(x, valid, causal, train=train)
    return jnp.where(valid[..., None], self.final_ln(x), 0.0)

  def user_state(self, emb: Embedded, *, train: bool = False) -> jax.Array:
    """`[B, D]`: the causal encoder's output at the last valid step (zeros without one)."""
    seq, valid = self._sequence(emb)
    out = self.encode_sequence(seq, valid, train=train)
    last = jnp.max(jnp.where(valid, jnp.arange(valid.shape[-1]), -1), axis=-1)       # [B]
    state = jnp.take_along_axis(out, jnp.maximum(last, 0)[:, None, None], axis=1)[:, 0]
    return jnp.where((last >= 0)[:, None], state, 0.0)

  def encode_users(self, emb: Embedded, *, train: bool = False) -> jax.Array:
    """`[B, out_dim]` user vectors."""
    x = jnp.concatenate([context_vector(emb), self.user_state(emb, train=train)], axis=-1)
    return self.user_out(self.user_tower(x, train=train))

  def encode_items(self, emb: Embedded, *, train: bool = False) -> jax.Array:
    """`[B, N, out_dim]` candidate vectors."""
    return self.item_out(self.item_tower(emb.item_matrix(), train=train))

  def __call__(self, emb: Embedded, *, train: bool = False) -> jax.Array:
    """`[B, N]` scores. (Initialisation also creates the masked-item parameters.)"""
    if self.is_initializing():
      self.masked_item_loss(emb, jax.random.key(0))
    return jnp.einsum("bd,bnd->bn", self.encode_users(emb, train=train), self.encode_items(emb, train=train))

  def masked_item_loss(self, emb: Embedded, rng: jax.Array, *, mask_prob: float = 0.2,
                       num_negatives: int = 128, train: bool = False) -> jax.Array:
    """BERT4Rec-style masked-item loss over the batch's sequences (see the module docstring).

    Args:
      emb: the embedded batch (its `sequence` feature is read).
      rng: PRNG key choosing the masked steps and the negatives.
      mask_prob: probability that a valid step is masked.
      num_negatives: M, negatives shared by every masked step of the batch.
      train: dropout on.

    Returns:
      Scalar mean cross-entropy over masked steps (0 when none is masked).
    """
    seq, valid = self._sequence(emb)
    k_mask, k_row, k_col = jax.random.split(rng, 3)
    chosen = valid & (jax.random.uniform(k_mask, valid.shape) < mask_prob)
    out = self.encode_sequence(seq, valid, causal=False, replace=chosen, train=train)
    query = self.masked_item_head(out)                                               # [B, L, D]
    b, length = valid.shape
    rows = jax.random.randint(k_row, (num_negatives,), 0, b)
    cols = jax.random.randint(k_col, (num_negatives,), 0, length)
    neg, neg_ok = seq[rows, cols], valid[rows, cols]                                 # [M, D], [M]
    pos_logit = (query * seq).sum(-1)                                                # [B, L]
    neg_logit = jnp.einsum("bld,md->blm", query, neg)
    # Models never see ids: a negative is "the same item" when its embedding row is the positive's.
    # (Without materialising [B, L, M, D]: squared distance, zero up to rounding for one row.)
    norms = (seq * seq).sum(-1)[..., None] + (neg * neg).sum(-1)
    dist = norms - 2.0 * jnp.einsum("bld,md->blm", seq, neg)
    same_item = dist <= 1e-4 * norms                                                 # [B, L, M]
    neg_logit = jnp.where(neg_ok & ~same_item, neg_logit, -jnp.inf)
    logits = jnp.concatenate([pos_logit[..., None], neg_logit], axis=-1)
    nll = jax.nn.logsumexp(logits, axis=-1) - pos_logit
    return jnp.where(chosen, nll, 0.0).sum() / jnp.maximum(chosen.sum(), 1)


Model = SASRec
