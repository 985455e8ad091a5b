"""The simulator's hidden world: users, items, contexts, their true utility, and the features
and feedback every layout of `cascadejax.data.synthetic` logs from it.

The world: users with latent factors `p_u`, a user group `g_u` and a behaviour history; items with
latent factors `q_i`, a category `c_i` and a creator `a_i`; requests in one of a few contexts. The true
utility of item i for user u in context x is

    r(u, i, x) = w_dot <p_u, q_i> + w_cross M[g_u, c_i] + w_pop pop_i + w_context H[x, c_i]

where `M` is a dense, full-rank group x category taste matrix: a two-tower model whose towers are
narrower than its rank cannot represent it, so the cheap retrieval model alone cannot recover the
ground truth and the stages have to cooperate.

Opt-in extras, shared by every layout (absent keys keep the default data bit for bit):

- `config.data.feedback`: feedback fields to log, from ("click", "like", "long_view"); default
  ("click",). Likes and long views happen only on clicked items, each driven by a different part of
  the utility, so multi-task rankers have tasks that disagree:

      like      ~ click * Bernoulli(sigmoid(2 M[g_u, c_i] - like_offset))        (taste for the category)
      long_view ~ click * Bernoulli(sigmoid(2 <p_u, q_i> - long_view_offset))    (latent affinity)

  with `config.data.like_offset` (default 1.0) and `config.data.long_view_offset` (default 0.5).
  They are drawn after everything else, so asking for them changes no other field.
- `config.data.cross_features`: pairs (user feature, item feature) of non-sequence features; each
  adds the item-side cross-product feature `<user>_x_<item>` with an id per seen pair (its own
  embedding table), the wide part of `wide_deep`. E.g. (("user_group", "category"),).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from ml_collections import ConfigDict

from cascadejax.data.schema import FeatureSpec

USER_FEATURES = ("user_id", "user_group", "context")
ITEM_FEATURES = ("item_id", "category", "creator")
FEEDBACK = ("click", "like", "long_view")


@dataclasses.dataclass(frozen=True)
class World:
  """The hidden generative state: latent factors, side features and preference crosses."""

  user_factors: np.ndarray  # [U, d]
  user_group: np.ndarray  # [U] in [0, G)
  item_factors: np.ndarray  # [I, d]
  item_category: np.ndarray  # [I] in [0, C)
  item_creator: np.ndarray  # [I] in [0, A)
  popularity: np.ndarray  # [I]
  cross: np.ndarray  # [G, C], standardised group x category preference
  context_cross: np.ndarray  # [X, C]
  history: np.ndarray  # [U, L] item ids + 1, 0 = padding


def preference_cross(rng: np.random.Generator, groups: int, categories: int) -> np.ndarray:
  """A dense `[groups, categories]` taste matrix with i.i.d. N(0, 1) entries, standardised.

  Its singular values are spread (a random Gaussian matrix has full rank), so any rank-r model of
  it, such as the dot product of r-dimensional user and item towers, leaves a large residual.
  """
  m = rng.normal(size=(groups, categories)).astype(np.float32)
  return (m - m.mean()) / (m.std() + 1e-6)


def _gumbel_topk(rng: np.random.Generator, logits: np.ndarray, k: int) -> np.ndarray:
  """k indices per row sampled without replacement with probability proportional to exp(logits)."""
  g = logits - np.log(-np.log(rng.random(logits.shape, dtype=np.float32) + 1e-12) + 1e-12)
  idx = np.argpartition(-g, k - 1, axis=1)[:, :k]
  order = np.argsort(-np.take_along_axis(g, idx, axis=1), axis=1)  # most likely first
  return np.take_along_axis(idx, order, axis=1)


def make_world(cfg: ConfigDict, rng: np.random.Generator) -> World:
  """Samples users, items, preference crosses and user histories."""
  d = cfg.latent_dim
  users = rng.normal(size=(cfg.num_users, d)).astype(np.float32) / d**0.25
  items = rng.normal(size=(cfg.num_items, d)).astype(np.float32) / d**0.25
  group = rng.integers(0, cfg.num_user_groups, cfg.num_users)
  category = rng.integers(0, cfg.num_categories, cfg.num_items)
  creator = rng.integers(0, cfg.num_creators, cfg.num_items)
  creator_quality = rng.normal(size=cfg.num_creators).astype(np.float32)
  popularity = (0.7 * creator_quality[creator] + 0.7 * rng.normal(size=cfg.num_items)).astype(np.float32)
  cross = preference_cross(rng, cfg.num_user_groups, cfg.num_categories)
  context_cross = rng.normal(size=(cfg.num_contexts, cfg.num_categories)).astype(np.float32)

  # Histories: what each user engaged with, drawn from their context-free taste.
  hist = np.zeros((cfg.num_users, cfg.history_len), np.int32)
  lengths = rng.integers(cfg.min_history, cfg.history_len + 1, cfg.num_users)
  for lo in range(0, cfg.num_users, 512):
    hi = min(lo + 512, cfg.num_users)
    taste = cfg.w_dot * users[lo:hi] @ items.T + cfg.w_cross * cross[group[lo:hi]][:, category]
    picked = _gumbel_topk(rng, taste / cfg.history_temperature, cfg.history_len) + 1
    hist[lo:hi] = np.where(np.arange(cfg.history_len) < lengths[lo:hi, None], picked, 0)
  return World(users, group, items, category, creator, popularity, cross, context_cross, hist)


def teacher_views(cfg: ConfigDict, world: World, user: np.ndarray, context: np.ndarray,
                  items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Noiseless scores of the production teachers for `[B]` users/contexts and `[B, N]` items.

  Indices are 0-based (ids minus 1). Returns `(retrieval_view, utility)`: what the first teacher
  sees, `w_dot <p, q> + w_pop pop`, and the full utility r that later teachers see.
  """
  dot = np.einsum("bd,bnd->bn", world.user_factors[user], world.item_factors[items])
  cat = world.item_category[items]
  retrieval_view = cfg.w_dot * dot + cfg.w_pop * world.popularity[items]
  utility = (retrieval_view + cfg.w_cross * world.cross[world.user_group[user][:, None], cat]
             + cfg.w_context * world.context_cross[context[:, None], cat])
  return retrieval_view, utility


def draw_requests(cfg: ConfigDict, rng: np.random.Generator,
                  num_requests: int) -> tuple[np.ndarray, np.ndarray]:
  """Draws `num_requests` requests: `[R]` 0-based users (active users more often) and contexts."""
  activity = np.exp(0.5 * rng.normal(size=cfg.num_users))
  user = rng.choice(cfg.num_users, size=num_requests, p=activity / activity.sum())
  return user, rng.integers(0, cfg.num_contexts, num_requests)


def upstream_candidates(cfg: ConfigDict, world: World, rng: np.random.Generator, user: np.ndarray,
                        n: int) -> np.ndarray:
  """`[B, n]` distinct 0-based items per user, drawn without replacement as upstream retrieval would:
  with probability proportional to exp(retrieval view / candidate_temperature), most likely first."""
  upstream = cfg.w_dot * world.user_factors[user] @ world.item_factors.T + cfg.w_pop * world.popularity
  return _gumbel_topk(rng, upstream / cfg.candidate_temperature, n)


def extra_feedback(cfg: ConfigDict, world: World, rng: np.random.Generator, user: np.ndarray,
                   cand: np.ndarray, click: np.ndarray) -> dict[str, np.ndarray]:
  """The opt-in `like` / `long_view` fields (see the module docstring) for `[B]` users, `[B, N]` items."""
  feedback = {}
  requested = tuple(cfg.get("feedback", ("click",)))
  if "like" in requested:
    taste = world.cross[world.user_group[user][:, None], world.item_category[cand]]
    p = 1.0 / (1.0 + np.exp(cfg.get("like_offset", 1.0) - 2.0 * taste))
    feedback["like"] = (click * (rng.random(click.shape) < p)).astype(np.float32)
  if "long_view" in requested:
    affinity = np.einsum("bd,bnd->bn", world.user_factors[user], world.item_factors[cand])
    p = 1.0 / (1.0 + np.exp(cfg.get("long_view_offset", 0.5) - 2.0 * affinity))
    feedback["long_view"] = (click * (rng.random(click.shape) < p)).astype(np.float32)
  return feedback


def id_features(cfg: ConfigDict, world: World, user: np.ndarray, context: np.ndarray, cand: np.ndarray,
                mask: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """The logged id features `(user, items)` of `[B]` requests with `[B, N]` 0-based candidates.

  Ids are 1-based, 0 = padding (where `mask` is False); the opt-in crosses are included.
  """
  ids = lambda a: np.where(mask, a + 1, 0).astype(np.int32)
  user_ids = {"user_id": (user + 1).astype(np.int32),
              "user_group": (world.user_group[user] + 1).astype(np.int32),
              "context": (context + 1).astype(np.int32)}
  item_ids = {"item_id": ids(cand), "category": ids(world.item_category[cand]),
              "creator": ids(world.item_creator[cand])}
  sizes = {f.name: f.vocab_size for f in features(cfg)}
  crosses = {}
  for a, b in cfg.get("cross_features", ()):
    pair = (user_ids[a][:, None].astype(np.int64) - 1) * (sizes[b] - 1) + item_ids[b] - 1 + 1
    crosses[f"{a}_x_{b}"] = np.where(mask, pair, 0).astype(np.int32)
  return {**user_ids, "history": world.history[user]}, {**item_ids, **crosses}


def features(cfg: ConfigDict) -> tuple[FeatureSpec, ...]:
  """The simulator's id features; ids are 1-based with 0 reserved for padding."""
  return (
      FeatureSpec("user_id", "user", "user_id", cfg.num_users + 1),
      FeatureSpec("user_group", "user", "user_group", cfg.num_user_groups + 1),
      FeatureSpec("context", "user", "context", cfg.num_contexts + 1),
      FeatureSpec("history", "user", "item_id", cfg.num_items + 1, sequence=True),
      FeatureSpec("item_id", "items", "item_id", cfg.num_items + 1),
      FeatureSpec("category", "items", "category", cfg.num_categories + 1),
      FeatureSpec("creator", "items", "creator", cfg.num_creators + 1),
  ) + cross_features(cfg)


def cross_features(cfg: ConfigDict) -> tuple[FeatureSpec, ...]:
  """Specs of the opt-in cross-product features (`config.data.cross_features`), one table each."""
  sizes = {"user_id": cfg.num_users, "user_group": cfg.num_user_groups, "context": cfg.num_contexts,
           "item_id": cfg.num_items, "category": cfg.num_categories, "creator": cfg.num_creators}
  return tuple(FeatureSpec(f"{a}_x_{b}", "items", f"{a}_x_{b}", sizes[a] * sizes[b] + 1)
               for a, b in cfg.get("cross_features", ()))


def check_world_and_feedback(cfg: ConfigDict) -> None:
  """The checks every layout shares: histories, feedback fields, crosses, split sizes."""
  if not 1 <= cfg.min_history <= cfg.history_len:
    raise ValueError(f"config.data.min_history={cfg.min_history} must be in [1, history_len={cfg.history_len}]")
  unknown = sorted(set(cfg.get("feedback", ("click",))) - set(FEEDBACK))
  if unknown or "click" not in tuple(cfg.get("feedback", ("click",))):
    raise ValueError(f"config.data.feedback must include 'click' and take only {FEEDBACK}; got "
                     f"{tuple(cfg.feedback)}")
  for pair in cfg.get("cross_features", ()):
    if len(pair) != 2 or pair[0] not in USER_FEATURES or pair[1] not in ITEM_FEATURES:
      raise ValueError(f"config.data.cross_features: {tuple(pair)!r} is not a pair (user feature in "
                       f"{USER_FEATURES}, item feature in {ITEM_FEATURES})")
  rows = [f.vocab_size for f in cross_features(cfg)]
  if rows and max(rows) > 2**24:
    raise ValueError(f"config.data.cross_features: a cross with {max(rows):,} ids is too large for one "
                     "embedding table here; cross coarser features")
  for key in ("num_train", "num_test"):
    if cfg[key] < 1:
      raise ValueError(f"config.data.{key} must be >= 1, got {cfg[key]}")


def rngs(cfg: ConfigDict) -> tuple[np.random.Generator, np.random.Generator]:
  """Independent generators for the world and the logs, both derived from `cfg.seed`."""
  return tuple(np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(2))


def hidden_world(cfg: ConfigDict) -> World:
  """The world `load(cfg, ...)` simulates, for analyses that need the hidden truth."""
  return make_world(cfg, rngs(cfg)[0])
