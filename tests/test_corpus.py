"""cascadejax.corpus: blocked exact / approximate top-k over the corpus against a brute-force NumPy
top-k (ties included: embeddings are small integers, so scores are exact and tie often), sharded over
1, 2 and 8 forced CPU devices, and the retrieval metrics against NumPy."""

import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cascadejax.corpus import (approx_top_k, auto_group_size, exact_top_k, pad_corpus, retrieval_hits,
                               retrieval_ndcg, retrieval_recall, sharded_top_k)
from tests.conftest import ROOT, cpu_devices_env


def brute_top_k(queries, items, k, where=None):
  """NumPy: every score, items ordered by (score desc, index asc), invalid items dropped, -inf / -1 slots."""
  q = np.asarray(queries, np.float64).reshape(-1, np.shape(queries)[-1])
  scores = q @ np.asarray(items, np.float64).T
  n = scores.shape[1]
  valid = np.ones(n, bool) if where is None else np.asarray(where, bool)
  out_s = np.full((len(q), k), -np.inf)
  out_i = np.full((len(q), k), -1)
  for b in range(len(q)):
    order = np.lexsort((np.arange(n), -scores[b]))
    order = order[valid[order]][:k]
    out_s[b, :len(order)], out_i[b, :len(order)] = scores[b, order], order
  lead = np.shape(queries)[:-1]
  return out_s.reshape(*lead, k), out_i.reshape(*lead, k)


def int_corpus(n, d=3, b=5, seed=0, spread=2):
  """Small-integer embeddings: exact float32 scores with many ties."""
  rng = np.random.default_rng(seed)
  return (rng.integers(-spread, spread + 1, (b, d)).astype(np.float32),
          rng.integers(-spread, spread + 1, (n, d)).astype(np.float32))


def check_equal(got, want):
  np.testing.assert_array_equal(np.asarray(got[1]), want[1])
  np.testing.assert_array_equal(np.asarray(got[0]), want[0].astype(np.float32))


# ---------------------------------------------------------------------------------- one device

CASES = [  # (num_items, k, chunk_size, group_size)
    (40, 3, 64, 1),       # one padded chunk
    (40, 60, 64, 8),      # k beyond the corpus: -inf / -1 slots
    (256, 5, 64, 4),      # whole chunks
    (1000, 7, 64, 4),     # a last chunk that overlaps the one before
    (1000, 7, 64, 1),
    (1000, 7, 128, None),
    (333, 5, 100, 5),     # a group size that is not a power of two
    (997, 50, 256, 16),
    (5, 1, 1, 1),         # chunks of one item
]


@pytest.mark.parametrize("n,k,chunk,group", CASES)
@pytest.mark.parametrize("masked", [False, True])
def test_exact_top_k_equals_brute_force(n, k, chunk, group, masked):
  q, items = int_corpus(n, seed=n + k)
  where = np.random.default_rng(n).random(n) < 0.7 if masked else None
  check_equal(exact_top_k(q, items, k, where=where, chunk_size=chunk, group_size=group),
              brute_top_k(q, items, k, where))


def test_every_item_tied():
  """All scores equal: the k lowest indices, in order, whatever the chunks and groups."""
  q, items = np.ones((2, 3), np.float32), np.ones((300, 3), np.float32)
  for chunk, group in ((64, 8), (64, 1), (100, 4)):
    _, index = exact_top_k(q, items, 20, chunk_size=chunk, group_size=group)
    np.testing.assert_array_equal(index, np.broadcast_to(np.arange(20), (2, 20)))


def test_adversarial_order():
  """Scores rising along the corpus (every chunk replaces the kept groups) and a planted tie across
  a chunk boundary."""
  items = np.arange(500, dtype=np.float32)[:, None]
  items[[63, 64, 65]] = 1000.0
  q = np.ones((1, 1), np.float32)
  for group in (1, 4, 8):
    check_equal(exact_top_k(q, items, 10, chunk_size=64, group_size=group), brute_top_k(q, items, 10))


def test_float_scores_and_batch_axes():
  rng = np.random.default_rng(3)
  q = rng.normal(size=(2, 3, 8)).astype(np.float32)
  items = rng.normal(size=(700, 8)).astype(np.float32)
  scores, index = exact_top_k(q, items, 9, chunk_size=128)
  want_s, want_i = brute_top_k(q, items, 9)
  assert scores.shape == index.shape == (2, 3, 9) and index.dtype == jnp.int32
  np.testing.assert_allclose(scores, want_s, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(index, want_i)  # continuous scores: no ties


def test_masks_and_bfloat16():
  q, items = int_corpus(300, seed=7)
  none = np.zeros(300, bool)
  scores, index = exact_top_k(q, items, 4, where=none, chunk_size=64)
  assert np.all(index == -1) and np.all(np.isneginf(scores))
  few = none.copy()
  few[[3, 200]] = True
  check_equal(exact_top_k(q, items, 4, where=few, chunk_size=64), brute_top_k(q, items, 4, few))
  s, i = exact_top_k(jnp.asarray(q, jnp.bfloat16), jnp.asarray(items, jnp.bfloat16), 6, chunk_size=64)
  assert s.dtype == jnp.float32
  check_equal((s, i), brute_top_k(q, items, 6))  # small integers are exact in bfloat16


def test_jit_and_vmap():
  q, items = int_corpus(300, b=6, seed=2)
  want = brute_top_k(q, items, 5)
  check_equal(jax.jit(lambda q, v: exact_top_k(q, v, 5, chunk_size=64))(q, items), want)
  got = jax.vmap(lambda q: exact_top_k(q, items, 5, chunk_size=64))(q.reshape(2, 3, 3))
  check_equal((got[0].reshape(6, 5), got[1].reshape(6, 5)), want)


@pytest.mark.parametrize("n,k,chunk", [(1000, 7, 64), (40, 60, 64), (333, 5, 100)])
def test_approx_top_k_is_exact_on_cpu(n, k, chunk):
  q, items = int_corpus(n, seed=1)
  where = np.random.default_rng(1).random(n) < 0.8
  check_equal(approx_top_k(q, items, k, where=where, chunk_size=chunk, recall_target=0.9),
              brute_top_k(q, items, k, where))


def test_memory_stays_bounded():
  """The compiled program's temporaries stay far below one [B, num_items] score matrix."""
  b, n, d, chunk = 16, 1 << 17, 4, 1024
  q = jax.ShapeDtypeStruct((b, d), jnp.float32)
  items = jax.ShapeDtypeStruct((n, d), jnp.float32)
  compiled = jax.jit(lambda q, v: exact_top_k(q, v, 10, chunk_size=chunk)).lower(q, items).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  assert temp < b * n * 4 / 8, f"{temp} bytes of temporaries against {b * n * 4} for the full score matrix"


def test_auto_group_size():
  assert auto_group_size(32768, 100) == 16
  assert auto_group_size(64, 60) == 1
  assert auto_group_size(32768, 100, num_items=500) == 2
  assert auto_group_size(96, 1) == 8  # sqrt(96) < 16
  assert auto_group_size(96 * 3, 1) == 16
  assert auto_group_size(40, 1) == 4  # 8 does not divide 40
  for chunk in (100, 4096, 30000):
    assert chunk % auto_group_size(chunk, 3) == 0


@pytest.mark.parametrize("call,message", [
    (lambda q, v: exact_top_k(q, v, 0), "k must be a positive int"),
    (lambda q, v: exact_top_k(q, v, 2.0), "k must be a positive int"),
    (lambda q, v: exact_top_k(q, v[:, :2], 2), "queries must be"),
    (lambda q, v: exact_top_k(q, v[0], 2), "items must be"),
    (lambda q, v: exact_top_k(q, v[:0], 2), "empty"),
    (lambda q, v: exact_top_k(q, v, 2, where=np.ones(3, bool)), "where must be"),
    (lambda q, v: exact_top_k(q, v, 2, chunk_size=0), "chunk_size"),
    (lambda q, v: exact_top_k(q, v, 2, chunk_size=64, group_size=5), "group_size"),
    (lambda q, v: approx_top_k(q, v, 2, recall_target=0.0), "recall_target"),
    (lambda q, v: approx_top_k(q, v, -1), "k must be"),
])
def test_bad_input_raises(call, message):
  q, items = int_corpus(50)
  with pytest.raises(ValueError, match=message):
    call(q, items)


# ---------------------------------------------------------------------------------- sharded

def _meshes():
  """Every mesh layout the visible devices allow: (mesh, item_axes, query_axis)."""
  devices = np.asarray(jax.devices())
  out = [(Mesh(devices, ("model",)), "model", None)]
  if len(devices) >= 2 and len(devices) % 2 == 0:
    grid = devices.reshape(2, -1)
    out += [(Mesh(grid, ("data", "model")), "model", "data"),
            (Mesh(grid, ("data", "model")), ("data", "model"), None)]
  return out


def test_sharded_top_k_equals_brute_force():
  """On this process's devices (1 here; 2 and 8 in the children below): every layout, exact and
  approximate, with masks and padding, equals the brute force and the one-device result."""
  expected = int(os.environ.get("CORPUS_TEST_DEVICES", "1"))
  assert jax.device_count() == expected, f"expected {expected} devices, got {jax.device_count()}"
  for n, k, chunk in ((1000, 7, 64), (64, 30, 16), (203, 5, 32)):
    q, items = int_corpus(n, b=4, seed=n)
    where = np.random.default_rng(k).random(n) < 0.75
    want = brute_top_k(q, items, k, where)
    for mesh, item_axes, query_axis in _meshes():
      shards = math.prod(mesh.shape[a] for a in ((item_axes,) if isinstance(item_axes, str) else item_axes))
      v, w = pad_corpus(jnp.asarray(items), jnp.asarray(where), shards)
      v = jax.device_put(v, NamedSharding(mesh, P(item_axes)))
      w = jax.device_put(w, NamedSharding(mesh, P(item_axes)))
      for approximate in (False, True):
        got = sharded_top_k(q, v, k, mesh=mesh, item_axes=item_axes, query_axis=query_axis, where=w,
                            chunk_size=chunk, approximate=approximate)
        check_equal(got, want)
      one = exact_top_k(q, items, k, where=where, chunk_size=chunk)
      np.testing.assert_array_equal(got[1], one[1])


def test_sharded_bad_input_raises():
  q, items = int_corpus(51)
  mesh = Mesh(np.asarray(jax.devices()[:1]), ("model",))
  with pytest.raises(ValueError, match="not in the mesh"):
    sharded_top_k(q, items, 3, mesh=mesh, item_axes="items")
  with pytest.raises(ValueError, match="must not be one of"):
    sharded_top_k(q, items, 3, mesh=mesh, item_axes="model", query_axis="model")
  with pytest.raises(ValueError, match="k must be"):
    sharded_top_k(q, items, 0, mesh=mesh, item_axes="model")
  with pytest.raises(ValueError, match="multiple"):
    pad_corpus(items, None, 0)


@pytest.mark.parametrize("devices", [2, 8])
def test_sharded_on_forced_cpu_devices(devices):
  """Runs `test_sharded_top_k_equals_brute_force` in a child process with `devices` CPU devices."""
  env = {**cpu_devices_env(devices), "CORPUS_TEST_DEVICES": str(devices)}
  test = os.path.join(ROOT, "tests", "test_corpus.py") + "::test_sharded_top_k_equals_brute_force"
  done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=900)
  assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout[-4000:] + done.stderr[-2000:]


# ---------------------------------------------------------------------------------- metrics

def brute_metrics(retrieved, targets, where, gains, topn):
  """NumPy recall@topn and NDCG@topn per request (the textbook formulas, loops)."""
  recall, ndcg = [], []
  for r, t, w, g in zip(retrieved, targets, where, gains):
    truth = {int(i): float(x) for i, x, ok in zip(t, g, w) if ok}
    top = [int(i) for i in r[:topn]]
    recall.append(sum(i in top for i in truth) / max(len(truth), 1))
    dcg = sum(truth.get(i, 0.0) / np.log2(rank + 2) for rank, i in enumerate(top) if i >= 0)
    ideal = sum(x / np.log2(rank + 2) for rank, x in enumerate(sorted(truth.values(), reverse=True)[:topn]))
    ndcg.append(dcg / ideal if ideal > 0 else 0.0)
  return np.asarray(recall), np.asarray(ndcg)


def _requests(seed=0, b=6, k0=8, g=5, corpus=30):
  rng = np.random.default_rng(seed)
  retrieved = np.stack([rng.permutation(corpus)[:k0] for _ in range(b)])
  retrieved[0, -3:] = -1  # fewer than K0 items retrieved
  targets = np.stack([rng.permutation(corpus)[:g] for _ in range(b)])
  sure = retrieved[1, [0, 4, 7]]  # some sure hits, the targets staying distinct
  targets[1] = np.concatenate([sure, [i for i in rng.permutation(corpus) if i not in sure][:g - 3]])
  where = rng.random((b, g)) < 0.8
  where[2] = False  # a request without ground truth
  gains = rng.integers(0, 4, (b, g)).astype(np.float32)
  return retrieved, targets, where, gains


@pytest.mark.parametrize("topn", [None, 1, 3, 8])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_retrieval_metrics_equal_brute_force(topn, seed):
  retrieved, targets, where, gains = _requests(seed)
  want_r, want_n = brute_metrics(retrieved, targets, where, gains, topn or retrieved.shape[1])
  got_r = retrieval_recall(retrieved, targets, where=where, topn=topn, reduce_fn=None)
  got_n = retrieval_ndcg(retrieved, targets, where=where, gains=gains, topn=topn, reduce_fn=None)
  np.testing.assert_allclose(got_r, want_r, rtol=1e-6)
  np.testing.assert_allclose(got_n, want_n, rtol=1e-5, atol=1e-7)
  assert all(len(set(t)) == len(t) for t in targets)
  lists = where.any(-1)
  np.testing.assert_allclose(retrieval_recall(retrieved, targets, where=where, topn=topn), want_r[lists].mean(),
                             rtol=1e-6)
  np.testing.assert_allclose(retrieval_ndcg(retrieved, targets, where=where, gains=gains, topn=topn),
                             want_n[lists].mean(), rtol=1e-5)
  binary = retrieval_ndcg(retrieved, targets, where=where, topn=topn, reduce_fn=None)
  np.testing.assert_allclose(binary, brute_metrics(retrieved, targets, where, np.ones_like(gains),
                                                   topn or retrieved.shape[1])[1], rtol=1e-5, atol=1e-7)
  hits = retrieval_hits(retrieved, targets, where=where)
  want_hits = [[i >= 0 and i in set(t[w]) for i in r] for r, t, w in zip(retrieved, targets, where)]
  np.testing.assert_array_equal(hits, want_hits)


def test_metrics_of_retrieval_from_a_corpus():
  """End to end on a small corpus: retrieve, then score the requests' planted ground truth."""
  q, items = int_corpus(400, d=4, b=8, seed=5, spread=3)
  _, index = exact_top_k(q, items, 20, chunk_size=64)
  _, best = brute_top_k(q, items, 40)
  targets = best[:, ::4][:, :6]  # ground truth: every 4th of each request's true top 40
  where = np.ones(targets.shape, bool)
  want_r, want_n = brute_metrics(np.asarray(index), targets, where, np.ones(targets.shape), 20)
  np.testing.assert_allclose(retrieval_recall(index, targets, where=where, reduce_fn=None), want_r, rtol=1e-6)
  np.testing.assert_allclose(retrieval_ndcg(index, targets, where=where, reduce_fn=None), want_n, rtol=1e-5)
  assert 0 < want_r.mean() < 1


def test_metrics_jit_and_empty():
  retrieved, targets, where, gains = _requests(4)
  f = jax.jit(lambda r, t, w, g: (retrieval_recall(r, t, where=w, topn=3), retrieval_ndcg(r, t, where=w, gains=g)))
  r, n = f(retrieved, targets, where, gains)
  assert np.isfinite(r) and np.isfinite(n)
  none = np.zeros_like(where)
  assert float(retrieval_recall(retrieved, targets, where=none)) == 0.0
  assert float(retrieval_ndcg(retrieved, targets, where=none, gains=gains)) == 0.0


@pytest.mark.parametrize("call,message", [
    (lambda r, t, w: retrieval_recall(r, t[:3], where=w[:3]), "leading"),
    (lambda r, t, w: retrieval_recall(r, t, where=w[:, :2]), "where must have"),
    (lambda r, t, w: retrieval_ndcg(r, t, where=w, gains=w[:, :1]), "gains must have"),
    (lambda r, t, w: retrieval_recall(r, t, where=w, topn=0), "topn"),
    (lambda r, t, w: retrieval_ndcg(r, t, where=w, topn=9), "topn"),
])
def test_metrics_bad_input_raises(call, message):
  retrieved, targets, where, _ = _requests()
  with pytest.raises(ValueError, match=message):
    call(retrieved, targets, where)
