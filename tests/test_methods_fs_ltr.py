"""`fs_ranknet` and `fs_lambdaloss`: the eq. 9 relabeling by hand, the losses by brute force, the
per-level subsampling, masking, training under jit and config errors."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from cascadejax import metric_writer, trainer
from cascadejax.data.schema import CascadeBatch
from cascadejax.methods import get_method
from cascadejax.methods.fs_ltr import FSLambdaLoss, FSRankNet, sample_per_level
from tests.conftest import tiny_config

NAMES = ("retrieval", "prerank", "rank")


# The FS-LTR paper's form (click-lifted levels, LambdaRank on NDCG gains, one mean over all pairs);
# the defaults (the LCRON authors' baselines) are tested by hand below and against their numbers in
# tests/test_reference_fidelity.py.
PAPER = {"fs_ranknet": dict(top_level="feedback", pair_normaliser="all_pairs"),
         "fs_lambdaloss": dict(top_level="feedback", labels="levels", scheme="lambdarank", topn=None)}


def _method(cls, num_stages=2, published=False, **options):
  ks = (5, 3, 2) if num_stages == 3 else (4, 2)
  options = options if published else {**PAPER[cls.name], **options}
  return cls(options, stage_names=NAMES[:num_stages], ks=ks, gt_num=2)


def _batch(num_stages=2, b=3, n=8, seed=0, empty_last=False, feedback=True):
  rng = np.random.default_rng(seed)
  mask = rng.random((b, n)) < 0.8
  mask[:, :3] = True
  if empty_last:
    mask[-1] = False
  stage = rng.integers(0, num_stages + 1, (b, n))
  stage[:, 0] = num_stages   # every list has exposed items, some of them clicked
  stage[:, 1] = num_stages
  click = (rng.random((b, n)) < 0.5).astype(np.float32)
  batch = CascadeBatch(user={}, items={}, stage=jnp.asarray(stage, jnp.int32),
                       label=jnp.asarray(rng.normal(size=(b, n)), jnp.float32), mask=jnp.asarray(mask),
                       feedback={"click": jnp.asarray(click)} if feedback else None)
  scores = jnp.asarray(rng.normal(size=(num_stages, b, n)) * 2, jnp.float32)
  return scores, batch


def _np_levels(stage, click, num_stages):
  """eq. 9 written out: the logged stage, one more for an exposed and clicked candidate."""
  level = np.array(stage, np.int64)
  if click is not None:
    level[(level == num_stages) & (np.asarray(click) > 0)] = num_stages + 1
  return level


def _np_ranknet(scores, labels, where):
  """Mean over the batch's pairs (label_i > label_j, both in `where`) of log(1 + exp(-(s_i - s_j)))."""
  total, pairs = 0.0, 0
  for b in range(scores.shape[0]):
    for i, j in itertools.permutations(np.flatnonzero(where[b]), 2):
      if labels[b, i] > labels[b, j]:
        total += np.log1p(np.exp(-(scores[b, i] - scores[b, j])))
        pairs += 1
  return total / max(pairs, 1)


def _np_lambdarank(scores, labels, where):
  """LambdaRank by hand: RankNet pairs weighted by n |G_i - G_j| |D(r_i) - D(r_j)|, NDCG gains."""
  n = scores.shape[-1]
  total, pairs = 0.0, 0
  for b in range(scores.shape[0]):
    valid = np.flatnonzero(where[b])
    gain = 2.0 ** labels[b] - 1.0
    ideal = sorted(gain[valid], reverse=True)
    max_dcg = sum(g / np.log2(2 + r) for r, g in enumerate(ideal))
    gain = gain / (max_dcg if max_dcg > 0 else 1.0)
    order = sorted(valid, key=lambda i: (-scores[b, i], i))
    rank = {i: r + 1 for r, i in enumerate(order)}
    disc = lambda i: 1.0 / np.log2(1 + rank[i])
    for i, j in itertools.permutations(valid, 2):
      if labels[b, i] > labels[b, j]:
        weight = n * abs(gain[i] - gain[j]) * abs(disc(i) - disc(j))
        total += weight * np.log1p(np.exp(-(scores[b, i] - scores[b, j])))
        pairs += 1
  return total / max(pairs, 1)


def test_relabeling_table_by_hand():
  # stage:  0  0  1  2  2     (S = 2: exposed = 2)
  # click:  0  1  1  0  1     a click only counts on an exposed candidate
  # level:  0  0  1  2  3
  stage = jnp.array([[0, 0, 1, 2, 2]], jnp.int32)
  click = jnp.array([[0, 1, 1, 0, 1]], jnp.float32)
  batch = CascadeBatch(user={}, items={}, stage=stage, label=jnp.zeros((1, 5)), mask=jnp.ones((1, 5), bool),
                       feedback={"click": click, "like": jnp.zeros((1, 5))})
  assert _method(FSRankNet).levels_of(batch).tolist() == [[0, 0, 1, 2, 3]]
  assert _method(FSRankNet, feedback=None).levels_of(batch).tolist() == [[0, 0, 1, 2, 2]]
  assert _method(FSRankNet, feedback="like").levels_of(batch).tolist() == [[0, 0, 1, 2, 2]]
  assert _method(FSRankNet).levels_of(batch.replace(feedback=None)).tolist() == [[0, 0, 1, 2, 2]]
  # Three stages: exposed is 3, exposed and clicked 4.
  three = batch.replace(stage=jnp.array([[0, 1, 2, 3, 3]], jnp.int32))
  assert _method(FSRankNet, 3).levels_of(three).tolist() == [[0, 1, 2, 3, 4]]
  # The default lifts the ground truth (the top gt_num = 2 labels) instead, if it was exposed:
  # slot 1 is ground truth but was dropped by stage 1, slot 4 was clicked but is not ground truth.
  graded = batch.replace(label=jnp.array([[0.0, 5.0, 1.0, 4.0, 3.0]]))
  assert _method(FSRankNet, published=True).levels_of(graded).tolist() == [[0, 0, 1, 3, 2]]
  message = r"config.method.fs_ranknet.feedback: the batch has no feedback 'long_view'"
  with pytest.raises(ValueError, match=message):
    _method(FSRankNet, feedback="long_view").levels_of(batch)


@pytest.mark.parametrize("num_stages", [2, 3])
@pytest.mark.parametrize("cls", [FSRankNet, FSLambdaLoss])
def test_loss_matches_brute_force(cls, num_stages):
  scores, batch = _batch(num_stages, empty_last=True)
  method = _method(cls, num_stages)
  total, aux = method.loss({}, scores, batch, rng=jax.random.key(0))
  s, mask = np.asarray(scores, np.float64), np.asarray(batch.mask)
  labels = _np_levels(batch.stage, batch.feedback["click"], num_stages).astype(np.float64)  # z_l = l
  reference = _np_ranknet if cls is FSRankNet else _np_lambdarank
  want = [reference(s[i], labels, mask) for i in range(num_stages)]
  np.testing.assert_allclose([float(aux[f"loss/{n}"]) for n in NAMES[:num_stages]], want, rtol=1e-5)
  np.testing.assert_allclose(float(total), sum(want), rtol=1e-5)


def test_custom_levels_and_train_on():
  scores, batch = _batch(3, seed=1)
  z = (0.0, 0.5, 0.5, 2.0, 6.0)   # stages 1 and 2 tied: no pair between their candidates
  method = _method(FSRankNet, 3, levels=z, train_on=(0, 2, 3))
  _, aux = method.loss({}, scores, batch, rng=jax.random.key(0))
  s, mask = np.asarray(scores, np.float64), np.asarray(batch.mask)
  level = _np_levels(batch.stage, batch.feedback["click"], 3)
  labels = np.asarray(z)[level]
  for i, j in enumerate((0, 2, 3)):
    want = _np_ranknet(s[i], labels, mask & (level >= j))
    np.testing.assert_allclose(float(aux[f"loss/{NAMES[i]}"]), want, rtol=1e-5)
  # "reached": stage s (0-based) sees the candidates with stage >= s.
  _, reached = _method(FSRankNet, 3, train_on="reached").loss({}, scores, batch, rng=jax.random.key(0))
  for i in range(3):
    np.testing.assert_allclose(float(reached[f"loss/{NAMES[i]}"]),
                               _np_ranknet(s[i], level.astype(float), mask & (level >= i)), rtol=1e-5)


def _np_per_level_ranknet(scores, levels, where):
  """Sum over levels l >= 1 of the mean RankNet loss over the pairs whose better item has level l."""
  total = 0.0
  for l in range(1, int(levels.max()) + 1):
    loss, pairs = 0.0, 0
    for b in range(scores.shape[0]):
      for i, j in itertools.permutations(np.flatnonzero(where[b]), 2):
        if levels[b, i] == l and levels[b, j] < l:
          loss += np.log1p(np.exp(-(scores[b, i] - scores[b, j])))
          pairs += 1
    total += loss / max(pairs, 1)
  return total


def _np_smooth_lambdaloss(scores, labels, where, topn=30, a=0.8):
  """The LCRON authors' FS-LambdaLoss written out: label gains, natural logs, every ordered pair."""
  per_list = []
  for b in range(scores.shape[0]):
    valid = np.flatnonzero(where[b])
    if not len(valid):
      continue
    v = labels[b]
    ideal = sorted(v[valid], reverse=True)
    g = v / sum(x / np.log(2 + r) for r, x in enumerate(ideal))
    order = sorted(valid, key=lambda i: (-scores[b, i], i))
    rank = {i: r + 1 for r, i in enumerate(order)}
    disc = lambda r: 1.0 / np.log(1 + r) if r <= topn else 0.0
    total = 0.0
    for i, j in itertools.permutations(valid, 2):
      d = abs(rank[i] - rank[j])
      u = abs(1 / np.log(1 + d) - 1 / np.log(2 + d)) if min(rank[i], rank[j]) <= topn else 0.0
      w = abs(g[i] - g[j]) * ((1 - a) * u + a * abs(disc(rank[i]) - disc(rank[j])))
      x = scores[b, i] - scores[b, j]
      total += w * (np.logaddexp(0, x) - x * float(v[i] > v[j]))
    per_list.append(total)
  return float(np.mean(per_list))


@pytest.mark.parametrize("num_stages", [2, 3])
def test_published_defaults_by_hand(num_stages):
  scores, batch = _batch(num_stages, empty_last=True, seed=3)
  batch = batch.replace(label=jnp.round(batch.label))   # ties inside levels and among labels
  s, mask, label = np.asarray(scores, np.float64), np.asarray(batch.mask), np.asarray(batch.label, np.float64)
  rank = _method(FSRankNet, num_stages, published=True)
  levels = np.asarray(rank.levels_of(batch))
  _, aux = rank.loss({}, scores, batch, rng=jax.random.key(0))
  lam = _method(FSLambdaLoss, num_stages, published=True, topn=3)
  _, lam_aux = lam.loss({}, scores, batch, rng=jax.random.key(0))
  for i, name in enumerate(NAMES[:num_stages]):
    np.testing.assert_allclose(float(aux[f"loss/{name}"]), _np_per_level_ranknet(s[i], levels, mask), rtol=1e-5)
    parts = sum(float(aux[f"loss/{name}/level{l}"]) for l in range(1, num_stages + 2))
    np.testing.assert_allclose(parts, float(aux[f"loss/{name}"]), rtol=1e-6)
    positive = np.where(mask, label - label[mask].min(), 0.0)   # gains must be >= 0
    got = _method(FSLambdaLoss, num_stages, published=True, topn=3).loss(
        {}, scores, batch.replace(label=jnp.asarray(positive, jnp.float32)), rng=jax.random.key(0))[1]
    np.testing.assert_allclose(float(got[f"loss/{name}"]), _np_smooth_lambdaloss(s[i], positive, mask, topn=3),
                               rtol=1e-5)
  assert np.isfinite(float(lam_aux["loss/retrieval"]))


def test_lambdaloss_schemes_are_the_library_losses():
  from cascadejax.losses import lambdaloss
  scores, batch = _batch()
  labels = jnp.asarray(_np_levels(batch.stage, batch.feedback["click"], 2), jnp.float32)
  for scheme in ("ndcg2", "ndcg2++"):
    method = _method(FSLambdaLoss, scheme=scheme, topn=3, mu=5.0)
    _, aux = method.loss({}, scores, batch, rng=jax.random.key(0))
    want = lambdaloss(scores[1], labels, where=batch.mask, topn=3, scheme=scheme, mu=5.0)
    np.testing.assert_allclose(aux["loss/prerank"], want, rtol=1e-6)


def test_sample_per_level_keeps_counts_and_is_uniform():
  level = jnp.array([[0, 0, 0, 0, 1, 1, 2, 3, 0, 1]] * 2, jnp.int32)
  where = jnp.array([[1, 1, 1, 1, 1, 1, 1, 1, 0, 0], [1, 0, 1, 1, 1, 1, 1, 0, 1, 1]], bool)
  counts = (2, 1, 0, -1)
  keys = jax.random.split(jax.random.key(0), 4000)
  draws = np.asarray(jax.vmap(lambda k: sample_per_level(k, level, where, counts))(keys))
  assert not (draws & ~np.asarray(where)).any()   # a subset of `where`
  lv, wh = np.asarray(level), np.asarray(where)
  for l, c in enumerate(counts):
    have = (wh & (lv == l)).sum(-1)
    kept = (draws & (lv == l)).sum(-1)
    assert (kept == (have if c < 0 else np.minimum(have, c))).all(), l
  # Each of the 4 valid level-0 candidates of row 0 is kept with probability 2/4.
  np.testing.assert_allclose(draws[:, 0, :4].mean(0), 0.5, atol=0.04)
  assert len({tuple(d[0]) for d in draws[:50]}) > 1   # the draw changes with the key


def test_subsampled_loss_is_ranknet_on_the_drawn_candidates():
  scores, batch = _batch(seed=2)
  counts = (1, 1, 2, 1)
  method = _method(FSRankNet, sample_per_level=counts)
  rng = jax.random.key(7)
  _, aux = method.loss({}, scores, batch, rng=rng)
  level = method.levels_of(batch)
  s = np.asarray(scores, np.float64)
  for i, name in enumerate(NAMES[:2]):
    drawn = np.asarray(sample_per_level(jax.random.fold_in(rng, i), level, batch.mask, counts))
    assert (drawn.sum(-1) < np.asarray(batch.mask).sum(-1)).all()   # something was dropped
    np.testing.assert_allclose(float(aux[f"loss/{name}"]), _np_ranknet(s[i], np.asarray(level, float), drawn),
                               rtol=1e-5)
  _, other = method.loss({}, scores, batch, rng=jax.random.key(8))
  assert float(other["loss/retrieval"]) != float(aux["loss/retrieval"])
  # Counts that cover every level change nothing.
  full = _method(FSRankNet, sample_per_level=(99, 99, 99, -1)).loss({}, scores, batch, rng=rng)[0]
  np.testing.assert_allclose(full, _method(FSRankNet).loss({}, scores, batch, rng=rng)[0], rtol=1e-6)


@pytest.mark.parametrize("cls", [FSRankNet, FSLambdaLoss])
def test_padding_gets_no_gradient_and_empty_lists_are_finite(cls):
  scores, batch = _batch(empty_last=False)
  method = _method(cls, sample_per_level=(3, 3, 3, -1))

  def f(s, b):
    return method.loss({}, s, b, rng=jax.random.key(0))[0]

  value, grad = jax.value_and_grad(f)(scores, batch)
  pad = ~np.asarray(batch.mask)
  assert pad.any()
  noisy = batch.replace(stage=jnp.where(pad, 2, batch.stage), label=jnp.where(pad, 9.0, batch.label))
  np.testing.assert_allclose(f(jnp.where(pad, 50.0, scores), noisy), value, rtol=1e-6)
  assert np.all(np.asarray(grad)[:, pad] == 0) and np.all(np.isfinite(grad))
  assert np.abs(np.asarray(grad)[:, ~pad]).sum() > 0
  empty = batch.replace(mask=jnp.zeros_like(batch.mask))
  value, grad = jax.value_and_grad(f)(scores, empty)
  assert value == 0 and np.all(np.asarray(grad) == 0)


# Each method at one depth: the two share the relabeling and the per-stage loop (suite time).
@pytest.mark.parametrize("name,num_stages", [("fs_ranknet", 3), ("fs_lambdaloss", 2)])
def test_trains_under_jit(name, num_stages, tmp_path):
  c = tiny_config(num_stages)
  c.method.name = name
  c.method[name] = ConfigDict(dict(sample_per_level=(4, 4, 4, 4, 4)[:num_stages + 2]))
  c.train.steps, c.train.log_every, c.train.eval_every = 6, 1, 0
  final = trainer.train_and_evaluate(c, str(tmp_path))
  assert 0 <= final["recall_e2e"] <= 1
  train = [r for r in metric_writer.read(str(tmp_path)) if r.get("split") == "train"]
  assert len(train) == 6 and all(np.isfinite(r["loss"]) for r in train)
  assert {f"loss/{n}" for n in NAMES[:num_stages]} <= set(train[0])


@pytest.mark.parametrize("name,options,message", [
    ("fs_ranknet", dict(levels=(0, 1, 2)), r"config.method.fs_ranknet.levels: expected 4 values"),
    ("fs_ranknet", dict(levels=(0, 2, 1, 3)), r"config.method.fs_ranknet.levels must be non-negative and"),
    ("fs_ranknet", dict(levels="paper"), r"config.method.fs_ranknet.levels: expected 4 values"),
    ("fs_ranknet", dict(train_on="exposed"), r"config.method.fs_ranknet.train_on must be 'all', 'reached'"),
    ("fs_ranknet", dict(train_on=(0, 5)), r"config.method.fs_ranknet.train_on: each minimum level"),
    ("fs_ranknet", dict(sample_per_level=(1, 2)), r"config.method.fs_ranknet.sample_per_level: expected 4"),
    ("fs_ranknet", dict(sample_per_level=(1, 2, 1.5, 1)), r"fs_ranknet.sample_per_level: expected integers"),
    ("fs_ranknet", dict(feedback=3), r"config.method.fs_ranknet.feedback must be"),
    ("fs_ranknet", dict(scheme="ndcg2"), r"config.method.fs_ranknet: unknown option\(s\) \['scheme'\]"),
    ("fs_lambdaloss", dict(scheme="ndcg1"), r"config.method.fs_lambdaloss.scheme must be one of"),
    ("fs_lambdaloss", dict(topn=0), r"config.method.fs_lambdaloss.topn must be None or an int >= 1"),
    ("fs_lambdaloss", dict(mu=-1.0), r"config.method.fs_lambdaloss.mu must be a number >= 0"),
    ("fs_lambdaloss", dict(smooth_fraction=1.5), r"fs_lambdaloss.smooth_fraction must be in \[0, 1\]"),
    ("fs_lambdaloss", dict(labels="z"), r"config.method.fs_lambdaloss.labels must be 'label' or 'levels'"),
    ("fs_ranknet", dict(top_level="click"), r"config.method.fs_ranknet.top_level must be 'ground_truth'"),
    ("fs_ranknet", dict(pair_normaliser="x"), r"config.method.fs_ranknet.pair_normaliser must be"),
])
def test_bad_options_name_the_config_key(name, options, message):
  c = tiny_config()
  c.method.name = name
  c.method[name] = ConfigDict(options)
  with pytest.raises(ValueError, match=message):
    get_method(c)
