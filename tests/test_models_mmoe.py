"""MMoE: task logits, score combination, parameter count, and per-task losses (cascadejax.multitask)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cascadejax import multitask
from cascadejax.cascade import Cascade, StageSpec
from cascadejax.data.schema import CascadeBatch
from cascadejax.embedding.collection import EmbeddingConfig
from cascadejax.losses.ranking import sigmoid_bce_loss
from cascadejax.models import get_model
from cascadejax.models.mmoe import Experts
from tests.test_models import D, FEATURES, batch, dense_count, embed, embed_params, n_params

KW = dict(tasks=("click", "like"), num_experts=3, expert=(5,), tower=(2,))


def setup(**kwargs):
  emb = embed(embed_params(), *batch())
  model = get_model("mmoe", {**KW, **kwargs})
  return model, model.init(jax.random.key(0), emb), emb


def test_task_logits_and_combinations():
  model, params, emb = setup(weights=(0.75, 0.25))
  logits = np.asarray(model.apply(params, emb, method=model.task_logits))
  assert logits.shape == (2, 2, 5) and not np.allclose(logits[0], logits[1])
  np.testing.assert_allclose(model.apply(params, emb), 0.75 * logits[0] + 0.25 * logits[1], rtol=1e-5, atol=1e-6)
  prob = get_model("mmoe", {**KW, "weights": (0.75, 0.25), "combine": "prob"})
  m = 0.75 / (1 + np.exp(-logits[0])) + 0.25 / (1 + np.exp(-logits[1]))
  np.testing.assert_allclose(prob.apply(params, emb), np.log(m / (1 - m)), rtol=1e-4, atol=1e-5)
  equal = get_model("mmoe", KW)  # default weights: 1 / T each
  np.testing.assert_allclose(equal.apply(params, emb), logits.mean(0), rtol=1e-5, atol=1e-6)


def test_experts_are_independent_mlps():
  x = np.random.default_rng(0).normal(size=(2, 3, 6)).astype(np.float32)
  experts = Experts(3, (5, 4))
  p = experts.init(jax.random.key(0), x)["params"]
  p = jax.tree.map(lambda a: a + 0.1, p)  # non-zero biases
  out = np.asarray(experts.apply({"params": p}, x))
  assert out.shape == (2, 3, 3, 4)
  for e in range(3):
    h = np.maximum(x @ np.asarray(p["kernel_0"][e]) + np.asarray(p["bias_0"][e]), 0)
    h = np.maximum(h @ np.asarray(p["kernel_1"][e]) + np.asarray(p["bias_1"][e]), 0)
    np.testing.assert_allclose(out[..., e, :], h, rtol=1e-5, atol=1e-5)


def test_parameter_count():
  params = jax.eval_shape(get_model("mmoe", KW).init, jax.random.key(0), embed(embed_params(), *batch()))
  d, e, t = 4 * D, 3, 2
  assert n_params(params) == e * dense_count((d, 5)) + t * (d * e + e) + t * dense_count((5, 2, 1))


def test_bad_options_fail_at_construction():
  with pytest.raises(ValueError, match="weights needs one weight per task"):
    get_model("mmoe", {**KW, "weights": (1.0,)})
  with pytest.raises(ValueError, match="combine='prob'"):
    get_model("mmoe", {**KW, "weights": (1.0, -1.0), "combine": "prob"})


def tiny_batch():
  user, items = batch()
  stage = jnp.array([[2, 2, 1, 0, 0], [2, 0, 2, 2, 1]])
  mask = jnp.array([[True, True, True, True, False], [True] * 5])
  feedback = {"click": jnp.array([[1.0, 0, 0, 0, 0], [1, 0, 0, 1, 0]]),
              "like": jnp.array([[1.0, 0, 0, 0, 0], [0, 0, 1, 0, 0]])}
  return CascadeBatch(user=user, items=items, stage=stage, label=stage.astype(jnp.float32), mask=mask,
                      feedback=feedback)


def cascade():
  stages = (StageSpec("retrieval", "two_tower", 4, (("hidden", (4,)), ("out_dim", 3))),
            StageSpec("rank", "mmoe", 2, tuple(sorted(KW.items()))))
  return Cascade(stages=stages, features=FEATURES, embedding=EmbeddingConfig(dim=D))


def test_cascade_outputs_and_task_losses_on_exposed_candidates():
  c, b = cascade(), tiny_batch()
  params = c.init(jax.random.key(0), b.user, b.items)["params"]
  out = c.apply({"params": params}, b.user, b.items)
  scores, tasks = out.scores, out.aux
  np.testing.assert_array_equal(scores[1], c.apply({"params": params}, b.user, b.items, 1, method=Cascade.score_stage))
  assert set(tasks) == {"rank"} and set(tasks["rank"]) == {"click", "like"}
  np.testing.assert_allclose(scores[1], 0.5 * (tasks["rank"]["click"] + tasks["rank"]["like"]), rtol=1e-5, atol=1e-6)
  total, terms = multitask.loss(tasks, b, num_stages=2, weights={"like": 2.0})
  exposed = np.asarray(b.mask & (b.stage >= 2))
  for t in ("click", "like"):
    l, y = np.asarray(tasks["rank"][t])[exposed], np.asarray(b.feedback[t])[exposed]
    want = np.mean(np.logaddexp(0, l) - l * y)
    np.testing.assert_allclose(terms[f"task/rank/{t}"], want, rtol=1e-5)
  np.testing.assert_allclose(total, terms["task/rank/click"] + 2 * terms["task/rank/like"], rtol=1e-6)
  with pytest.raises(ValueError, match=r"tasks \['like'\] have no feedback"):
    multitask.task_losses({"like": scores[1]}, b.replace(feedback={"click": b.feedback["click"]}), num_stages=2)


def test_training_with_task_losses_fits_the_feedback():
  # A custom step: the cascade's stage loss plus per-task BCE, as docs/models.md describes.
  c, b = cascade(), tiny_batch()
  params = c.init(jax.random.key(0), b.user, b.items)["params"]
  tx = optax.adam(0.05)
  opt = tx.init(params)

  def loss_fn(p):
    out = c.apply({"params": p}, b.user, b.items, train=True)
    scores, tasks = out.scores, out.aux
    stage_loss = sum(sigmoid_bce_loss(scores[s], b.stage > s, where=b.mask) for s in range(2))
    task_loss, terms = multitask.loss(tasks, b, num_stages=2)
    return stage_loss + task_loss, terms

  @jax.jit
  def step(p, opt):
    (_, terms), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
    updates, opt = tx.update(g, opt, p)
    return optax.apply_updates(p, updates), opt, terms

  first = None
  for _ in range(60):
    params, opt, terms = step(params, opt)
    first = first or {k: float(v) for k, v in terms.items()}
  for k, v in terms.items():
    assert float(v) < 0.2 * first[k], (k, first[k], float(v))


def test_synthetic_multi_task_feedback_is_opt_in_and_leaves_the_default_data_alone():
  from cascadejax.data import synthetic
  from tests.conftest import tiny_config
  plain = synthetic.load(tiny_config().data, 2)
  cfg = tiny_config().data
  cfg.feedback = ("click", "like", "long_view")
  extra = synthetic.load(cfg, 2)
  for name, split in extra.splits.items():
    base = plain.splits[name]
    assert set(base.feedback) == {"click"} and set(split.feedback) == {"click", "like", "long_view"}
    for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(split.replace(feedback={"click": split.feedback["click"]}))):
      np.testing.assert_array_equal(a, b)  # every other field bit-identical
    for t in ("like", "long_view"):  # only on clicks, and neither always nor never
      assert (split.feedback[t] <= split.feedback["click"]).all()
      assert 0 < split.feedback[t].sum() < split.feedback["click"].sum()
  cfg.feedback = ("click", "share")
  with pytest.raises(ValueError, match=r"config\.data\.feedback"):
    synthetic.load(cfg, 2)
