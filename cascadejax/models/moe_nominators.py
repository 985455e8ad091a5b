"""Mixture-of-experts nominators: E cheap two-tower nominators, each responsible for a pool of items
(Hron, Krauth, Jordan, Kilbertus, Dean, "On component interactions in two-stage recommender
systems", NeurIPS 2021).

Each nominator e is a two-tower scorer with its own user tower over a shared item tower:

    u_e  = W_e MLP_e([user features; mean-pooled history]) + b_e      [B, E, out_dim]
    v_i  = W_v MLP_v([item features of i]) + b_v                        [B, N, out_dim]
    s_e(u, i) = <u_e, v_i>

and every item belongs to one pool, given by a gate g(i) in the simplex over the E nominators:

    pools = "learned":  g(i) = softmax(W_g MLP_g([item features of i]) + b_g)     (the MoE gate)
    pools = "random":   g(i) = onehot(hash(id_feature(i)) mod E)                  (fixed, arbitrary)
    pools = "category": g(i) = onehot(pool_feature(i) mod E)                      (fixed, by feature)

Training (`train=True`) returns the gate-weighted mixture of the nominators, of their scores
(`mixture="logit"`, the default) or of their probabilities (`mixture="prob"`, the classical
mixture-of-experts likelihood of Jacobs et al. 1991, which rewards an expert in proportion to how
well it alone explains the item and so pushes the gate towards hard assignments):

    score(u, i) = sum_e g_e(i) s_e(u, i)                                        mixture = "logit"
    score(u, i) = logit( sum_e g_e(i) sigmoid(s_e(u, i)) )                      mixture = "prob"

so whatever cascade method trains the stage trains the gate and the experts jointly; with fixed
pools the one-hot gate makes both s_{pool(i)}(u, i), so each nominator's user tower only ever gets
gradient from its own pool's items (nominators trained independently on fixed pools).

Serving (`train=False`): item i goes to pool p(i) = argmax_e g_e(i) (ties towards the lower e);
within its pool it has rank r(i) (0-based, by s_{p(i)} descending, ties towards the lower slot),
counted over the valid candidates only. The output orders the list round-robin over pools: by r(i),
then by s_{p(i)}(u, i) descending, then by slot; slot i gets N - (its place in that order). So the
top-k of the output (`cascade.select`) is the union of every pool's top floor(k / E) items, and the
remaining k mod E places go to the best of the pools' next items by their nominators' scores. A pool
with fewer valid items than its quota contributes all of them, and its unused places go to the other
pools' next-ranked items in the same round-robin order (round-robin fill). These ranks are computed
over all valid candidates, which is exact at the retrieval position; at a later position the
survivors of the earlier stages are not known to the model.

Padding: the cascade does not hand models the candidate mask, so at serving a slot whose
`id_feature` id equals `padding_id` (0, the padding id of cascadejax's readers) is padding: it takes
no pool rank and is ordered last. `padding_id=-1` treats every slot as valid.

Parameters (Fc non-sequence user features, S sequence features, Fi item features, width D):
    E dense((Fc + S) D, *hidden, out_dim) + dense(Fi D, *hidden, out_dim)
    + dense(Fi D, *gate_hidden, E)                                   with pools = "learned" only
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cascadejax.embedding.collection import Embedded
from cascadejax.models.layers import MLP
from cascadejax.models.mmoe import Experts

POOLS = ("learned", "random", "category")
MIXTURES = ("logit", "prob")
_GOLDEN = 0x9E3779B1  # Knuth's multiplicative hash constant, floor(2^32 / golden ratio), odd


def hash_pools(ids: jax.Array, num_pools: int) -> jax.Array:
  """`[...]` int32 pool of each id: ((id * 0x9E3779B1) mod 2^32) >> 16, mod `num_pools`.

  A fixed multiplicative hash, so consecutive ids (often correlated with age or popularity) spread
  over the pools instead of cycling through them.
  """
  h = (ids.astype(jnp.uint32) * jnp.uint32(_GOLDEN)) >> jnp.uint32(16)
  return (h % jnp.uint32(num_pools)).astype(jnp.int32)


def _place(order: jax.Array, values: jax.Array) -> jax.Array:
  """Scatters `values` (given in `order`, a permutation) back to slot positions, along the last axis.

  Written as a gather through the inverse permutation, which works with symbolic list lengths
  (`jax.export`), unlike a scatter (`put_along_axis` builds index grids of concrete size)."""
  return jnp.take_along_axis(values, jnp.argsort(order, axis=-1), axis=-1)


def round_robin_scores(scores: jax.Array, pools: jax.Array, valid: jax.Array, num_pools: int) -> jax.Array:
  """Scores whose top-k is the union of every pool's top items, filled round-robin.

  Args:
    scores: `[..., n]` each candidate's score by the nominator of its own pool.
    pools: `[..., n]` int pool of each candidate, in `[0, num_pools)`.
    valid: `[..., n]` bool; invalid slots take no pool rank.
    num_pools: E.

  Returns:
    `[..., n]` float32 `n - place`, with `place` the 0-based position of the slot when the valid
    candidates are ordered by (rank within own pool ascending, score descending, slot ascending),
    followed by the invalid slots.
  """
  n = scores.shape[-1]
  slot = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), scores.shape)
  neg = jnp.where(valid, -scores.astype(jnp.float32), 0.0) + 0.0  # + 0.0 turns -0.0 into 0.0
  pool = jnp.where(valid, pools.astype(jnp.int32), num_pools)  # padding: a bin of its own, last
  # Rank within pool: sort by (pool, -score, slot); a slot's rank is its position minus its pool's start.
  _, _, by_pool = jax.lax.sort((pool, neg, slot), dimension=-1, is_stable=True, num_keys=2)
  counts = jax.nn.one_hot(pool, num_pools + 1, dtype=jnp.int32).sum(-2)
  start = jnp.cumsum(counts, axis=-1) - counts
  rank_sorted = slot - jnp.take_along_axis(start, jnp.take_along_axis(pool, by_pool, -1), -1)
  rank = jnp.where(valid, _place(by_pool, rank_sorted), n)
  _, _, order = jax.lax.sort((rank, neg, slot), dimension=-1, is_stable=True, num_keys=2)
  return (n - _place(order, slot)).astype(jnp.float32)


class ExpertDense(nn.Module):
  """E parallel dense layers, expert e applied to `x[..., e, :]` (stacked `[E, fan_in, features]` kernel).

  Attributes:
    features: output width of each expert.
  """

  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """`[..., E, fan_in] -> [..., E, features]`."""
    e, fan_in = x.shape[-2:]
    kernel = self.param("kernel", nn.initializers.lecun_normal(batch_axis=(0,)), (e, fan_in, self.features))
    bias = self.param("bias", nn.initializers.zeros, (e, self.features))
    return jnp.einsum("...ed,edf->...ef", x, kernel) + bias


class MoENominators(nn.Module):
  """E two-tower nominators with item pools (learned by a gate, or fixed), served round-robin.

  Attributes:
    num_experts: E, the number of nominators (and pools).
    pools: "learned" (softmax gate over item features), "random" (hash of `id_feature`) or
      "category" (`pool_feature` id mod E).
    hidden: hidden widths of every user tower and of the item tower.
    out_dim: width of the tower outputs.
    gate_hidden: hidden widths of the gate's MLP (empty: a linear gate), `pools="learned"` only.
    mixture: what the training score mixes: "logit" (the nominators' scores) or "prob" (their
      probabilities sigmoid(s_e); the result is returned as a logit).
    id_feature: candidate id feature hashed by `pools="random"`, and read for padding at serving.
    pool_feature: candidate feature whose id mod E is the pool with `pools="category"`.
    padding_id: the `id_feature` id of padding slots (-1: no slot is padding).
    dropout: dropout rate inside the towers.
  """

  num_experts: int = 4
  pools: str = "learned"
  hidden: tuple[int, ...] = (64,)
  out_dim: int = 16
  gate_hidden: tuple[int, ...] = ()
  mixture: str = "logit"
  id_feature: str = "item_id"
  pool_feature: str = "category"
  padding_id: int = 0
  dropout: float = 0.0

  def __post_init__(self):
    # Checked at construction, so a bad config fails in config validation, before any compilation.
    if self.pools not in POOLS:
      raise ValueError(f"moe_nominators model_kwargs.pools must be one of {POOLS}, got {self.pools!r}")
    if self.mixture not in MIXTURES:
      raise ValueError(f"moe_nominators model_kwargs.mixture must be one of {MIXTURES}, got {self.mixture!r}")
    if not isinstance(self.num_experts, int) or self.num_experts < 1:
      raise ValueError(f"moe_nominators model_kwargs.num_experts must be a positive int, got {self.num_experts!r}")
    if self.out_dim < 1 or any(w < 1 for w in (*self.hidden, *self.gate_hidden)):
      raise ValueError("moe_nominators model_kwargs.hidden, gate_hidden and out_dim need positive widths, got "
                       f"hidden={self.hidden!r}, gate_hidden={self.gate_hidden!r}, out_dim={self.out_dim!r}")
    super().__post_init__()

  def setup(self):
    """The E user towers (stacked), the shared item tower and, for learned pools, the gate."""
    self.user_towers = Experts(self.num_experts, self.hidden, self.dropout) if self.hidden else None
    self.user_out = ExpertDense(self.out_dim)
    self.item_tower = MLP(self.hidden, dropout=self.dropout)
    self.item_out = nn.Dense(self.out_dim)
    if self.pools == "learned":
      self.gate_tower = MLP(self.gate_hidden)
      self.gate_out = nn.Dense(self.num_experts)

  def encode_users(self, emb: Embedded, *, train: bool = False) -> jax.Array:
    """`[B, E, out_dim]`: every nominator's user vector."""
    x = emb.user_vector()
    h = self.user_towers(x, train=train) if self.user_towers is not None else jnp.broadcast_to(
        x[:, None], x.shape[:1] + (self.num_experts,) + x.shape[1:])
    return self.user_out(h)

  def encode_items(self, emb: Embedded, *, train: bool = False) -> jax.Array:
    """`[B, N, out_dim]` candidate vectors (shared by every nominator)."""
    return self.item_out(self.item_tower(emb.item_matrix(), train=train))

  def expert_scores(self, emb: Embedded, *, train: bool = False) -> jax.Array:
    """`[B, N, E]`: s_e(u, i), every nominator's score of every candidate."""
    return jnp.einsum("beo,bno->bne", self.encode_users(emb, train=train), self.encode_items(emb, train=train))

  def _ids(self, emb: Embedded, feature: str, option: str) -> jax.Array:
    if feature not in emb.item_ids:
      raise ValueError(f"moe_nominators model_kwargs.{option}={feature!r} is not a candidate feature of the "
                       f"data; it has {sorted(emb.item_ids)}")
    return emb.item_ids[feature]

  def fixed_pools(self, emb: Embedded) -> jax.Array:
    """`[B, N]` int32 pool of every candidate under `pools="random"` or `"category"`."""
    if self.pools == "random":
      return hash_pools(self._ids(emb, self.id_feature, "id_feature"), self.num_experts)
    if self.pools == "category":
      return (self._ids(emb, self.pool_feature, "pool_feature") % self.num_experts).astype(jnp.int32)
    raise ValueError(f"fixed_pools needs pools='random' or 'category', this model has pools={self.pools!r}")

  def log_gate(self, emb: Embedded) -> jax.Array:
    """`[B, N, E]` log g(i) (-inf outside a fixed pool)."""
    if self.pools == "learned":
      return jax.nn.log_softmax(self.gate_out(self.gate_tower(emb.item_matrix())), axis=-1)
    return jnp.where(jax.nn.one_hot(self.fixed_pools(emb), self.num_experts) > 0, 0.0, -jnp.inf)

  def gate(self, emb: Embedded) -> jax.Array:
    """`[B, N, E]` g(i): the softmax gate for learned pools, the one-hot pool for fixed ones."""
    return jnp.exp(self.log_gate(emb))

  def valid(self, emb: Embedded) -> jax.Array:
    """`[B, N]` bool: the slots that are not padding (`id_feature` id != `padding_id`)."""
    ids = self._ids(emb, self.id_feature, "id_feature")
    return ids != self.padding_id if self.padding_id >= 0 else jnp.ones(ids.shape, bool)

  def query_vector(self, emb: Embedded) -> jax.Array:
    """`[B, E, out_dim]`: one query per nominator; nominator e retrieves its pool's items by
    <u_e, v_i> and the pools' lists are merged round-robin (`cascadejax.corpus.pooled_top_k`)."""
    return self.encode_users(emb)

  def item_vectors(self, emb: Embedded) -> jax.Array:
    """`[B, N, out_dim]`: the items' side of every nominator's score (the shared item tower)."""
    return self.encode_items(emb)

  def mix(self, scores: jax.Array, log_gate: jax.Array) -> jax.Array:
    """The training score `[...]` from every nominator's score s_e `[..., E]` and log g_e `[..., E]`
    (the module docstring's two mixtures): what `__call__(train=True)` returns for a candidate list,
    and what the corpus-negatives term scores corpus items by (`cascadejax.corpus.training`)."""
    if self.mixture == "logit":
      return (jnp.exp(log_gate) * scores).sum(-1)
    # log sum_e g_e sigmoid(s_e) - log sum_e g_e sigmoid(-s_e), from logits without overflow
    return (jax.nn.logsumexp(log_gate + jax.nn.log_sigmoid(scores), axis=-1)
            - jax.nn.logsumexp(log_gate + jax.nn.log_sigmoid(-scores), axis=-1))

  def item_pools(self, emb: Embedded) -> jax.Array:
    """`[B, N]` int32: each item's serving pool, argmax_e g_e(i) (ties towards the lower e)."""
    return jnp.argmax(self.log_gate(emb), axis=-1).astype(jnp.int32)

  def __call__(self, emb: Embedded, *, train: bool = False) -> jax.Array:
    """`[B, N]`: the gate-weighted mixture (training), or the round-robin serving scores.

    Sows the gate (`intermediates/gate`, `[B, N, E]`) for diagnostics and regularisers.
    """
    s, log_g = self.expert_scores(emb, train=train), self.log_gate(emb)
    g = jnp.exp(log_g)
    self.sow("intermediates", "gate", g)
    if train:
      return self.mix(s, log_g)
    pool = jnp.argmax(g, axis=-1)
    own = jnp.take_along_axis(s, pool[..., None], axis=-1)[..., 0]
    return round_robin_scores(own, pool, self.valid(emb), self.num_experts)


Model = MoENominators
