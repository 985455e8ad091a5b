"""MovieLens: every GroupLens file format, bad input named by file/row/column, the cascade simulation's
protocol (segments, teachers, labels) checked by hand, the cache, and a few training steps."""

import gzip
import os

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict

from cascadejax import data as data_lib, metric_writer, trainer
from cascadejax.data import movielens
from configs import movielens_three_stage, movielens_two_stage

NUM_USERS, NUM_MOVIES = 12, 40
GENRES = ("Action", "Comedy", "Drama")


def _ratings():
  """(user, movie, rating, timestamp) rows, users 1..12, every movie 1..40 rated; user 1 rates 35."""
  rng = np.random.default_rng(0)
  rows = []
  for u in range(1, NUM_USERS + 1):
    movies = np.arange(1, 36) if u == 1 else rng.choice(NUM_MOVIES, size=8 + u % 7, replace=False) + 1
    if u == 2:
      movies = np.union1d(movies, np.arange(36, 41))
    for t, m in zip(rng.permutation(len(movies)), rng.permutation(movies)):
      rows.append((u, int(m), int(rng.integers(1, 6)), 10_000 * u + int(t)))
  return rows


def write_1m(d, rows=None, ratings_name="ratings.dat", side=True):
  """The 1M layout: `::` ratings (gzip if the name ends in .gz), users.dat, movies.dat (latin-1)."""
  os.makedirs(d, exist_ok=True)
  text = "".join(f"{u}::{m}::{r}::{t}\n" for u, m, r, t in (rows or _ratings()))
  opener = gzip.open if ratings_name.endswith(".gz") else open
  with opener(os.path.join(d, ratings_name), "wt") as f:
    f.write(text)
  if side:
    with open(os.path.join(d, "users.dat"), "w") as f:
      f.writelines(f"{u}::{'FM'[u % 2]}::{(1, 18, 25)[u % 3]}::{u % 4}::0{u}000\n" for u in range(1, NUM_USERS + 1))
    with open(os.path.join(d, "movies.dat"), "w", encoding="latin-1") as f:
      f.writelines(f"{m}::Film {m}: Caf\xe9 ({1990 + m % 3})::{GENRES[m % 3]}|Drama\n" for m in range(1, NUM_MOVIES))
      f.write(f"{NUM_MOVIES}::Untitled::Comedy\n")  # no year: its own "unknown" code
  return str(d)


def data_cfg(d, num_stages=2, **overrides) -> ConfigDict:
  ks, noise, dims = {2: ((6, 3), (0.5, 0.3), (2, 4)), 3: ((8, 5, 3), (0.5, 0.5, 0.3), (2, 3, 4))}[num_stages]
  c = movielens_two_stage.data_config(ks=ks, noise=noise, dims=dims)
  c.update(dict(dir=str(d), cache_dir="", list_size=12, positives_per_request=3, requests_per_user=3,
                history_len=6))
  c.update(overrides)
  return c


# ---- reading ----
def test_every_file_format_reads_the_same_interactions(tmp_path):
  rows = _ratings()
  a = movielens.read(write_1m(tmp_path / "a"))
  b = movielens.read(write_1m(tmp_path / "b", ratings_name="ratings-partial.dat.gz"))
  os.makedirs(tmp_path / "c")
  with gzip.open(tmp_path / "c" / "interactions.csv.gz", "wt") as f:
    f.write("user_id,movie_id\n" + "".join(f"{u},{m}\n" for u, m, _, _ in rows))
  c = movielens.read(str(tmp_path / "c"))
  d = tmp_path / "d"
  os.makedirs(d)
  (d / "u.data").write_text("".join(f"{u}\t{m}\t{r}\t{t}\n" for u, m, r, t in rows))
  (d / "u.user").write_text("".join(f"{u}|{10 + 5 * u}|{'FM'[u % 2]}|job{u % 4}|0\n" for u in range(1, 13)))
  flags = lambda m: "|".join("1" if j == 1 + m % 3 else "0" for j in range(19))
  (d / "u.item").write_text("".join(f"{m}|Film {m}|01-Jan-{1990 + m % 3}||url|{flags(m)}\n" for m in range(1, 41)))
  (d / "u.genre").write_text("unknown|0\n" + "".join(f"{g}|{j + 1}\n" for j, g in enumerate(GENRES)) +
                             "".join(f"g{j}|{j}\n" for j in range(4, 19)))
  e = movielens.read(str(d))
  want = sorted((u - 1, m - 1) for u, m, _, _ in rows)
  for ml in (a, b, c, e):
    assert sorted(zip(ml.user.tolist(), ml.item.tolist())) == want
    assert ml.counts == {"rows": len(rows), "users": NUM_USERS, "items": NUM_MOVIES, "interactions": len(rows)}
  np.testing.assert_array_equal(a.timestamp, [t for *_, t in rows])
  assert c.timestamp is None
  # Side features: codes follow the sorted category names; genre is the first listed genre.
  for ml in (a, e):
    g = ml.item_features["genre"]
    assert [sorted(GENRES)[c - 1] for c in g[:3]] == [GENRES[m % 3] for m in (1, 2, 3)]
    assert ml.user_features["gender"][0] == 2 and ml.user_features["gender"][1] == 1  # F=1, M=2; user 1 is M
  assert a.vocab["year"] == 5 and a.item_features["year"][-1] == 4  # 1990-1992, "unknown" sorts last
  assert e.user_features["age"].max() < e.vocab["age"]


def _replace_line(path, row, text):
  with open(path, encoding="latin-1") as f:
    lines = f.read().splitlines(keepends=True)
  lines[row - 1] = text + "\n"
  with open(path, "w", encoding="latin-1") as f:
    f.writelines(lines)


BAD_RATINGS = [
    ("3::7::4", r"ratings.dat: row 5: missing column 'timestamp'"),
    ("3::x7::4::100", r"ratings.dat: row 5, column 'movie_id': 'x7' is not an integer"),
    ("3::7::nan::100", r"ratings.dat: row 5, column 'rating': 'nan' is not a finite number"),
    ("nan::7::4::100", r"ratings.dat: row 5, column 'user_id': 'nan' is not an integer"),
    ("3::7::4.5::1e9", r"ratings.dat: row 5, column 'timestamp': '1e9' is not an integer"),
    ("-3::7::4::100", r"ratings.dat: row 5, column 'user_id': '-3' is not a positive id"),
    ("3::0::4::100", r"ratings.dat: row 5, column 'movie_id': '0' is not a positive id"),
    ("3::7::4::-100", r"ratings.dat: row 5, column 'timestamp': '-100' is negative"),
    ("3::99::4::100", r"ratings.dat: row 5, column 'movie_id': id 99 is not in .*movies.dat .*out of vocabulary"),
    ("77::7::4::100", r"ratings.dat: row 5, column 'user_id': id 77 is not in .*users.dat"),
    ("3::7::4::100::9", r"ratings.dat: row 5: 5 fields where 4 are expected"),
]


@pytest.mark.parametrize("line,message", BAD_RATINGS, ids=[b[0] for b in BAD_RATINGS])
def test_bad_ratings_row_names_file_row_and_column(tmp_path, line, message):
  d = write_1m(tmp_path)
  _replace_line(os.path.join(d, "ratings.dat"), 5, line)
  with pytest.raises(ValueError, match=message):
    movielens.read(d)


def test_bad_side_files_and_csv_header(tmp_path):
  d = write_1m(tmp_path / "a")
  _replace_line(os.path.join(d, "users.dat"), 4, "2::M::25::3::000")
  with pytest.raises(ValueError, match=r"users.dat: row 4, column 'user_id': id 2 is listed again \(first at row 2\)"):
    movielens.read(d)
  _replace_line(os.path.join(d, "users.dat"), 4, "4::M::young::3::000")
  with pytest.raises(ValueError, match=r"users.dat: row 4, column 'age': 'young' is not an integer"):
    movielens.read(d)
  _replace_line(os.path.join(d, "users.dat"), 4, "4::M::25::3::000")
  _replace_line(os.path.join(d, "movies.dat"), 6, "6::Film six (1990)")
  with pytest.raises(ValueError, match=r"movies.dat: row 6: missing column 'genres'"):
    movielens.read(d)
  os.makedirs(tmp_path / "c")
  (tmp_path / "c" / "interactions.csv").write_text("user_id,item\n1,2\n")
  with pytest.raises(ValueError, match=r"interactions.csv: row 1 \(header\): missing column 'movie_id'"):
    movielens.read(str(tmp_path / "c"))
  (tmp_path / "c" / "interactions.csv").write_text("user_id,movie_id\n1,2\n3\n")
  with pytest.raises(ValueError, match=r"interactions.csv: row 3: missing column 'movie_id'"):
    movielens.read(str(tmp_path / "c"))


def test_empty_truncated_and_missing_files(tmp_path):
  d = write_1m(tmp_path / "a")
  open(os.path.join(d, "ratings.dat"), "w").close()
  with pytest.raises(ValueError, match=r"ratings.dat: empty file"):
    movielens.read(d)
  d = write_1m(tmp_path / "b", ratings_name="ratings-partial.dat.gz")
  path = os.path.join(d, "ratings-partial.dat.gz")
  blob = open(path, "rb").read()
  open(path, "wb").write(blob[: len(blob) // 2])
  with pytest.raises(ValueError, match=r"ratings-partial.dat.gz: truncated or corrupt gzip stream .* row \d+ onwards is missing"):
    movielens.read(d)
  with pytest.raises(ValueError, match=r"config.data.dir: MovieLens directory .*nowhere.* not found. Download .*grouplens.org"):
    movielens.resolve_dir(str(tmp_path / "nowhere"))
  with pytest.raises(ValueError, match=r"config.data.interactions: 'u.data' is not in"):
    movielens.read(d, "u.data")


def test_a_file_cut_inside_its_last_field_is_rejected_naming_the_file_and_row(tmp_path):
  """Was read as if whole: the cut timestamp (97830 for 978300760) loaded as a value."""
  rows = _ratings()
  d = write_1m(tmp_path / "a")
  path = os.path.join(d, "ratings.dat")
  text = open(path).read()
  open(path, "w").write(text[:-6])  # "...::<timestamp>\n" loses its newline and last 5 digits
  cut = text[:-6].rsplit("\n", 1)[1]
  with pytest.raises(ValueError, match=rf"ratings.dat: row {len(rows)} has no newline, so the file was cut short, "
                                       rf"possibly inside that row's last field \('{cut}'\)"):
    movielens.read(d)
  open(path, "w").write(text)
  users = os.path.join(d, "users.dat")
  text = open(users).read()
  open(users, "w").write(text.rstrip("\n"))
  with pytest.raises(ValueError, match=rf"users.dat: row {NUM_USERS} has no newline"):
    movielens.read(d)


def test_a_truncated_gzip_reports_the_complete_rows_it_holds(tmp_path):
  """Was "about 0 complete rows" for any file under 4 MB (only whole 4 MB chunks were counted)."""
  d = tmp_path / "g"
  write_1m(d, ratings_name="ratings-partial.dat.gz")
  path = str(d / "ratings-partial.dat.gz")
  rows = _ratings()
  with open(path, "wb") as raw:
    with gzip.GzipFile(fileobj=raw, mode="wb") as f:
      f.write("".join(f"{u}::{m}::{r}::{t}\n" for u, m, r, t in rows[:100]).encode())
      f.flush()  # a sync point: the bytes so far decompress to exactly the first 100 rows
      cut = raw.tell()
      f.write("".join(f"{u}::{m}::{r}::{t}\n" for u, m, r, t in rows[100:]).encode())
  blob = open(path, "rb").read()
  open(path, "wb").write(blob[:cut])
  with pytest.raises(ValueError, match=r"ratings-partial.dat.gz: truncated or corrupt gzip stream .*: it holds 100 "
                                       r"complete rows, so row 101 onwards is missing"):
    movielens.read(str(d))


def test_duplicates_error_by_default_or_merge_counted(tmp_path):
  rows = _ratings()
  d = write_1m(tmp_path, rows + [rows[3][:2] + (1, 5)])
  with pytest.raises(ValueError, match=rf"row {len(rows) + 1}: \(user_id {rows[3][0]}, movie_id {rows[3][1]}\) repeats row 4"):
    movielens.read(d)
  ml = movielens.read(d, duplicates="merge")
  assert ml.counts["duplicates_merged"] == 1 and ml.counts["interactions"] == len(rows)
  np.testing.assert_array_equal(ml.timestamp, [t for *_, t in rows])  # the first row of the pair is kept
  kept = movielens.read(d, duplicates="merge", min_rating=3)
  assert kept.counts["below_min_rating"] == sum(r < 3 for _, _, r, _ in rows) + 1  # the repeat is rated 1
  assert kept.counts["duplicates_merged"] == 0  # ... so the rating filter dropped it first
  assert kept.counts["interactions"] == sum(r >= 3 for _, _, r, _ in rows)


# ---- simulation ----
def _segments(rows, f_train=0.2, f_test=0.2):
  """user -> (past, train, test) raw movie ids, recomputed here from the protocol's definition."""
  out = {}
  for u in {r[0] for r in rows}:
    items = [m for _, m, _, _ in sorted((r for r in rows if r[0] == u), key=lambda r: r[3])]
    n = len(items)
    n_test, n_train = max(1, round(f_test * n)), max(1, round(f_train * n))
    out[u] = (items[:n - n_test - n_train], items[n - n_test - n_train:n - n_test], items[n - n_test:])
  return out


@pytest.mark.parametrize("num_stages,mode", [(2, "system"), (2, "user"), (3, "user")])
def test_simulated_logs_follow_the_protocol(tmp_path, num_stages, mode):
  rows = _ratings()
  cfg = data_cfg(write_1m(tmp_path), num_stages, label_mode=mode)
  data = data_lib.load(cfg, num_stages)  # also runs schema.validate on every split
  seg, ks = _segments(rows), cfg.production.ks
  assert len(data.request_ids["train"]) == 3 * NUM_USERS and len(data.request_ids["test"]) == NUM_USERS
  for split, b in data.splits.items():
    s = 1 if split == "train" else 2
    for r in range(b.batch_size):
      u, m = int(b.user["user_id"][r]), b.mask[r]
      cand = b.items["item_id"][r][m]
      assert len(set(cand)) == len(cand) and (b.items["item_id"][r][~m] == 0).all()
      positive = np.isin(cand, seg[u][s])
      assert 1 <= positive.sum() == min(len(seg[u][s]), 3)
      others = [i for k in range(3) if k != s for i in seg[u][k]]
      assert not np.isin(cand, others).any()  # other segments' items never enter (the three-step split)
      assert m.sum() == min(12, NUM_MOVIES - sum(map(len, seg[u])) + positive.sum())  # user 1 is padded
      hist = [i for k in range(s) for i in seg[u][k]][::-1][:6]
      np.testing.assert_array_equal(b.user["history"][r], hist + [0] * (6 - len(hist)))
      stage, label = b.stage[r][m], b.label[r][m]
      for k in range(1, num_stages + 1):  # teacher k keeps min(k_k, #valid)
        assert (stage >= k).sum() == min(ks[k - 1], m.sum())
      base = label - (num_stages + 1) * positive if mode == "user" else label
      np.testing.assert_array_equal(np.floor(base), stage)
      if mode == "user":  # every real positive above every other candidate
        assert label[positive].min() > label[~positive].max()
      np.testing.assert_array_equal(b.feedback["click"][r][m], positive & (stage == num_stages))
    assert (b.label[~b.mask] == 0).all() and (b.stage[~b.mask] == 0).all()
  assert {f.name for f in data.features} == {"user_id", "gender", "age", "occupation", "history", "item_id",
                                            "genre", "year"}


def test_users_too_short_to_split_are_dropped_and_counted(tmp_path, caplog):
  rows = _ratings() + [(NUM_USERS + 1, 5, 4, 1), (NUM_USERS + 1, 6, 4, 2)]  # 2 interactions: no past segment
  d = write_1m(tmp_path, rows)
  with open(os.path.join(d, "users.dat"), "a") as f:
    f.write(f"{NUM_USERS + 1}::F::18::1::00000\n")
  cfg = data_cfg(d, cache_dir=str(tmp_path / "cache"))
  with caplog.at_level("WARNING"):
    data = movielens.load(cfg, 2)
  assert "dropped 1 users with fewer than 3 interactions (2 interactions)" in caplog.text
  for b in data.splits.values():
    assert NUM_USERS + 1 not in set(b.user["user_id"].tolist())
  assert data.report["dropped"] == {"users_below_3_interactions": 1}
  assert data.report["counts"]["rows"] == len(rows)
  caplog.clear()
  with caplog.at_level("WARNING"):  # a cache hit reads nothing, and still says what the build dropped
    again = movielens.load(cfg, 2)
  assert again.report == data.report
  assert "built with these rows dropped by documented filters: users_below_3_interactions 1" in caplog.text


def test_deterministic_in_the_seed(tmp_path):
  cfg = data_cfg(write_1m(tmp_path))
  a, b = movielens.load(cfg, 2), movielens.load(cfg, 2)
  for x, y in zip(jax.tree.leaves(a.splits), jax.tree.leaves(b.splits)):
    np.testing.assert_array_equal(x, y)
  cfg.seed = 1
  c = movielens.load(cfg, 2)
  assert not np.array_equal(a.splits["train"].items["item_id"], c.splits["train"].items["item_id"])


def test_teacher_svd_matches_numpy_and_capacity_orders_fit():
  rng = np.random.default_rng(0)
  x = (rng.random((30, 12)) < 0.3).astype(float)
  p, q = movielens.fit_teachers(*np.nonzero(x), x.shape, 5, rng)
  u, s, vt = np.linalg.svd(x)
  np.testing.assert_allclose(np.linalg.norm(p, axis=0), s[:5], rtol=1e-4)  # |U S| columns = singular values
  np.testing.assert_allclose(p @ q.T, (u[:, :5] * s[:5]) @ vt[:5], atol=1e-4)  # the best rank-5 fit
  err = [np.linalg.norm(x - p[:, :d] @ q[:, :d].T) for d in (1, 3, 5)]
  assert err[0] > err[1] > err[2]
  # A large matrix of exact rank 3 (users of 3 tastes, each taking its own movie block) is recovered.
  taste, block = rng.integers(0, 3, 500), rng.integers(0, 3, 300)
  x = (taste[:, None] == block[None, :]).astype(float)
  p, q = movielens.fit_teachers(*np.nonzero(x), x.shape, 3, rng)
  np.testing.assert_allclose(p @ q.T, x, atol=1e-4)


def test_cache_builds_once_and_notices_changed_files(tmp_path, monkeypatch):
  d = write_1m(tmp_path / "data")
  cfg = data_cfg(d, cache_dir=str(tmp_path / "cache"))
  calls = []
  real = movielens.ratings.read  # what movielens.load calls
  monkeypatch.setattr(movielens.ratings, "read", lambda *a, **k: calls.append(1) or real(*a, **k))
  first = movielens.load(cfg, 2)
  second = movielens.load(cfg, 2)
  assert len(calls) == 1 and isinstance(second.splits["train"].label, np.memmap)
  np.testing.assert_array_equal(first.splits["test"].label, second.splits["test"].label)
  with open(os.path.join(d, "ratings.dat"), "a") as f:
    f.write("3::40::5::1\n")
  movielens.load(cfg, 2)
  cfg.label_mode = "user"
  movielens.load(cfg, 2)
  assert len(calls) == 3


CONFIG_ERRORS = [
    (dict(label_mode="users"), r"config.data.label_mode: 'users' is not one of \('system', 'user'\)"),
    (dict(production=ConfigDict(dict(ks=(6,), noise=(0.5,), dims=(2,), w_pop=0.5))),
     r"config.data.production.ks needs one value per stage \(2\)"),
    (dict(production=ConfigDict(dict(ks=(6, 7), noise=(0.5, 0.3), dims=(2, 4), w_pop=0.5))),
     r"config.data.production.ks\[1\]=7 must be in \[1, 6\)"),
    (dict(label_mode="user", positives_per_request=0), r"config.data.positives_per_request=0 must be in \[1, list_size=12\]"),
    (dict(train_fraction=0.5, test_fraction=0.5), r"config.data.train_fraction=0.5 and test_fraction=0.5"),
    (dict(duplicates="drop"), r"config.data.duplicates: 'drop'"),
]


@pytest.mark.parametrize("overrides,message", CONFIG_ERRORS, ids=[m[:40] for _, m in CONFIG_ERRORS])
def test_config_errors_name_the_key_before_reading(tmp_path, overrides, message):
  cfg = data_cfg(tmp_path / "missing", **overrides)  # no files: the check comes first
  with pytest.raises(ValueError, match=message):
    movielens.load(cfg, 2)


def test_shipped_configs_need_no_data_to_validate():
  for module, stages in ((movielens_two_stage, 2), (movielens_three_stage, 3)):
    c = module.get_config()
    movielens.check_config(c.data, stages)
    assert tuple(c.data.production.ks) == tuple(c.cascade[s].k for s in c.cascade.stages)


def test_trains_a_few_steps_end_to_end(tmp_path):
  c = movielens_two_stage.get_config()
  c.data = data_cfg(write_1m(tmp_path / "data"), label_mode="user", cache_dir=str(tmp_path / "cache"))
  c.cascade.retrieval.k, c.cascade.prerank.k, c.cascade.gt_num = 6, 3, 2
  c.cascade.retrieval.model_kwargs = ConfigDict(dict(hidden=(8,), out_dim=4))
  c.cascade.prerank.model_kwargs = ConfigDict(dict(hidden=(8,)))
  c.embedding.dim = 4
  t = c.train
  t.batch_size, t.eval_batch_size, t.steps, t.log_every, t.checkpoint_every, t.progress_bar = 8, 8, 6, 3, 3, False
  c.optimizer.warmup_steps = 2
  final = trainer.train_and_evaluate(c, str(tmp_path / "run"))
  reports = metric_writer.read(str(tmp_path / "run"))
  assert [r["step"] for r in reports if r["split"] == "train"] == [3, 6]
  assert all(np.isfinite(r["loss"]) for r in reports if r["split"] == "train")
  assert final["final"] and 0 <= final["recall_e2e"] <= 1 and 0 <= final["recall_e2e_random"] <= 1


REAL_100K = os.path.join(movielens.ROOT, "..", "shared", "data", "movielens-100k")


@pytest.mark.skipif(not os.path.exists(os.path.join(REAL_100K, "u.data")), reason="MovieLens 100K not present")
def test_real_movielens_100k():
  ml = movielens.read(REAL_100K)
  assert ml.counts == {"rows": 100_000, "users": 943, "items": 1682, "interactions": 100_000}
  cfg = data_cfg(REAL_100K, label_mode="user", list_size=50, positives_per_request=5, requests_per_user=1)
  cfg.production.ks, cfg.production.dims, cfg.production.noise = (20, 5), (8, 32), (0.0, 0.0)
  data = movielens.simulate(ml, cfg, 2)
  test = data.splits["test"]
  assert test.batch_size == 943 and test.mask.all()
  positive = test.label >= 3
  # Teacher 1 (rank 8, fit on the past 60%) keeps 20 of 50, yet about 65% of the held-out positives.
  assert (test.stage[positive] >= 1).mean() > 1.4 * (20 / 50)
