"""`moe_nominators`: nominators and pools by brute force, round-robin serving, padding, training."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from cascadejax import configuration
from cascadejax.ops.selection import hard_topk
from cascadejax.data.schema import FeatureSpec
from cascadejax.embedding.collection import EmbeddingCollection
from cascadejax.experiment import Experiment
from cascadejax.models import get_model
from cascadejax.models.moe_nominators import MoENominators, hash_pools, round_robin_scores
from configs import moe_nominators as moe_config
from tests.conftest import tiny_config

D = 3
FEATURES = (
    FeatureSpec("user_id", "user", "user_id", 10),
    FeatureSpec("history", "user", "item_id", 30, sequence=True),
    FeatureSpec("item_id", "items", "item_id", 30),
    FeatureSpec("category", "items", "category", 7),
)


def ids():
  """B=2 requests, N=8 slots; row 0's last two slots are padding (id 0)."""
  user = {"user_id": jnp.array([3, 7]), "history": jnp.array([[4, 9, 0], [5, 0, 0]])}
  items = {"item_id": jnp.array([[1, 5, 9, 12, 17, 21, 0, 0], [2, 3, 4, 19, 8, 25, 28, 11]]),
           "category": jnp.array([[1, 2, 3, 4, 5, 6, 0, 0], [4, 3, 2, 1, 1, 6, 5, 2]])}
  return user, items


def embed(user, items, seed=0):
  collection = EmbeddingCollection(FEATURES, D, stddev=1.0)
  return collection.apply(collection.init(jax.random.key(seed), user, items), user, items)


def make(pools="learned", seed=1, **kwargs):
  model = get_model("moe_nominators", {"num_experts": 3, "hidden": (4,), "out_dim": 2, "pools": pools, **kwargs})
  emb = embed(*ids())
  return model, model.init(jax.random.key(seed), emb), emb


def numpy_expert_scores(params, emb):
  """`[B, N, E]` s_e(u, i) from the parameters, by hand (one ReLU layer per tower)."""
  p = jax.tree.map(np.asarray, params["params"])
  x = np.asarray(emb.user_vector())
  items = np.asarray(emb.item_matrix())
  out = []
  for e in range(p["user_out"]["kernel"].shape[0]):
    h = np.maximum(x @ p["user_towers"]["kernel_0"][e] + p["user_towers"]["bias_0"][e], 0)
    u = h @ p["user_out"]["kernel"][e] + p["user_out"]["bias"][e]                        # [B, o]
    hv = np.maximum(items @ p["item_tower"]["Dense_0"]["kernel"] + p["item_tower"]["Dense_0"]["bias"], 0)
    v = hv @ p["item_out"]["kernel"] + p["item_out"]["bias"]                              # [B, N, o]
    out.append(np.einsum("bo,bno->bn", u, v))
  return np.stack(out, -1)


def brute_round_robin(scores, pools, valid, k, num_pools):
  """The set of slots nominated: round r takes every pool's r-th best (if any), best first."""
  lists = [sorted((i for i in range(len(scores)) if valid[i] and pools[i] == e), key=lambda i: (-scores[i], i))
           for e in range(num_pools)]
  chosen, r = [], 0
  while len(chosen) < min(k, int(valid.sum())):
    round_ = sorted((lst[r] for lst in lists if len(lst) > r), key=lambda i: (-scores[i], i))
    chosen += round_[:k - len(chosen)]
    r += 1
  return set(chosen)


_round_robin = jax.jit(round_robin_scores, static_argnums=3)


def served(scores, pools, valid, k, num_pools):
  out = _round_robin(jnp.asarray(scores), jnp.asarray(pools), jnp.asarray(valid), num_pools)
  return set(np.flatnonzero(np.asarray(hard_topk(out, k, where=jnp.asarray(valid)))))


# ---------------------------------------------------------------- nominators and pools

@pytest.mark.parametrize("pools", ["learned", "random", "category"])
def test_shapes_and_jit(pools):
  model, params, emb = make(pools)
  assert model.apply(params, emb, method=MoENominators.expert_scores).shape == (2, 8, 3)
  assert model.apply(params, emb, method=MoENominators.gate).shape == (2, 8, 3)
  for train in (True, False):
    out = model.apply(params, emb, train=train)
    assert out.shape == (2, 8) and out.dtype == jnp.float32 and np.isfinite(out).all()
    np.testing.assert_allclose(jax.jit(lambda p, e: model.apply(p, e, train=train))(params, emb), out, rtol=1e-5)


def test_learned_gate_is_a_distribution_and_trains_the_mixture():
  model, params, emb = make("learned")
  g = np.asarray(model.apply(params, emb, method=MoENominators.gate))
  np.testing.assert_allclose(g.sum(-1), 1.0, rtol=1e-6)
  assert (g > 0).all()
  p = jax.tree.map(np.asarray, params["params"])
  logits = np.asarray(emb.item_matrix()) @ p["gate_out"]["kernel"] + p["gate_out"]["bias"]
  want_g = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  np.testing.assert_allclose(g, want_g, rtol=1e-5)
  s = numpy_expert_scores(params, emb)
  np.testing.assert_allclose(model.apply(params, emb, method=MoENominators.expert_scores), s, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(model.apply(params, emb, train=True), (want_g * s).sum(-1), rtol=1e-4, atol=1e-6)
  # mixture="prob": the logit of the gate-weighted mean probability (same parameters).
  prob = get_model("moe_nominators", {"num_experts": 3, "hidden": (4,), "out_dim": 2, "mixture": "prob"})
  p_mix = (want_g / (1 + np.exp(-s))).sum(-1)
  np.testing.assert_allclose(prob.apply(params, emb, train=True), np.log(p_mix / (1 - p_mix)), rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(prob.apply(params, emb), model.apply(params, emb))  # serving ignores it


@pytest.mark.parametrize("pools,mixture", [("random", "logit"), ("category", "logit"), ("category", "prob")])
def test_fixed_pools_route_each_item_to_one_nominator_whose_score_it_gets(pools, mixture):
  model, params, emb = make(pools, mixture=mixture)
  item_ids, cats = np.asarray(ids()[1]["item_id"]), np.asarray(ids()[1]["category"])
  if pools == "random":
    want_pool = (((item_ids.astype(np.uint64) * 0x9E3779B1) % 2**32) >> 16) % 3
  else:
    want_pool = cats % 3
  g = np.asarray(model.apply(params, emb, method=MoENominators.gate))
  np.testing.assert_array_equal(g, np.eye(3)[want_pool])  # exactly one nominator per item
  s = numpy_expert_scores(params, emb)
  own = np.take_along_axis(s, want_pool[..., None], -1)[..., 0]
  np.testing.assert_allclose(model.apply(params, emb, train=True), own, rtol=1e-4, atol=1e-6)
  assert len(set(want_pool.ravel())) > 1  # the test really spans several pools


@pytest.mark.parametrize("mixture", ["logit", "prob"])
def test_fixed_pool_nominators_only_learn_from_their_own_pool(mixture):
  model, params, emb = make("category", mixture=mixture)
  pool = np.asarray(ids()[1]["category"]) % 3
  in_pool0 = jnp.asarray(pool == 0)

  def pool0_loss(p):
    return jnp.where(in_pool0, model.apply(p, emb, train=True), 0.0).sum()

  grads = jax.grad(pool0_loss)(params)["params"]
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(grads))
  for name in ("kernel", "bias"):
    per_expert = np.abs(np.asarray(grads["user_out"][name])).reshape(3, -1).sum(-1)
    assert per_expert[0] > 0 and (per_expert[1:] == 0).all()
  assert (np.abs(np.asarray(grads["user_towers"]["kernel_0"])).reshape(3, -1).sum(-1)[1:] == 0).all()


def test_hash_pools_is_the_documented_hash_and_balanced():
  x = np.arange(1, 4001)
  want = (((x.astype(np.uint64) * 0x9E3779B1) % 2**32) >> 16) % 4
  got = np.asarray(hash_pools(jnp.asarray(x, jnp.int32), 4))
  np.testing.assert_array_equal(got, want)
  assert np.bincount(got, minlength=4).min() > 900  # about 1000 each


def dense_count(widths):
  return sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))


@pytest.mark.parametrize("pools,gate_hidden", [("learned", ()), ("learned", (5,)), ("random", ()), ("category", ())])
def test_parameter_count(pools, gate_hidden):
  model, params, _ = make(pools, gate_hidden=gate_hidden)
  fu, fi = 2 * D, 2 * D  # user_id + pooled history; item_id + category
  want = 3 * dense_count((fu, 4, 2)) + dense_count((fi, 4, 2))
  if pools == "learned":
    want += dense_count((fi, *gate_hidden, 3))
  assert sum(x.size for x in jax.tree.leaves(params)) == want


# ---------------------------------------------------------------- serving: round-robin union

def test_round_robin_top_k_is_the_union_of_per_pool_top_lists():
  rng = np.random.default_rng(0)
  for _ in range(30):
    n, e = 9, 3
    scores = rng.normal(size=n).astype(np.float32)
    pools = rng.permutation(np.arange(n) % e)  # 3 items per pool
    valid = np.ones(n, bool)
    for q in (1, 2, 3):
      want = set()
      for p in range(e):
        members = [i for i in range(n) if pools[i] == p]
        want |= set(sorted(members, key=lambda i: -scores[i])[:q])
      assert served(scores, pools, valid, q * e, e) == want


def test_round_robin_matches_brute_force_with_short_pools_padding_ties_and_remainders():
  rng = np.random.default_rng(1)
  for _ in range(200):
    n, e = 8, int(rng.integers(2, 4))
    scores = rng.integers(-3, 3, size=n).astype(np.float32)  # many ties
    pools = rng.integers(0, e, size=n)  # pools of any size, often short or empty
    valid = rng.random(n) < 0.8
    for k in range(1, n + 1):
      assert served(scores, pools, valid, k, e) == brute_round_robin(scores, pools, valid, k, e)


def test_short_pool_gives_all_its_items_and_its_places_go_round_robin():
  scores = np.array([0.1, 5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 9.0], np.float32)
  pools = np.array([0, 1, 1, 1, 1, 1, 1, 2])  # pool 0: 1 item, pool 2: 1 item, pool 1: 6 items
  valid = np.ones(8, bool)
  # k = 6, E = 3: quotas of 2, but pools 0 and 2 hold one item each; pool 1 fills the 4 other places.
  assert served(scores, pools, valid, 6, 3) == {0, 7, 1, 2, 3, 4}
  out = np.asarray(round_robin_scores(jnp.asarray(scores), jnp.asarray(pools), jnp.asarray(valid), 3))
  # Round 0 by score: slot 7 (9.0), slot 1 (5.0), slot 0 (0.1); then pool 1's remaining items.
  assert list(np.argsort(-out, kind="stable")) == [7, 1, 0, 2, 3, 4, 5, 6]


def test_model_serving_nominates_each_pools_top_items():
  for pools, seed in itertools.product(["learned", "random", "category"], range(3)):
    model, params, emb = make(pools, seed=seed)
    s = numpy_expert_scores(params, emb)
    pool = np.asarray(model.apply(params, emb, method=MoENominators.gate)).argmax(-1)
    own = np.take_along_axis(s, pool[..., None], -1)[..., 0]
    valid = np.asarray(ids()[1]["item_id"]) > 0
    out = model.apply(params, emb)
    for b, k in itertools.product(range(2), range(1, 8)):
      got = set(np.flatnonzero(np.asarray(hard_topk(out[b], k, where=jnp.asarray(valid[b])))))
      assert got == brute_round_robin(own[b], pool[b], valid[b], k, 3), (pools, seed, b, k)


# ---------------------------------------------------------------- padding

def place(out, valid):
  """Each valid slot's 0-based place in the serving order (independent of the list length)."""
  out = np.asarray(out)
  return (out.shape[-1] - out)[valid]


@pytest.mark.parametrize("pools", ["learned", "random", "category"])
def test_padding_never_changes_valid_outputs(pools):
  model, params, _ = make(pools)
  user, items = ids()
  valid = np.asarray(items["item_id"]) > 0
  base_train = np.asarray(model.apply(params, embed(user, items), train=True))
  base_serve = np.asarray(model.apply(params, embed(user, items)))
  # Other features on the padding slots of row 0, and 3 more padding slots on every row.
  garbled = {"item_id": items["item_id"], "category": items["category"].at[0, 6:].set(jnp.array([3, 5]))}
  longer = {k: jnp.pad(v, ((0, 0), (0, 3))) for k, v in garbled.items()}
  for its in (garbled, longer):
    emb = embed(user, its)
    n_valid = np.pad(valid, ((0, 0), (0, its["item_id"].shape[1] - 8)))
    np.testing.assert_allclose(np.asarray(model.apply(params, emb, train=True))[n_valid], base_train[valid], rtol=1e-6)
    np.testing.assert_array_equal(place(model.apply(params, emb), n_valid), place(base_serve, valid))
  # Padded history steps are never read either.
  emb = embed({**user, "history": jnp.pad(user["history"], ((0, 0), (0, 2)))}, items)
  np.testing.assert_array_equal(np.asarray(model.apply(params, emb)), base_serve)


def test_padding_would_take_pool_ranks_without_the_padding_convention():
  scores = np.array([1.0, 0.5, 9.0], np.float32)  # slot 2 is padding with the best score of pool 0
  pools, valid = np.array([0, 1, 0]), np.array([True, True, False])
  with_mask = np.asarray(round_robin_scores(jnp.asarray(scores), jnp.asarray(pools), jnp.asarray(valid), 2))
  no_mask = np.asarray(round_robin_scores(jnp.asarray(scores), jnp.asarray(pools), jnp.ones(3, bool), 2))
  assert with_mask[0] > with_mask[1] and no_mask[0] < no_mask[1]  # slot 0 drops behind slot 1
  model, params, emb = make("category", padding_id=-1)
  model0, _, _ = make("category")
  assert np.asarray(model.apply(params, emb, method=MoENominators.valid)).all()
  np.testing.assert_array_equal(model0.apply(params, emb, method=MoENominators.valid), ids()[1]["item_id"] > 0)


# ---------------------------------------------------------------- config and training

def test_bad_options_name_the_config_key():
  c = moe_config.get_config()
  c.cascade.retrieval.model_kwargs.pools = "kmeans"
  with pytest.raises(ValueError, match=r"config\.cascade\.retrieval\.model: moe_nominators model_kwargs\.pools"):
    configuration.validate(c)
  c.cascade.retrieval.model_kwargs.pools = "learned"
  c.cascade.retrieval.model_kwargs.num_experts = 0
  with pytest.raises(ValueError, match=r"model_kwargs\.num_experts must be a positive int"):
    configuration.validate(c)
  c.cascade.retrieval.model_kwargs.num_experts = 4
  c.cascade.retrieval.model_kwargs.mixture = "max"
  with pytest.raises(ValueError, match=r"model_kwargs\.mixture must be one of \('logit', 'prob'\)"):
    configuration.validate(c)
  model = get_model("moe_nominators", {"pools": "category", "pool_feature": "creator"})
  with pytest.raises(ValueError, match=r"model_kwargs\.pool_feature='creator' is not a candidate feature"):
    model.init(jax.random.key(0), embed(*ids()))


@pytest.mark.parametrize("pools", ["learned", "random", "category"])
def test_config_and_its_pool_variants_validate(pools):
  c = moe_config.get_config()
  c.cascade.retrieval.model_kwargs.pools = pools
  configuration.validate(c)
  assert c.cascade.retrieval.model == "moe_nominators" and c.cascade.retrieval.k == 20


@pytest.mark.parametrize("num_stages,pools,method", [(2, "learned", "independent"), (3, "category", "lcron")])
def test_trains_under_jit_at_retrieval(num_stages, pools, method):
  c = tiny_config(num_stages)
  c.cascade.retrieval = ConfigDict(dict(model="moe_nominators", k=c.cascade.retrieval.k, model_kwargs=ConfigDict(
      dict(num_experts=2, pools=pools, hidden=(8,), out_dim=4))))
  c.method.name = method
  exp = Experiment.build(c)
  state = exp.init_state()
  before = jax.tree.map(np.asarray, state.params["cascade"]["stage_retrieval"])
  for batch in list(exp.data.splits["train"].take(slice(16 * i, 16 * (i + 1))) for i in range(3)):
    state, metrics = exp.train_step(state, batch)
    assert np.isfinite(float(metrics["loss"]))
  after = state.params["cascade"]["stage_retrieval"]
  assert not np.allclose(after["user_out"]["kernel"], before["user_out"]["kernel"])
  if pools == "learned":  # the gate trains jointly with the nominators
    assert not np.allclose(after["gate_out"]["kernel"], before["gate_out"]["kernel"])
  report = exp.evaluate(state.params["cascade"])
  assert 0.0 <= report["recall_e2e"] <= 1.0 and int(jax.device_get(state.step)) == 3
