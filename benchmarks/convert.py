"""Log conversion (`cascadejax.data.logs`) against a straightforward pandas groupby/apply, side by side.

  python benchmarks/convert.py [--requests 2000000] [--candidates 10] [--baseline-requests 200000]
                               [--history 50] [--users 1000000] [--items 1000000]
                               [--row-group-rows 1000000] [--dir DIR] [--keep] [--no-big] [--no-baseline]
                               [--profile] [--json out.json]

Input: a generated log with one row per (request, candidate), written by NumPy + pyarrow (no pandas)
into one Parquet file per day (7 days, 2024-01-01 .. 2024-01-07), rows of a request contiguous, in
row groups of `--row-group-rows` rows, streamed so the generator holds one row group at a time.
Columns: `request_id`, `day` ('YYYY-MM-DD' strings), 2 user ids (`user_id`, `age`) and 6 item ids
(`item_id`, `author`, `cat1`..`cat4`; int64, Zipf-skewed, the item's attributes fixed per item),
`stage` (int 0..2, at least one stage-2 row per request), `click` (float, null where stage < 2) and
`hist` (list<int64> of `--history` item ids, the same on every row of a request). No item appears
twice in a request.

Cases, each in a fresh subprocess (so its peak RSS, VmHWM from /proc/self/status, is its own):

  * converter: `logs.load(cfg, 2)` with a fresh `cache_dir` (a full conversion: both passes, the
    store and the split arrays), train days 01..06, test day 07, N = `--candidates`, history L =
    `--history`, partition_rows 1,000,000, batch_rows 65,536;
  * pandas: `pd.read_parquet` of every file, the vocabularies by `value_counts` (the converter's
    order: count descending, then id; row 0 padding, row 1 out of vocabulary), ids mapped with
    `Index.get_indexer`, then `groupby("request_id").apply(...)` building each request's padded [N]
    item rows, stage, label (stage + click), mask, feedback and its [L] history, stacked per split.

Both run on `--baseline-requests` requests (the same files: the rows/s ratio is side by side, one
run), and the converter again on `--requests` requests (the pandas construction would take hours
there, so it is not run at that size: the ratio is the throughput ratio at the baseline size). At the
baseline size both cases also print a signature of their arrays (a hash of each request's user ids,
history and the multiset of its slots, the requests sorted): equal signatures mean the same arrays up
to the order of requests and slots. Seconds are the conversion alone (not the imports, not the
generation). `--profile` adds a cProfile of a converter run at the baseline size (top 15 cumulative).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DAYS = [str(datetime.date(2024, 1, 1) + datetime.timedelta(days=d)) for d in range(7)]
TRAIN, TEST = (DAYS[0], DAYS[5]), (DAYS[6], DAYS[6])
USER = ("user_id", "age")
ITEM = ("item_id", "author", "cat1", "cat2", "cat3", "cat4")
NUM_STAGES = 2
_M62 = np.uint64((1 << 62) - 1)


# ---------------------------------------------------------------- generation (NumPy + pyarrow only)

def _mix(x: np.ndarray) -> np.ndarray:
  """splitmix64's finaliser (uint64 -> uint64)."""
  with np.errstate(over="ignore"):
    x = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _scramble(idx: np.ndarray, salt: int) -> np.ndarray:
  """Dense indices -> sparse, positive int64 ids (a bijection for idx < 2^62 per salt)."""
  with np.errstate(over="ignore"):
    odd = np.uint64((0x9E3779B97F4A7C15 ^ (salt * 0x100000001B3)) | 1)
    return ((idx.astype(np.uint64) * odd + np.uint64(salt)) & _M62).astype(np.int64)


def _zipf(rng: np.random.Generator, shape, pool: int, a: float = 1.2) -> np.ndarray:
  return (rng.zipf(a, size=shape) - 1) % pool


def _item_columns(idx: np.ndarray) -> dict[str, np.ndarray]:
  """The 6 item id columns of item indices `idx` (attributes fixed per item)."""
  return {"item_id": _scramble(idx, 1), "author": _scramble(idx // 5, 2), "cat1": _scramble(idx % 20, 3),
          "cat2": _scramble(idx % 200, 4), "cat3": _scramble(idx % 2_000, 5), "cat4": _scramble(idx % 20_000, 6)}


def _distinct_items(rng: np.random.Generator, r: int, c: int, pool: int) -> np.ndarray:
  """[r, c] Zipf-skewed item indices, distinct within each row, in random order."""
  idx = np.sort(_zipf(rng, (r, c), pool), axis=1)
  while True:
    dup = np.zeros(idx.shape, bool)
    dup[:, 1:] = idx[:, 1:] == idx[:, :-1]
    if not dup.any():
      break
    idx[dup] = rng.integers(0, pool, int(dup.sum()))
    idx.sort(axis=1)
  return np.take_along_axis(idx, np.argsort(rng.random((r, c)), axis=1), axis=1)


def _chunk(rng: np.random.Generator, first: int, r: int, c: int, day: str, a: argparse.Namespace):
  """One record batch: requests first .. first + r - 1 of the log, c candidates each."""
  import pyarrow as pa  # noqa: PLC0415
  n = r * c
  user = _zipf(rng, r, a.users)
  items = _distinct_items(rng, r, c, a.items).ravel()
  stage = rng.choice(np.arange(3, dtype=np.int64), size=(r, c), p=[0.5, 0.3, 0.2])
  stage[np.arange(r), rng.integers(0, c, r)] = NUM_STAGES
  stage = stage.ravel()
  click = (rng.random(n) < 0.3).astype(np.float64)
  hist = _scramble(_zipf(rng, (r, a.history), a.items), 1)
  cols = {"request_id": np.repeat(_scramble(np.arange(first, first + r), 7), c),
          "day": pa.DictionaryArray.from_arrays(np.zeros(n, np.int32), pa.array([day])).cast(pa.string()),
          "user_id": np.repeat(_scramble(user, 8), c), "age": np.repeat(18 + _mix(user) % np.uint64(60), c).astype(np.int64),
          **{k: v for k, v in _item_columns(items).items()},
          "stage": stage, "click": pa.array(click, mask=stage < NUM_STAGES),
          "hist": pa.ListArray.from_arrays(np.arange(0, n * a.history + 1, a.history, dtype=np.int32),
                                           np.repeat(hist, c, axis=0).ravel())}
  return pa.RecordBatch.from_pydict({k: v if isinstance(v, pa.Array) else pa.array(v) for k, v in cols.items()})


def generate(a: argparse.Namespace) -> dict:
  """Writes the log of `a.child_requests` requests into `a.data`/cands/, one Parquet file per day."""
  import pyarrow.parquet as pq  # noqa: PLC0415
  started = time.perf_counter()
  folder = os.path.join(a.data, "cands")
  shutil.rmtree(a.data, ignore_errors=True)
  os.makedirs(folder)
  rng = np.random.default_rng(a.seed)
  total, c = a.child_requests, a.candidates
  per_chunk = max(1, a.row_group_rows // c)
  bounds = np.linspace(0, total, len(DAYS) + 1).astype(np.int64)
  for d, day in enumerate(DAYS):
    writer = None
    for lo in range(int(bounds[d]), int(bounds[d + 1]), per_chunk):
      r = min(per_chunk, int(bounds[d + 1]) - lo)
      batch = _chunk(rng, lo, r, c, day, a)
      if writer is None:
        writer = pq.ParquetWriter(os.path.join(folder, f"{day}.parquet"), batch.schema)
      writer.write_batch(batch, row_group_size=a.row_group_rows)
      del batch
    if writer is not None:
      writer.close()
  size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
  meta = {"requests": total, "candidates": c, "rows": total * c, "history": a.history, "users": a.users,
          "items": a.items, "seed": a.seed, "row_group_rows": a.row_group_rows, "bytes": size}
  with open(os.path.join(a.data, "meta.json"), "w") as f:
    json.dump(meta, f)
  return {**meta, "seconds": time.perf_counter() - started}


# ---------------------------------------------------------------- measurements (children)

def _peak_rss() -> int:
  """This process's peak resident set (VmHWM, bytes): its own, not its parent's before exec."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) * 1024
  return 0


def signature(split: dict[str, np.ndarray], chunk: int = 65_536) -> dict:
  """Order-free summary of one split's arrays: a hash of each request (its user ids, its history in
  order and the multiset of its slots, each slot hashed over every per-slot array), the request
  hashes sorted; plus counts."""
  names = sorted(split)
  n = len(split["mask"])
  bits = lambda v: v.astype(np.float64).view(np.uint64) if v.dtype.kind == "f" else v.astype(np.int64).view(np.uint64)
  hashes = []
  for lo in range(0, n, chunk):
    part = {k: np.asarray(split[k][lo:lo + chunk]) for k in names}
    slots = np.zeros(part["mask"].shape, np.uint64)
    for k in names:
      if not k.startswith("user."):
        slots = _mix(slots ^ bits(part[k]))
    h = np.zeros(len(part["mask"]), np.uint64)
    for v in [bits(part[k]).reshape(len(h), -1) for k in names if k.startswith("user.")] + [np.sort(slots, axis=1)]:
      for j in range(v.shape[1]):
        h = _mix(h ^ v[:, j])
    hashes.append(h)
  h = np.sort(np.concatenate(hashes)) if hashes else np.zeros(0, np.uint64)
  total = lambda k: float(sum(np.asarray(split[k][lo:lo + chunk], np.float64).sum() for lo in range(0, n, chunk)))
  return {"requests": int(n), "candidates": int(total("mask")), "label_sum": round(total("label"), 3),
          "hash": hashlib.sha256(h.tobytes()).hexdigest()[:16]}


def logs_config(data: str, cache: str, a: argparse.Namespace):
  from ml_collections import ConfigDict  # noqa: PLC0415
  return ConfigDict(dict(
      name="logs", seed=0, list_size=a.candidates, dir=data, files="cands", request=("request_id",), day="day",
      train_days=TRAIN, test_days=TEST, user_features=USER, item_features=ITEM, stage={"column": "stage"},
      label={"add": {"click": 1.0}}, feedback=("click",),
      history={"length": a.history, "columns": {"history": "hist"}, "tables": {"history": "item_id"}},
      cache_dir=cache, partition_rows=1_000_000, batch_rows=65_536))


def run_converter(a: argparse.Namespace) -> dict:
  from cascadejax.data import logs  # noqa: PLC0415
  cache = tempfile.mkdtemp(prefix="cache-", dir=a.data)
  rss0 = _peak_rss()
  try:
    cfg = logs_config(a.data, cache, a)
    started = time.perf_counter()
    if a.child_profile:
      import cProfile  # noqa: PLC0415
      import pstats  # noqa: PLC0415
      prof = cProfile.Profile()
      data = prof.runcall(logs.load, cfg, NUM_STAGES)
      seconds = time.perf_counter() - started
      pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(15)
    else:
      data = logs.load(cfg, NUM_STAGES)
      seconds = time.perf_counter() - started
    peak = _peak_rss()  # before the signature reads the memory-mapped splits
    out = {"seconds": seconds, "peak_rss": peak, "rss_after_imports": rss0,
           "requests_seen": data.report["conversions"][-1]["requests"], "dropped": data.report["dropped"]}
    if a.child_signature:
      out["signature"] = {}
      for name, b in data.splits.items():
        split = {f"user.{k}": v for k, v in b.user.items()} | {f"items.{k}": v for k, v in b.items.items()}
        split |= {f"feedback.{k}": v for k, v in (b.feedback or {}).items()}
        split |= {"stage": b.stage, "label": b.label, "mask": b.mask}
        out["signature"][name] = signature(split)
    return out
  finally:
    shutil.rmtree(cache, ignore_errors=True)


def pandas_arrays(data: str, a: argparse.Namespace) -> dict[str, dict[str, np.ndarray]]:
  """The straightforward construction: read with pandas, vocabularies by value_counts, one
  groupby/apply call per request building its padded rows."""
  import pandas as pd  # noqa: PLC0415
  folder = os.path.join(data, "cands")
  df = pd.concat([pd.read_parquet(os.path.join(folder, f)) for f in sorted(os.listdir(folder))], ignore_index=True)
  df = df[(df["day"] >= TRAIN[0]) & (df["day"] <= TEST[1])]
  train = (df["day"] >= TRAIN[0]) & (df["day"] <= TRAIN[1])

  def vocab(counts: pd.Series) -> pd.Index:  # count descending, then id ascending
    counts = counts.rename("count").rename_axis("value").reset_index()
    return pd.Index(counts.sort_values(["count", "value"], ascending=[False, True])["value"].to_numpy())

  def rows(index: pd.Index, values) -> np.ndarray:  # 0 padding, 1 out of vocabulary, 2 + i known
    i = index.get_indexer(values)
    return np.where(i < 0, 1, i + 2).astype(np.int32)

  hist_counts = df.loc[train].drop_duplicates("request_id")["hist"].explode().astype(np.int64).value_counts()
  for f in USER + ITEM:
    counts = df.loc[train, f].value_counts()
    if f == "item_id":
      item_index = vocab(counts.add(hist_counts, fill_value=0).astype(np.int64))
      df[f] = rows(item_index, df[f])
    else:
      df[f] = rows(vocab(counts), df[f])
  df["click"] = df["click"].fillna(0.0)
  df["label"] = df["stage"] + 1.0 * df["click"]
  n, length = a.candidates, a.history

  def one(g: pd.DataFrame):
    g = g.sort_values("stage", ascending=False, kind="stable").iloc[:n]  # exposed first, at most N
    k = len(g)

    def pad(column, dtype):
      out = np.zeros(n, dtype)
      out[:k] = g[column].to_numpy()
      return out

    hist = rows(item_index, np.asarray(g["hist"].iat[0])[-length:])
    h = np.zeros(length, np.int32)
    h[length - len(hist):] = hist
    return (g["day"].iat[0], g["user_id"].iat[0], g["age"].iat[0], h,
            {f: pad(f, np.int32) for f in ITEM}, pad("stage", np.int32), pad("label", np.float32),
            np.arange(n) < k, pad("click", np.float32))

  built = df.groupby("request_id", sort=False).apply(one, include_groups=False)
  splits = {}
  for name, (first, last) in (("train", TRAIN), ("test", TEST)):
    reqs = [r for r in built if first <= r[0] <= last]
    splits[name] = {"user.user_id": np.array([r[1] for r in reqs], np.int32),
                    "user.age": np.array([r[2] for r in reqs], np.int32),
                    "user.history": np.stack([r[3] for r in reqs]),
                    **{f"items.{f}": np.stack([r[4][f] for r in reqs]) for f in ITEM},
                    "stage": np.stack([r[5] for r in reqs]), "label": np.stack([r[6] for r in reqs]),
                    "mask": np.stack([r[7] for r in reqs]), "feedback.click": np.stack([r[8] for r in reqs])}
  return splits


def run_pandas(a: argparse.Namespace) -> dict:
  rss0 = _peak_rss()
  started = time.perf_counter()
  splits = pandas_arrays(a.data, a)
  out = {"seconds": time.perf_counter() - started, "peak_rss": _peak_rss(), "rss_after_imports": rss0}
  if a.child_signature:
    out["signature"] = {k: signature(v) for k, v in splits.items()}
  return out


# ---------------------------------------------------------------- orchestration

def child(kind: str, data: str, a: argparse.Namespace, *extra: str) -> dict:
  """Runs one case in a fresh interpreter and returns its figures (its last JSON line)."""
  cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--data", data,
         "--child-requests", str(a.child_requests), "--candidates", str(a.candidates), "--history", str(a.history),
         "--users", str(a.users), "--items", str(a.items), "--row-group-rows", str(a.row_group_rows),
         "--seed", str(a.seed), *extra]
  started = time.perf_counter()
  proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None if kind == "convert" and "--child-profile" in extra
                        else subprocess.PIPE, text=True)
  lines = [l for l in (proc.stdout or "").splitlines() if l.startswith("{")]
  if proc.returncode or not lines:
    return {"error": f"exit {proc.returncode}: {(proc.stderr or '').strip().splitlines()[-3:]}",
            "wall_s": time.perf_counter() - started}
  return {**json.loads(lines[-1]), "wall_s": time.perf_counter() - started}


def ensure_data(folder: str, requests: int, a: argparse.Namespace) -> dict:
  """Generates the log of `requests` requests into `folder` unless a matching one is there."""
  want = {"requests": requests, "candidates": a.candidates, "history": a.history, "users": a.users,
          "items": a.items, "seed": a.seed, "row_group_rows": a.row_group_rows}
  try:
    with open(os.path.join(folder, "meta.json")) as f:
      meta = json.load(f)
    if all(meta.get(k) == v for k, v in want.items()):
      return {**meta, "reused": True}
  except (OSError, ValueError):
    pass  # no readable log there: generate it
  a.child_requests = requests
  return child("generate", folder, a)


def fmt_bytes(b: float) -> str:
  return f"{b / 2 ** 30:.2f} GiB" if b >= 2 ** 30 else f"{b / 2 ** 20:.0f} MiB"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--requests", type=int, default=2_000_000, help="requests of the large run (converter only)")
  parser.add_argument("--baseline-requests", type=int, default=200_000, help="requests of the side-by-side run")
  parser.add_argument("--candidates", type=int, default=10, help="candidates per request (also N = list_size)")
  parser.add_argument("--history", type=int, default=50, help="items in each request's history list (also L)")
  parser.add_argument("--users", type=int, default=1_000_000, help="user pool of the Zipf draw")
  parser.add_argument("--items", type=int, default=1_000_000, help="item pool of the Zipf draw")
  parser.add_argument("--row-group-rows", type=int, default=1_000_000, help="rows per Parquet row group")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--dir", default=None, help="folder for the logs (reused when it holds the same log)")
  parser.add_argument("--keep", action="store_true", help="keep the generated logs (always kept with --dir)")
  parser.add_argument("--no-big", action="store_true", help="skip the --requests run")
  parser.add_argument("--no-baseline", action="store_true", help="skip the pandas case")
  parser.add_argument("--profile", action="store_true", help="also cProfile a converter run at the baseline size")
  parser.add_argument("--json", default=None, help="also write every figure to this file")
  parser.add_argument("--child", choices=("generate", "convert", "pandas"), help=argparse.SUPPRESS)
  parser.add_argument("--data", help=argparse.SUPPRESS)
  parser.add_argument("--child-requests", type=int, default=0, help=argparse.SUPPRESS)
  parser.add_argument("--child-signature", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--child-profile", action="store_true", help=argparse.SUPPRESS)
  a = parser.parse_args()
  if a.child:
    run = {"generate": generate, "convert": run_converter, "pandas": run_pandas}[a.child]
    out = run(a)
    out.setdefault("peak_rss", _peak_rss())
    print(json.dumps(out), flush=True)
    return

  root = os.path.abspath(a.dir) if a.dir else tempfile.mkdtemp(prefix="cascadejax-convert-")
  os.makedirs(root, exist_ok=True)
  sizes = [("baseline", a.baseline_requests)] + ([] if a.no_big or a.requests == a.baseline_requests
                                                 else [("big", a.requests)])
  results: dict = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}, "args": vars(a), "runs": []}
  try:
    import pandas  # noqa: PLC0415
    import pyarrow  # noqa: PLC0415
    results["machine"] |= {"pandas": pandas.__version__, "pyarrow": pyarrow.__version__, "numpy": np.__version__}
  except ImportError:
    results["machine"] |= {"pandas": None}
  try:
    for label, requests in sizes:
      folder = os.path.join(root, f"log-{requests}")
      gen = ensure_data(folder, requests, a)
      results.setdefault("generated", {})[label] = gen
      if "error" in gen:
        print(f"generation of {requests:,} requests failed: {gen['error']}", file=sys.stderr)
        continue
      a.child_requests = requests
      rows = requests * a.candidates
      sig = ["--child-signature"] if label == "baseline" and not a.no_baseline else []
      print(f"[{time.strftime('%H:%M:%S')}] {rows:,} rows: converter ...", file=sys.stderr, flush=True)
      results["runs"].append({"size": label, "requests": requests, "rows": rows, "method": "converter",
                              **child("convert", folder, a, *sig)})
      if label == "baseline" and not a.no_baseline:
        print(f"[{time.strftime('%H:%M:%S')}] {rows:,} rows: pandas groupby/apply ...", file=sys.stderr, flush=True)
        results["runs"].append({"size": label, "requests": requests, "rows": rows, "method": "pandas groupby/apply",
                                **child("pandas", folder, a, *sig)})
      if label == "baseline" and a.profile:
        print(f"[{time.strftime('%H:%M:%S')}] {rows:,} rows: converter under cProfile (stats on stderr) ...",
              file=sys.stderr, flush=True)
        prof = child("convert", folder, a, "--child-profile")
        results["profiled_seconds"] = prof.get("seconds")
  finally:
    if not a.dir and not a.keep:
      shutil.rmtree(root, ignore_errors=True)

  print(f"\n{os.cpu_count()} CPU cores, Python {results['machine']['python']}, pandas {results['machine'].get('pandas')}, "
        f"pyarrow {results['machine'].get('pyarrow')}, numpy {np.__version__}; {a.candidates} candidates and a "
        f"{a.history}-item history per request, 8 id columns, 7 daily Parquet files\n")
  for label, gen in results.get("generated", {}).items():
    if "error" not in gen:
      how = "reused" if gen.get("reused") else f"generated in {gen['seconds']:.0f} s, generator peak RSS {fmt_bytes(gen['peak_rss'])}"
      print(f"input {gen['rows']:,} rows ({gen['requests']:,} requests): {fmt_bytes(gen['bytes'])} of Parquet, {how}")
  print("\n| size | method | seconds | rows/s | peak RSS | converter / pandas (rows/s) |")
  print("|---|---|---|---|---|---|")
  base = {r["size"]: r for r in results["runs"] if r["method"] != "converter" and "error" not in r}
  for r in results["runs"]:
    size = f"{r['rows']:,} rows ({r['requests']:,} requests)"
    if "error" in r:
      print(f"| {size} | {r['method']} | failed: {r['error']} ||||")
      continue
    r["rows_per_s"] = r["rows"] / r["seconds"]
    ratio = ""
    if r["method"] == "converter":
      ref = base.get(r["size"]) or base.get("baseline")
      if ref:
        r["ratio"] = r["rows_per_s"] / (ref["rows"] / ref["seconds"])
        ratio = f"{r['ratio']:.1f}x" + ("" if r["size"] in base else f" (against pandas at {ref['rows']:,} rows)")
    print(f"| {size} | {r['method']} | {r['seconds']:.1f} | {r['rows_per_s']:,.0f} | {fmt_bytes(r['peak_rss'])} | {ratio} |")
  sigs = [r for r in results["runs"] if r["size"] == "baseline" and "signature" in r]
  if len(sigs) == 2:
    same = sigs[0]["signature"] == sigs[1]["signature"]
    results["same_arrays"] = same
    print(f"\nsame arrays at the baseline size (up to request and slot order): {'yes' if same else 'NO'}")
    for r in sigs:
      print(f"  {r['method']}: {json.dumps(r['signature'])}")
  if results.get("profiled_seconds"):
    print(f"\ncProfile'd converter run: {results['profiled_seconds']:.1f} s (stats printed on stderr above)")
  if a.json:
    with open(a.json, "w") as f:
      json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
  main()
