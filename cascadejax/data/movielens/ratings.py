"""GroupLens MovieLens files -> checked NumPy arrays (the input of `movielens.cascade`).

Files are read from `config.data.dir` (default: `../shared/data/movielens-1m` beside the project
root when it exists). The data's licence forbids redistribution, so nothing is ever copied into the
repository; download the sets from https://grouplens.org/datasets/movielens/.

| file | layout |
|---|---|
| `u.data` (100K) | `user_id<TAB>item_id<TAB>rating<TAB>timestamp` |
| `ratings.dat[.gz]`, `ratings-partial.dat[.gz]` (1M) | `UserID::MovieID::Rating::Timestamp` |
| `interactions.csv[.gz]` | header naming `user_id` and `movie_id` (or `item_id`); optional `rating`, `timestamp` |
| `users.dat` / `u.user` (optional) | `UserID::Gender::Age::Occupation::Zip` / `id\\|age\\|gender\\|occupation\\|zip` |
| `movies.dat` / `u.item` (optional, latin-1) | `MovieID::Title (Year)::G1\\|G2` / `id\\|title\\|date\\|video date\\|url\\|19 genre flags` |

`config.data.interactions = "auto"` takes the first of `INTERACTION_FILES` present in the directory.
Every row counts as one implicit positive (user, item) interaction.

Bad input raises `ValueError` naming the file, the 1-based line ("row") and the column: a missing
field, a value that is not an integer (ids, timestamps) or not a finite number (ratings; NaN is
refused), an id <= 0 (MovieLens ids start at 1), a user or movie absent from `users.dat`/`movies.dat`
when those exist, a side-file id listed twice, an empty file, a truncated or corrupt gzip stream.
Documented filters instead drop rows and log (and return in `MovieLens.counts`) how many:
  * `config.data.duplicates`: "error" (default) refuses a repeated (user, item) pair, naming both
    rows; "merge" keeps each pair's first row in file order (`counts["duplicates_merged"]`).
  * `config.data.min_rating` > 0 drops rated rows below it (`counts["below_min_rating"]`).
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
from absl import logging

from cascadejax.data.movielens import files
from cascadejax.data.movielens.files import DOWNLOAD

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the project root
DEFAULT_DIR = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "movielens-1m"))
INTERACTION_FILES = ("ratings.dat", "ratings.dat.gz", "u.data", "interactions.csv.gz", "interactions.csv",
                     "ratings-partial.dat.gz", "ratings-partial.dat")
USER_FILES, ITEM_FILES = ("users.dat", "u.user"), ("movies.dat", "u.item")
# u.user gives ages in years; bucket them like users.dat's codes (under 18, 18-24, ..., 56+).
AGE_CODES = np.array([1, 18, 25, 35, 45, 50, 56])
CSV_COLUMNS = {"user_id": ("user_id", "userId", "UserID"), "movie_id": ("movie_id", "movieId", "item_id", "MovieID"),
               "rating": ("rating", "Rating"), "timestamp": ("timestamp", "Timestamp")}


@dataclasses.dataclass(frozen=True)
class MovieLens:
  """Interactions with dense 0-based user and item indices, and categorical side features.

  Attributes:
    user, item: `[E]` int64 dense indices into `user_ids` / `item_ids`, in file order.
    timestamp: `[E]` int64 seconds, or None when the file has none.
    user_ids, item_ids: `[U]`, `[I]` the original ids, sorted.
    user_features, item_features: name -> `[U]` / `[I]` int32 codes in `1 .. vocab[name] - 1`.
    vocab: feature name -> table size, code 0 (padding) included.
    files: every file read.
    counts: rows read, users, items, and the rows each documented filter dropped.
  """

  user: np.ndarray
  item: np.ndarray
  timestamp: np.ndarray | None
  user_ids: np.ndarray
  item_ids: np.ndarray
  user_features: dict[str, np.ndarray]
  item_features: dict[str, np.ndarray]
  vocab: dict[str, int]
  files: tuple[str, ...]
  counts: dict[str, int]


def resolve_dir(directory: str) -> str:
  """`directory`, or the shared default when empty; raises a clear error when it does not exist."""
  path = directory or DEFAULT_DIR
  if not os.path.isdir(path):
    raise ValueError(
        f"config.data.dir: MovieLens directory {path!r} not found. Download MovieLens 100K or 1M from "
        f"{DOWNLOAD}, unpack it anywhere outside the repository (the licence forbids redistribution) "
        "and pass --config.data.dir=/path/to/ml-1m")
  return path


def source_files(directory: str, interactions: str = "auto") -> dict[str, str | None]:
  """Paths of the interaction file and the optional user and item files of `directory`."""
  listing = set(os.listdir(directory))
  if interactions == "auto":
    found = [f for f in INTERACTION_FILES if f in listing]
    if not found:
      raise ValueError(f"config.data.interactions: none of {INTERACTION_FILES} in {directory!r} "
                       f"(it holds {sorted(listing)}); download MovieLens from {DOWNLOAD}")
    interactions = found[0]
  elif interactions not in listing:
    raise ValueError(f"config.data.interactions: {interactions!r} is not in {directory!r} (it holds {sorted(listing)})")
  pick = lambda names: next((os.path.join(directory, f) for f in names if f in listing), None)
  genre = os.path.join(directory, "u.genre") if "u.genre" in listing else None
  return {"interactions": os.path.join(directory, interactions), "users": pick(USER_FILES),
          "items": pick(ITEM_FILES), "genres": genre}


def read_interactions(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, int]:
  """(user ids, item ids, ratings or None, timestamps or None, line number of the first data row)."""
  lines = files.read_lines(path)
  name = os.path.basename(path)
  if ".csv" in name:
    header = [h.strip() for h in lines[0].split(",")]
    pos = {key: next((header.index(a) for a in aliases if a in header), None) for key, aliases in CSV_COLUMNS.items()}
    for key in ("user_id", "movie_id"):
      if pos[key] is None:
        raise ValueError(f"{path}: row 1 (header): missing column {CSV_COLUMNS[key][0]!r} "
                         f"(accepted names {CSV_COLUMNS[key]}), header is {header}")
    if len(lines) < 2:
      raise ValueError(f"{path}: empty file (a header and no rows)")
    fields, first = files.split_fields(lines[1:], path, ",", tuple(header), 2), 2
  else:
    sep = "\t" if name.startswith("u.data") else "::"
    pos = {"user_id": 0, "movie_id": 1, "rating": 2, "timestamp": 3}
    fields, first = files.split_fields(lines, path, sep, tuple(pos)), 1
  get = lambda key, kind: None if pos[key] is None else files.column(fields, pos[key], path, key, first, kind)
  return get("user_id", "id"), get("movie_id", "id"), get("rating", "float"), get("timestamp", "int"), first


def _codes(values: list[str]) -> tuple[np.ndarray, int]:
  """Categorical strings -> codes 1..V (sorted order) and the table size V + 1."""
  vocab, codes = np.unique(np.asarray(values, dtype=object).astype(str), return_inverse=True)
  return (codes + 1).astype(np.int32), len(vocab) + 1


def read_users(path: str) -> tuple[np.ndarray, dict[str, list[str]]]:
  """User ids and their raw categorical fields (gender, age group, occupation)."""
  lines = files.read_lines(path)
  if os.path.basename(path) == "u.user":
    fields = files.split_fields(lines, path, "|", ("user_id", "age", "gender", "occupation", "zip"))
    age = AGE_CODES[np.searchsorted(AGE_CODES, files.column(fields, 1, path, "age", kind="int"), side="right") - 1]
    cols = {"age": [str(a) for a in np.maximum(age, 1)], "gender": [f[2] for f in fields],
            "occupation": [f[3] for f in fields]}
  else:
    fields = files.split_fields(lines, path, "::", ("user_id", "gender", "age", "occupation", "zip"))
    cols = {"gender": [f[1] for f in fields], "age": [str(v) for v in files.column(fields, 2, path, "age", kind="int")],
            "occupation": [str(v) for v in files.column(fields, 3, path, "occupation", kind="int")]}
  ids = files.column(fields, 0, path, "user_id")
  files.unique_ids(ids, path, "user_id")
  for name, values in cols.items():
    empty = [i for i, v in enumerate(values) if not v.strip()]
    if empty:
      raise ValueError(f"{path}: row {empty[0] + 1}, column {name!r}: empty value")
  return ids, cols


def read_items(path: str, genre_path: str | None = None) -> tuple[np.ndarray, dict[str, list[str]]]:
  """Movie ids and their raw categorical fields: first listed genre and release year ("unknown" if absent)."""
  lines = files.read_lines(path)
  if os.path.basename(path) == "u.item":
    fields = files.split_fields(lines, path, "|", ("movie_id", "title", "release_date", "video_date", "url")
                          + tuple(f"genre_{j}" for j in range(19)))
    names = [f"genre_{j}" for j in range(19)]
    if genre_path:
      pairs = [line.rsplit("|", 1) for line in files.read_lines(genre_path) if line.strip()]
      names = [p[0] for p in sorted(pairs, key=lambda p: int(p[1]))]
    flags = np.stack([files.column(fields, 5 + j, path, f"genre_{j}", kind="int") for j in range(19)], 1)
    if (flags > 1).any():
      row, j = np.argwhere(flags > 1)[0]
      raise ValueError(f"{path}: row {row + 1}, column 'genre_{j}': genre flags must be 0 or 1, got {flags[row, j]}")
    genre = [names[int(np.argmax(f))] if f.any() else "unknown" for f in flags]
    year = [f[2].strip()[-4:] if f[2].strip() else "unknown" for f in fields]
  else:
    fields = []
    for i, line in enumerate(lines):  # titles may hold "::"; the id is first and the genres last
      movie, _, rest = line.partition("::")
      title, sep, genres = rest.rpartition("::")
      if not sep:
        raise ValueError(f"{path}: row {i + 1}: missing column {'title' if not rest else 'genres'!r} "
                         f"(expected movie_id::title::genres), got {line!r}")
      fields.append([movie, title, genres])
    genre = [f[2].split("|")[0].strip() for f in fields]
    empty = [i for i, g in enumerate(genre) if not g]
    if empty:
      raise ValueError(f"{path}: row {empty[0] + 1}, column 'genres': empty value")
    year = [m.group(1) if (m := re.search(r"\((\d{4})\)\s*$", f[1])) else "unknown" for f in fields]
  ids = files.column(fields, 0, path, "movie_id")
  files.unique_ids(ids, path, "movie_id")
  return ids, {"genre": genre, "year": year}


def _first_missing(ids: np.ndarray, known: np.ndarray, path: str, name: str, side_path: str, first_row: int) -> None:
  missing = ~np.isin(ids, known)
  if missing.any():
    i = int(np.argmax(missing))
    raise ValueError(f"{path}: row {first_row + i}, column {name!r}: id {ids[i]} is not in {side_path} "
                     f"({int(missing.sum())} rows refer to unknown ids): out of vocabulary")


def read(directory: str, interactions: str = "auto", *, duplicates: str = "error",
         min_rating: float = 0.0) -> MovieLens:
  """Reads and checks a MovieLens directory (see the module docstring for the rules)."""
  sources = source_files(directory, interactions)
  path = sources["interactions"]
  users, items, rating, timestamp, first = read_interactions(path)
  counts = {"rows": len(users)}
  keep = np.ones(len(users), bool)
  if min_rating > 0:
    if rating is None:
      raise ValueError(f"config.data.min_rating={min_rating}: {path} has no rating column")
    keep &= rating >= min_rating
    counts["below_min_rating"] = int((~keep).sum())
  key = users * (int(items.max()) + 1) + items
  _, first_index = np.unique(key, return_index=True)
  repeated = np.ones(len(key), bool)
  repeated[first_index] = False
  if repeated.any():
    if duplicates == "error":
      i = int(np.argmax(repeated))
      r0 = int(np.argmax(key == key[i]))
      raise ValueError(f"{path}: row {first + i}: (user_id {users[i]}, movie_id {items[i]}) repeats row {first + r0} "
                       f"({int(repeated.sum())} repeated rows); set config.data.duplicates='merge' to keep "
                       "each pair's first row")
    counts["duplicates_merged"] = int((repeated & keep).sum())
    keep &= ~repeated
  for name, dropped in counts.items():
    if name != "rows" and dropped:
      logging.warning("%s: dropped %d of %d rows (%s)", path, dropped, len(users), name)

  side = {}
  for side_name, col, ids in (("users", "user_id", users), ("items", "movie_id", items)):
    if sources[side_name] is None:
      logging.warning("%s: no %s file in %s; no %s side features", path, side_name, directory, side_name)
      continue
    table_ids, cols = (read_users(sources["users"]) if side_name == "users"
                       else read_items(sources["items"], sources["genres"]))
    _first_missing(ids, table_ids, path, col, sources[side_name], first)
    side[side_name] = (table_ids, cols)

  users, items = users[keep], items[keep]
  user_ids, user = np.unique(users, return_inverse=True)
  item_ids, item = np.unique(items, return_inverse=True)
  vocab, feats = {}, {"users": {}, "items": {}}
  for side_name, dense in (("users", user_ids), ("items", item_ids)):
    if side_name in side:
      table_ids, cols = side[side_name]
      order = np.argsort(table_ids)
      rows = order[np.searchsorted(table_ids, dense, sorter=order)]
      for name, values in cols.items():
        feats[side_name][name], vocab[name] = _codes([values[r] for r in rows])
  counts.update(users=len(user_ids), items=len(item_ids), interactions=int(keep.sum()))
  return MovieLens(user=user.astype(np.int64), item=item.astype(np.int64),
                   timestamp=None if timestamp is None else timestamp[keep], user_ids=user_ids, item_ids=item_ids,
                   user_features=feats["users"], item_features=feats["items"], vocab=vocab,
                   files=tuple(f for f in sources.values() if f), counts=counts)
