"""Re-ranking operators: the final stage that orders a ranker's selection into the list shown.

Every operator is jitted, works on `[..., n]` lists (any leading batch dims), places only the
candidates where `where` is True (e.g. the ranker's survivors), and returns the shown list as
`(order [..., k] int32, valid [..., k] bool)`: `order[..., p]` is the slot shown at position p and
`valid` is False at positions left empty (fewer than k placeable candidates, or a cap reached).
Ties go to the lower slot index, as in `cascade.hard_topk`.

- `mmr`, Maximal Marginal Relevance (Carbonell & Goldstein, SIGIR 1998). Position p shows

      argmax_{i not shown} lambda rel(i) - (1 - lambda) max_{j shown} sim(i, j)

  (the max over an empty list counts as 0). lambda = 1 is plain top-k by relevance.
- `dpp_greedy`, greedy MAP inference of a determinantal point process (Chen, Zhang & Zhou, NeurIPS
  2018, "Fast Greedy MAP Inference for Determinantal Point Process to Improve Recommendation
  Diversity"). Position p shows argmax_i det(L_{Y + i}) for the shown set Y, by the incremental
  Cholesky update: with c_i the Cholesky row of i against Y and d_i^2 = L_ii - |c_i|^2 (so that
  det(L_{Y+i}) = det(L_Y) d_i^2), showing j appends e_i = (L_ji - <c_j, c_i>) / d_j to every c_i
  and sets d_i^2 -= e_i^2: O(k n) per position, O(k^2 n) per list. Once every remaining d_i^2 is
  below `eps` times the list's largest L_ii (adding any item would make the set numerically
  singular) the greedy stops and the remaining positions take the remaining candidates by
  decreasing L_ii. `dpp_kernel` builds the paper's relevance-weighted
  kernel L = Diag(q) (S + jitter I) Diag(q), q_i = exp(alpha rel(i)), alpha = theta / (2 (1 - theta)),
  for which log det L_Y = (theta sum_{i in Y} rel(i) + (1 - theta) log det S_Y) / (1 - theta) + const.
- `creator_cap`: top-k by relevance with at most `max_per_creator` shown items of any creator; an
  item over its creator's cap is skipped (with `fill=True`: shown only when nothing else is left).
- `top_k`: plain top-k by relevance, the list without re-ranking.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from cascadejax.sections import Section


def _per_list(fn, *args):
  """`fn` on single lists, vmapped over the leading dims of `args` (the last arg is `[..., n]`)."""
  lead = args[-1].shape[:-1]
  flat = [a.reshape((-1,) + a.shape[len(lead):]) for a in args]
  order, valid = jax.vmap(fn)(*flat)
  return order.reshape(lead + order.shape[-1:]).astype(jnp.int32), valid.reshape(lead + valid.shape[-1:])


def _argmax_where(values: jax.Array, allowed: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`(index of the largest allowed value, lowest index on ties; whether any is allowed)`."""
  masked = jnp.where(allowed, jnp.maximum(values, jnp.finfo(values.dtype).min), -jnp.inf)
  return jnp.argmax(masked), allowed.any()


@functools.partial(jax.jit, static_argnames=("k",))
def top_k(relevance: jax.Array, k: int, *, where: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The k most relevant candidates in decreasing order: `(order [..., k], valid [..., k])`."""
  masked = jnp.where(where, jnp.maximum(relevance, jnp.finfo(relevance.dtype).min), -jnp.inf)
  values, order = jax.lax.top_k(masked, k)
  return order.astype(jnp.int32), values > -jnp.inf


@functools.partial(jax.jit, static_argnames=("k",))
def mmr(relevance: jax.Array, similarity: jax.Array, k: int, *, lambda_: float | jax.Array,
        where: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Maximal Marginal Relevance.

  Args:
    relevance: `[..., n]`, on a scale comparable to `similarity` (e.g. probabilities).
    similarity: `[..., n, n]`.
    k: list length.
    lambda_: relevance weight in [0, 1]; 1 = plain top-k.
    where: `[..., n]` bool, the candidates that may be shown.

  Returns:
    `(order [..., k] int32, valid [..., k] bool)`.
  """
  lam = jnp.asarray(lambda_, relevance.dtype)

  def one(rel, sim, ok_list):
    def step(carry, p):
      shown, max_sim = carry
      avail = ok_list & ~shown
      j, ok = _argmax_where(lam * rel - (1.0 - lam) * max_sim, avail)
      shown = shown.at[j].set(shown[j] | ok)
      max_sim = jnp.where(ok, jnp.where(p == 0, sim[j], jnp.maximum(max_sim, sim[j])), max_sim)
      return (shown, max_sim), (j, ok)

    init = (jnp.zeros(rel.shape, bool), jnp.zeros(rel.shape, rel.dtype))
    return jax.lax.scan(step, init, jnp.arange(k))[1]

  return _per_list(one, relevance, similarity, where)


def dpp_kernel(relevance: jax.Array, similarity: jax.Array, *, theta: float, jitter: float = 1e-3) -> jax.Array:
  """`[..., n, n]` L = Diag(q) (S + jitter I) Diag(q) with q = exp(theta / (2 (1 - theta)) rel).

  q is divided by its list maximum (so large relevances cannot overflow); that scales every
  det(L_Y) of one size alike and leaves the greedy's choices unchanged.

  Args:
    relevance: `[..., n]`.
    similarity: `[..., n, n]` positive semi-definite S (e.g. `cosine_similarity`, `equal_similarity`).
    theta: relevance weight in [0, 1): 0 = diversity only.
    jitter: added to S's diagonal so L is positive definite.
  """
  alpha = theta / (2.0 * (1.0 - theta))
  q = jnp.exp(alpha * (relevance - jax.lax.stop_gradient(relevance.max(-1, keepdims=True))))  # scale-free
  s = similarity + jitter * jnp.eye(similarity.shape[-1], dtype=similarity.dtype)
  return q[..., :, None] * s * q[..., None, :]


@functools.partial(jax.jit, static_argnames=("k",))
def dpp_greedy(kernel: jax.Array, k: int, *, where: jax.Array, eps: float = 1e-5
               ) -> tuple[jax.Array, jax.Array]:
  """Greedy DPP MAP inference by incremental Cholesky updates (Chen et al. 2018, Algorithm 1).

  Args:
    kernel: `[..., n, n]` positive semi-definite L.
    k: list length.
    where: `[..., n]` bool, the candidates that may be shown.
    eps: the greedy stops adding by determinant once the best d_i^2 is below `eps` times the
      list's largest L_ii (float32 rounding leaves about 1e-7 of it on singular sets).

  Returns:
    `(order [..., k] int32, valid [..., k] bool)`.
  """

  def one(lk, ok_list):
    quality = jnp.diagonal(lk)
    scale = jnp.max(jnp.where(ok_list, quality, 0.0))

    def step(carry, p):
      c, d2, shown, stopped = carry
      avail = ok_list & ~shown
      j_det, ok = _argmax_where(d2, avail)
      stopped = stopped | (ok & (d2[j_det] < eps * scale))
      j = jnp.where(stopped, _argmax_where(quality, avail)[0], j_det)
      e = (lk[j] - c @ c[j]) / jnp.sqrt(jnp.maximum(d2[j], eps))
      update = ok & ~stopped
      c = c.at[:, p].set(jnp.where(update, e, 0.0))
      d2 = jnp.where(update, d2 - e * e, d2)
      shown = shown.at[j].set(shown[j] | ok)
      return (c, d2, shown, stopped), (j, ok)

    n = quality.shape[-1]
    init = (jnp.zeros((n, k), lk.dtype), quality, jnp.zeros(n, bool), jnp.bool_(False))
    return jax.lax.scan(step, init, jnp.arange(k))[1]

  return _per_list(one, kernel, where)


@functools.partial(jax.jit, static_argnames=("k", "fill"))
def creator_cap(relevance: jax.Array, creators: jax.Array, k: int, *, max_per_creator: int | jax.Array,
                where: jax.Array, fill: bool = False) -> tuple[jax.Array, jax.Array]:
  """Top-k by relevance with at most `max_per_creator` shown items per creator.

  Args:
    relevance: `[..., n]`.
    creators: `[..., n]` int creator ids.
    k: list length.
    max_per_creator: the cap.
    where: `[..., n]` bool, the candidates that may be shown.
    fill: show over-cap items (most relevant first) when nothing within the cap is left, instead of
      leaving the positions empty.

  Returns:
    `(order [..., k] int32, valid [..., k] bool)`.
  """

  def one(rel, creator, ok_list):
    same = (creator[:, None] == creator[None, :]).astype(jnp.int32)

    def step(carry, _):
      shown, counts = carry
      avail = ok_list & ~shown
      j_cap, ok_cap = _argmax_where(rel, avail & (counts < max_per_creator))
      j_any, ok_any = _argmax_where(rel, avail)
      j = jnp.where(ok_cap, j_cap, j_any)
      ok = ok_cap | (fill & ok_any)
      shown = shown.at[j].set(shown[j] | ok)
      return (shown, counts + jnp.where(ok, same[j], 0)), (j, ok)

    init = (jnp.zeros(rel.shape, bool), jnp.zeros(rel.shape, jnp.int32))
    return jax.lax.scan(step, init, None, length=k)[1]

  return _per_list(one, relevance, creators, where)


def equal_similarity(ids: jax.Array) -> jax.Array:
  """`[..., n, n]` float: 1 where two candidates share the id (e.g. category), else 0 (PSD)."""
  return (ids[..., :, None] == ids[..., None, :]).astype(jnp.float32)


def cosine_similarity(vectors: jax.Array) -> jax.Array:
  """`[..., n, d] -> [..., n, n]` cosine similarity (PSD: a Gram matrix of unit vectors)."""
  unit = vectors * jax.lax.rsqrt(jnp.maximum((vectors * vectors).sum(-1, keepdims=True), 1e-12))
  return jnp.einsum("...id,...jd->...ij", unit, unit)


# ---- the re-ranking stage from a config section (`config.rerank`), applied in evaluation ----

RERANKERS = ("none", "mmr", "dpp", "creator_cap")  # config.rerank.method


@dataclasses.dataclass(frozen=True)
class RerankSection(Section):
  """`config.rerank`: the re-ranking stage evaluation applies to the last stage's survivors.

  Attributes:
    method: none | mmr | dpp | creator_cap.
    k: shown list length; 0 = the last stage's k (re-order only).
    relevance: MMR/DPP relevance: the ranker's logits as probabilities ("sigmoid"), or "logit".
    similarity: "category": sim = 1 for equal `feature` ids; "embedding": cosine of the last
      stage's item embeddings (all item features concatenated).
    feature: the item feature of "category" similarity.
    mmr_lambda, dpp_theta, dpp_jitter: MMR's relevance weight, DPP's quality exponent and jitter.
    max_per_creator, creator_feature, fill: creator_cap's cap, the item feature naming the
      creator, and whether to fill the list past the cap when too few items remain.
  """

  KEY = "rerank"
  method: str = "none"
  k: int = 0
  relevance: str = "sigmoid"
  similarity: str = "category"
  feature: str = "category"
  mmr_lambda: float = 0.7
  dpp_theta: float = 0.7
  dpp_jitter: float = 1e-3
  max_per_creator: int = 2
  creator_feature: str = "creator"
  fill: bool = False

  def check(self) -> None:
    if self.method not in RERANKERS:
      raise ValueError(f"config.rerank.method: unknown method {self.method!r}; available: {RERANKERS}")
    if self.k < 0:
      raise ValueError(f"config.rerank.k must be >= 0 (0 = the last stage's k), got {self.k}")
    if self.relevance not in ("sigmoid", "logit"):
      raise ValueError(f"config.rerank.relevance must be 'sigmoid' or 'logit', got {self.relevance!r}")
    if self.similarity not in ("category", "embedding"):
      raise ValueError(f"config.rerank.similarity must be 'category' or 'embedding', got {self.similarity!r}")
    if not 0.0 <= self.mmr_lambda <= 1.0:
      raise ValueError(f"config.rerank.mmr_lambda must be in [0, 1], got {self.mmr_lambda}")
    if not 0.0 <= self.dpp_theta < 1.0:
      raise ValueError(f"config.rerank.dpp_theta must be in [0, 1), got {self.dpp_theta}")
    if not 0.0 <= self.dpp_jitter < float("inf"):
      raise ValueError(f"config.rerank.dpp_jitter must be a finite number >= 0 (added to the similarity's "
                       f"diagonal), got {self.dpp_jitter}")
    if self.max_per_creator < 1:
      raise ValueError(f"config.rerank.max_per_creator must be >= 1, got {self.max_per_creator}")

  def check_cascade(self, last_k: int) -> int:
    """The shown list's length (`k`, or `last_k` for 0), checked against the last stage's k."""
    k = self.k or last_k
    if not 1 <= k <= last_k:
      raise ValueError(f"config.rerank.k={k} must be in [1, {last_k}] (the last stage's k): the "
                       "re-ranker shows a list chosen from the ranker's survivors")
    return k

  def check_features(self, item_features: tuple[str, ...]) -> None:
    """Raises unless `feature` and `creator_feature` are item features of the data."""
    for key in ("feature", "creator_feature"):
      if getattr(self, key) not in item_features:
        raise ValueError(f"config.rerank.{key}={getattr(self, key)!r} is not an item feature of the data: "
                         f"{sorted(item_features)}")


DEFAULTS = {f.name: f.default for f in dataclasses.fields(RerankSection)}  # every option and its default


def options(section, *, last_k: int, item_features: tuple[str, ...]) -> dict:
  """`config.rerank` merged over `DEFAULTS` and checked (`RerankSection`), with `k` resolved;
  raises `ValueError` naming the key.

  Args:
    section: the `config.rerank` ConfigDict or dict (None: re-ranking off).
    last_k: the last cascade stage's k (the re-ranker chooses among its survivors).
    item_features: the data's item feature names.
  """
  parsed = RerankSection.parse(section)
  parsed.check_features(item_features)
  return {**dataclasses.asdict(parsed), "k": parsed.check_cascade(last_k)}


def apply(o: dict, scores: jax.Array, items: dict, where: jax.Array,
          item_vectors: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """The shown list of re-ranking options `o` (from `options`).

  Args:
    o: checked options.
    scores: `[B, N]` the last stage's scores (logits).
    items: the batch's item id features, name -> `[B, N]`.
    where: `[B, N]` bool, the candidates that may be shown (the ranker's survivors).
    item_vectors: `[B, N, d]` item embeddings, needed for `similarity == "embedding"`.

  Returns:
    `(order [B, k], valid [B, k])`.
  """
  k = o["k"]
  # Order-only operators read the logits themselves: sigmoid saturates and would turn order into ties.
  if o["method"] == "none":
    return top_k(scores, k, where=where)
  if o["method"] == "creator_cap":
    return creator_cap(scores, items[o["creator_feature"]], k, max_per_creator=o["max_per_creator"],
                       where=where, fill=bool(o["fill"]))
  rel = jax.nn.sigmoid(scores) if o["relevance"] == "sigmoid" else scores
  sim = equal_similarity(items[o["feature"]]) if o["similarity"] == "category" else cosine_similarity(item_vectors)
  if o["method"] == "mmr":
    return mmr(rel, sim, k, lambda_=o["mmr_lambda"], where=where)
  return dpp_greedy(dpp_kernel(rel, sim, theta=o["dpp_theta"], jitter=o["dpp_jitter"]), k, where=where)
