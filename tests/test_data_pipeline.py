"""The grain pipeline: epochs cover every request once, positions restore exactly, eval pads."""

import numpy as np

from cascadejax.data import pipeline, synthetic
from tests.conftest import tiny_config


def _train():
  return synthetic.load(tiny_config().data, 2).splits["train"]  # 256 requests


def test_each_epoch_visits_every_request_once_and_reshuffles():
  split = _train()
  ds = pipeline.train_dataset(split, global_batch_size=32, seed=0)
  ids = lambda t: np.concatenate([ds[i].user["user_id"] * 1000 + ds[i].items["item_id"][:, 0] for i in t])
  whole = split.user["user_id"] * 1000 + split.items["item_id"][:, 0]
  epoch0, epoch1 = ids(range(8)), ids(range(8, 16))
  np.testing.assert_array_equal(np.sort(epoch0), np.sort(whole))
  np.testing.assert_array_equal(np.sort(epoch1), np.sort(whole))
  assert not np.array_equal(epoch0, epoch1)


def test_batches_cross_epoch_boundaries_without_dropping():
  split = _train()
  ds = pipeline.train_dataset(split, global_batch_size=96, seed=3)  # 256 is not a multiple of 96
  seen = np.concatenate([ds[i].label[:, 0] for i in range(8)])  # 768 = 3 epochs exactly
  np.testing.assert_allclose(np.sort(seen), np.sort(np.tile(split.label[:, 0], 3)))


def test_epoch_order_rows_span_epochs_as_concatenated_permutations():
  order = pipeline.EpochOrder(5, seed=7)
  endless = np.concatenate([np.random.default_rng([7, e]).permutation(5) for e in range(4)])
  for start, stop in [(0, 5), (3, 17), (10, 11), (4, 20)]:
    np.testing.assert_array_equal(order.rows(start, stop), endless[start:stop])
  with np.testing.assert_raises_regex(ValueError, "no requests"):
    pipeline.EpochOrder(0, seed=0)


def test_iterator_state_restores_the_same_batches():
  ds = pipeline.train_dataset(_train(), global_batch_size=16, seed=1)
  it = pipeline.train_iterator(ds)
  for _ in range(5):
    next(it)
  state = it.get_state()
  expected = [next(it).label for _ in range(3)]
  it2 = pipeline.train_iterator(ds)
  it2.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(it2).label, want)


def test_processes_split_each_global_batch():
  split = _train()
  full = pipeline.train_dataset(split, global_batch_size=16, seed=2)
  parts = [pipeline.train_dataset(split, global_batch_size=16, seed=2, process_index=p, process_count=4)
           for p in range(4)]
  for i in range(3):
    np.testing.assert_array_equal(np.concatenate([p[i].label for p in parts]), full[i].label)


def test_eval_batches_cover_the_split_in_order_and_pad():
  split = synthetic.load(tiny_config().data, 2).splits["test"]  # 48 requests
  batches = list(pipeline.eval_batches(split, 20))
  assert [b.batch_size for b in batches] == [20, 20, 20]
  labels = np.concatenate([b.label for b in batches])
  np.testing.assert_array_equal(labels[:48], split.label)
  assert not np.concatenate([b.mask for b in batches])[48:].any()
