"""Embedding component, stage models, model registry and the `Cascade` module, on tiny shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.errors import ScopeParamNotFoundError

from cascadejax.cascade import Cascade, StageSpec, stage_param_names
from cascadejax.data.schema import FeatureSpec
from cascadejax.embedding.collection import EmbeddingCollection, EmbeddingConfig, masked_mean
from cascadejax.models import MODELS, get_model
from cascadejax.models.dcn import CrossLayerV2
from cascadejax.models.mlp import joint_features

D = 4  # embedding width
FEATURES = (
    FeatureSpec("user_id", "user", "user_id", 10),
    FeatureSpec("history", "user", "item_id", 20, sequence=True),
    FeatureSpec("item_id", "items", "item_id", 20),
    FeatureSpec("category", "items", "category", 5),
)
KWARGS = {"two_tower": dict(hidden=(4,), out_dim=3), "mlp": dict(hidden=(4,)),
          "dcn": dict(num_cross=1, deep=(4,)),
          # the model zoo (issue 6); its own tests are tests/test_models_*.py
          "dcn_v1": dict(num_cross=1, deep=(4,)), "dssm": dict(hidden=(4,), out_dim=3),
          "din": dict(attention=(4,), hidden=(4,)), "deepfm": dict(hidden=(4,)), "wide_deep": dict(deep=(4,)),
          "mmoe": dict(num_experts=2, expert=(4,), tower=(3,)), "sasrec": dict(num_blocks=1, hidden=(4,), out_dim=3),
          "moe_nominators": dict(num_experts=2, hidden=(4,), out_dim=3)}
# moe_nominators serves each pool's top items round-robin (train=False), so its serving scores depend
# on the other candidates by design; tests/test_models_moe_nominators.py checks its pointwise training
# scores and its invariance to padding and to padded history steps.
POINTWISE = sorted(set(MODELS) - {"moe_nominators"})


def batch():
  """B=2 requests, N=5 slots (row 0's last slot is padding), history L=4 (row 1 all padding)."""
  user = {"user_id": jnp.array([3, 7]), "history": jnp.array([[4, 9, 0, 0], [0, 0, 0, 0]])}
  items = {"item_id": jnp.array([[1, 5, 9, 12, 0], [2, 3, 4, 19, 8]]),
           "category": jnp.array([[1, 2, 3, 4, 0], [4, 3, 2, 1, 1]])}
  return user, items


def embed_params():
  return EmbeddingCollection(FEATURES, D).init(jax.random.key(0), *batch())


def embed(params, user, items):
  return EmbeddingCollection(FEATURES, D).apply(params, user, items)


def n_params(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


# ---------------------------------------------------------------- embedding

def test_embedding_tables_shapes_and_shared_rows():
  params = embed_params()
  tables = params["params"]
  # One table per distinct table name, sized by vocab_size x dim.
  assert {k: v.shape for k, v in tables.items()} == {"user_id": (10, D), "item_id": (20, D), "category": (5, D)}
  user, items = batch()
  emb = embed(params, user, items)
  assert emb.user["user_id"].shape == (2, D) and emb.user["history"].shape == (2, 4, D)
  assert emb.items["item_id"].shape == (2, 5, D) and emb.items["category"].shape == (2, 5, D)
  t = np.asarray(tables["item_id"])
  np.testing.assert_array_equal(emb.user["history"], t[np.asarray(user["history"])])
  np.testing.assert_array_equal(emb.items["item_id"], t[np.asarray(items["item_id"])])
  # history id 9 and candidate id 9 (row 0, slot 2) read the same row of the shared table.
  np.testing.assert_array_equal(emb.user["history"][0, 1], emb.items["item_id"][0, 2])
  np.testing.assert_array_equal(emb.user["user_id"], np.asarray(tables["user_id"])[[3, 7]])
  # Only sequence features get a mask, and it is ids > 0.
  assert set(emb.sequence_mask) == {"history"}
  np.testing.assert_array_equal(emb.sequence_mask["history"], np.asarray(user["history"]) > 0)


def test_masked_mean_matches_numpy_and_is_zero_without_valid_steps():
  x = np.random.default_rng(0).normal(size=(3, 4, D)).astype(np.float32)
  mask = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 1, 1]], bool)
  got = np.asarray(masked_mean(jnp.asarray(x), jnp.asarray(mask)))
  want = np.stack([x[i][mask[i]].mean(0) if mask[i].any() else np.zeros(D) for i in range(3)])
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  assert np.isfinite(got).all() and (got[1] == 0).all()


def test_user_vector_and_joint_features():
  params = embed_params()
  user, items = batch()
  emb = embed(params, user, items)
  t_item, t_user = np.asarray(params["params"]["item_id"]), np.asarray(params["params"]["user_id"])
  # Sorted feature order: history (mean over valid steps) then user_id; row 1 history is all padding.
  hist = np.stack([t_item[[4, 9]].mean(0), np.zeros(D)])
  np.testing.assert_allclose(emb.user_vector(), np.concatenate([hist, t_user[[3, 7]]], -1), rtol=1e-6)
  x = np.asarray(joint_features(emb))
  assert x.shape == (2, 5, emb.user_vector().shape[-1] + emb.item_matrix().shape[-1]) == (2, 5, 4 * D)
  np.testing.assert_array_equal(x[:, :, :2 * D], np.broadcast_to(np.asarray(emb.user_vector())[:, None], (2, 5, 2 * D)))
  np.testing.assert_array_equal(x[:, :, 2 * D:], emb.item_matrix())


# ---------------------------------------------------------------- stage models

def model_and_params(name, **kwargs):
  model = get_model(name, {**KWARGS[name], **kwargs})
  return model, model.init(jax.random.key(1), embed(embed_params(), *batch()))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_shape_and_jit(name):
  model, params = model_and_params(name)
  emb = embed(embed_params(), *batch())
  scores = model.apply(params, emb)
  assert scores.shape == (2, 5) and np.isfinite(scores).all()
  np.testing.assert_allclose(jax.jit(model.apply)(params, emb), scores, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", POINTWISE)
def test_model_scores_are_pointwise_per_slot(name):
  model, params = model_and_params(name)
  ep = embed_params()
  user, items = batch()
  base = np.asarray(model.apply(params, embed(ep, user, items)))
  # Change slot 1's item and category in both rows: only slot 1's scores may move.
  items2 = {"item_id": items["item_id"].at[:, 1].set(17), "category": items["category"].at[:, 1].set(4)}
  new = np.asarray(model.apply(params, embed(ep, user, items2)))
  others = [0, 2, 3, 4]
  np.testing.assert_allclose(new[:, others], base[:, others], rtol=1e-6, atol=1e-7)
  assert not np.allclose(new[:, 1], base[:, 1])  # the perturbation is real


@pytest.mark.parametrize("name", POINTWISE)
def test_model_ignores_history_padding(name):
  model, params = model_and_params(name)
  ep = embed_params()
  user, items = batch()
  base = np.asarray(model.apply(params, embed(ep, user, items)))
  # Extend the history with 3 more padding columns.
  longer = {**user, "history": jnp.pad(user["history"], ((0, 0), (0, 3)))}
  np.testing.assert_allclose(model.apply(params, embed(ep, longer, items)), base, rtol=1e-6, atol=1e-7)
  # Overwrite the padding row 0 of the shared item table: padded history steps must not be read, so
  # scores of valid candidates (item_id > 0) stay put.
  ep2 = jax.tree.map(lambda x: x, ep)
  ep2["params"]["item_id"] = ep["params"]["item_id"].at[0].set(5.0)
  new = np.asarray(model.apply(params, embed(ep2, user, items)))
  valid = np.asarray(items["item_id"]) > 0
  np.testing.assert_allclose(new[valid], base[valid], rtol=1e-6, atol=1e-7)
  # The history does matter: a different valid history changes the scores of row 0.
  other = {**user, "history": user["history"].at[0, 2].set(13)}
  assert not np.allclose(model.apply(params, embed(ep, other, items))[0], base[0])


def test_two_tower_call_is_dot_product_of_towers():
  model, params = model_and_params("two_tower")
  emb = embed(embed_params(), *batch())
  u = np.asarray(model.apply(params, emb, method=model.encode_users))
  v = np.asarray(model.apply(params, emb, method=model.encode_items))
  assert u.shape == (2, 3) and v.shape == (2, 5, 3)
  np.testing.assert_allclose(model.apply(params, emb), np.einsum("bd,bnd->bn", u, v), rtol=1e-5, atol=1e-6)


def test_cross_layer_v2_matches_numpy():
  rng = np.random.default_rng(2)
  x0, x = (rng.normal(size=(2, 5, 6)).astype(np.float32) for _ in range(2))
  layer = CrossLayerV2()
  params = layer.init(jax.random.key(3), x0, x)
  (dense,) = params["params"].values()
  w, b = np.asarray(dense["kernel"]), np.asarray(dense["bias"])
  assert w.shape == (6, 6) and b.shape == (6,)
  b = b + rng.normal(size=6).astype(np.float32)  # non-zero bias so it is tested too
  params = {"params": {k: {"kernel": w, "bias": b} for k in params["params"]}}
  np.testing.assert_allclose(layer.apply(params, x0, x), x0 * (x @ w + b) + x, rtol=1e-5, atol=1e-5)


def test_low_rank_cross_layer_is_the_factored_full_layer():
  # low_rank=r computes x0 * (U V^T x + b) + x: the full layer with W = V U (row-vector convention).
  rng = np.random.default_rng(4)
  x0, x = (rng.normal(size=(2, 5, 6)).astype(np.float32) for _ in range(2))
  layer = CrossLayerV2(low_rank=2)
  p = layer.init(jax.random.key(5), x0, x)["params"]
  v, u, b = np.asarray(p["V"]["kernel"]), np.asarray(p["U"]["kernel"]), np.asarray(p["U"]["bias"]) + 0.3
  assert v.shape == (6, 2) and u.shape == (2, 6) and "bias" not in p["V"]
  params = {"params": {"V": {"kernel": v}, "U": {"kernel": u, "bias": b}}}
  np.testing.assert_allclose(layer.apply(params, x0, x), x0 * (x @ (v @ u) + b) + x, rtol=1e-5, atol=1e-5)
  full = CrossLayerV2()
  np.testing.assert_allclose(full.apply({"params": {"Dense_0": {"kernel": v @ u, "bias": b}}}, x0, x),
                             layer.apply(params, x0, x), rtol=1e-5, atol=1e-5)


def dense_count(widths):
  """Parameters of a chain of Dense layers through `widths` (kernel + bias each)."""
  return sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))


def test_dcn_parameter_count():
  model, params = model_and_params("dcn", num_cross=2, deep=(5, 3))
  d = 4 * D  # joint width: user_id + pooled history + item_id + category
  want = 2 * (d * d + d) + dense_count((d, 5, 3)) + (d + 3) * 1 + 1
  assert n_params(params) == want
  _, low = model_and_params("dcn", num_cross=2, deep=(5, 3), low_rank=3)
  assert n_params(low) == want - 2 * (d * d) + 2 * (2 * d * 3)  # each W: d*d -> U (3 x d) + V (d x 3)


def test_mlp_parameter_count():
  model, params = model_and_params("mlp", hidden=(5, 3))
  d = 4 * D
  assert n_params(params) == dense_count((d, 5, 3, 1))


def test_get_model_errors_name_config_key():
  with pytest.raises(ValueError, match=r"cascade\.rank\.model: unknown model 'nope'") as e:
    get_model("nope", {}, config_key="cascade.rank.model")
  for name in MODELS:
    assert repr(name) in str(e.value)
  with pytest.raises(ValueError, match=r"cascade\.rank\.model_kwargs.*'dcn'.*\['bogus'\]"):
    get_model("dcn", {"num_cross": 1, "bogus": 3}, config_key="cascade.rank.model")
  m = get_model("mlp", {"hidden": (2,)}, module_name="stage_x")
  assert m.name == "stage_x" and m.hidden == (2,)


# ---------------------------------------------------------------- cascade

def make_cascade(shared):
  stages = tuple(StageSpec(n, m, k, model_kwargs=tuple(sorted(KWARGS[m].items())))
                 for n, m, k in [("retrieval", "two_tower", 4), ("prerank", "mlp", 3), ("rank", "dcn", 2)])
  cascade = Cascade(stages=stages, features=FEATURES, embedding=EmbeddingConfig(dim=D, shared=shared))
  return cascade, cascade.init(jax.random.key(4), *batch())


@pytest.mark.parametrize("shared", [True, False])
def test_cascade_call_stacks_stage_scores(shared):
  cascade, params = make_cascade(shared)
  user, items = batch()
  output = cascade.apply(params, user, items)
  out = output.scores
  assert out.shape == (3, 2, 5) and output.aux == {}  # no stage here has auxiliary outputs
  per_stage = [cascade.apply(params, user, items, s, method=Cascade.score_stage) for s in range(3)]
  np.testing.assert_allclose(out, jnp.stack(per_stage), rtol=1e-6, atol=1e-7)
  assert cascade.ks == (4, 3, 2)


@pytest.mark.parametrize("shared", [True, False])
def test_cascade_param_collections(shared):
  cascade, params = make_cascade(shared)
  top = set(params["params"])
  stages = {"stage_retrieval", "stage_prerank", "stage_rank"}
  emb = {"embedding"} if shared else {"embedding_retrieval", "embedding_prerank", "embedding_rank"}
  assert top == stages | emb
  for k in emb:  # each embedding collection holds the full set of tables
    assert set(params["params"][k]) == {"user_id", "item_id", "category"}


@pytest.mark.parametrize("shared", [True, False])
def test_stage_param_names_are_exactly_what_a_stage_reads(shared):
  cascade, params = make_cascade(shared)
  user, items = batch()
  for s in range(3):
    names = stage_param_names(cascade, s)
    assert set(names) <= set(params["params"]) and len(names) == 2
    full = cascade.apply(params, user, items, s, method=Cascade.score_stage)
    only = {"params": {k: params["params"][k] for k in names}}
    np.testing.assert_array_equal(cascade.apply(only, user, items, s, method=Cascade.score_stage), full)
    for drop in names:  # every named collection is needed
      partial = {"params": {k: params["params"][k] for k in names if k != drop}}
      with pytest.raises(ScopeParamNotFoundError, match=f'"/{drop}'):
        cascade.apply(partial, user, items, s, method=Cascade.score_stage)


def test_shared_embedding_serves_every_stage():
  # With shared tables, changing the one 'embedding' collection moves every stage's scores.
  cascade, params = make_cascade(True)
  user, items = batch()
  base = cascade.apply(params, user, items).scores
  p2 = jax.tree.map(lambda x: x, params)
  p2["params"]["embedding"] = jax.tree.map(lambda t: t * 2.0, params["params"]["embedding"])
  moved = cascade.apply(p2, user, items).scores
  for s in range(3):
    assert not np.allclose(moved[s], base[s])
