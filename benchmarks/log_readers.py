"""Reading a log in record batches: pyarrow (what `cascadejax.data.logs` uses) against polars, side by side.

  python benchmarks/log_readers.py --dir /tmp/cbench [--requests 200000] [--batch-rows 65536] [--csv]

The logs converter's pass 1 reads every file in record batches of `batch_rows` rows and hands each
batch, as Arrow, to its checks, hashes and partitions. Issue 20 asks for whichever of pyarrow
datasets or polars lazy scans measures faster here, so this script times only that part: every
column the converter reads, batch by batch, ending in an Arrow `RecordBatch` per batch whose
`request_id` column is summed (so the data is decoded, not just planned). Readers:

  * `pyarrow ParquetFile.iter_batches` (the converter's Parquet path);
  * `pyarrow.dataset` scanner `to_batches` (the converter's Feather/CSV path, here on Parquet);
  * `polars scan_parquet().collect_batches(chunk_size=batch_rows)` then `to_arrow()` per batch;
  * with `--csv`, the same files written as CSV (once, next to them): `pyarrow.dataset` CSV scan vs
    `polars scan_csv().collect_batches()` (the history list column is left out: CSV has no lists).

Input: the log `benchmarks/convert.py --dir DIR` generates (`DIR/log-<requests>/cands/*.parquet`;
run that first). Each case runs in its own subprocess, so its peak RSS (VmHWM) is its own; each is
run `--repeats` times, interleaved, and the best time is kept. The machine is shared: compare the
ratios of one run, not figures of different runs.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

COLUMNS = ["request_id", "day", "user_id", "age", "item_id", "author", "cat1", "cat2", "cat3", "cat4", "stage",
           "click", "hist"]
CASES = ("pyarrow_iter_batches", "pyarrow_dataset", "polars_collect_batches")
CSV_CASES = ("pyarrow_dataset_csv", "polars_collect_batches_csv")


def _peak_rss() -> int:
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def _batches(case: str, paths: list[str], batch_rows: int):
  """Arrow record batches of every file under `case`."""
  import pyarrow as pa  # noqa: PLC0415 (each child imports only what its case needs)
  if case == "pyarrow_iter_batches":
    import pyarrow.parquet as pq  # noqa: PLC0415
    for p in paths:
      yield from pq.ParquetFile(p).iter_batches(batch_size=batch_rows, columns=COLUMNS)
  elif case in ("pyarrow_dataset", "pyarrow_dataset_csv"):
    import pyarrow.dataset as ds  # noqa: PLC0415
    fmt = "csv" if case.endswith("csv") else "parquet"
    columns = [c for c in COLUMNS if c != "hist"] if fmt == "csv" else COLUMNS
    for p in paths:
      yield from ds.dataset(p, format=fmt).scanner(columns=columns, batch_size=batch_rows).to_batches()
  else:
    import polars as pl  # noqa: PLC0415
    for p in paths:
      scan = pl.scan_csv(p).select([c for c in COLUMNS if c != "hist"]) if case.endswith("csv") \
          else pl.scan_parquet(p).select(COLUMNS)
      for frame in scan.collect_batches(chunk_size=batch_rows):
        yield from frame.to_arrow().to_batches()
  del pa


def child(case: str, paths: list[str], batch_rows: int) -> dict:
  """Reads every batch under `case`; seconds, rows, batches and peak RSS."""
  import pyarrow.compute as pc  # noqa: PLC0415
  start, rows, batches, total = time.perf_counter(), 0, 0, 0
  for batch in _batches(case, paths, batch_rows):
    rows, batches = rows + batch.num_rows, batches + 1
    total += pc.sum(batch.column("request_id")).as_py() or 0
  return {"seconds": time.perf_counter() - start, "rows": rows, "batches": batches, "checksum": total,
          "peak_rss": _peak_rss()}


def write_csv(paths: list[str]) -> list[str]:
  """The Parquet files as CSV without the list column (written once, next to them)."""
  import pyarrow.csv as pcsv  # noqa: PLC0415
  import pyarrow.parquet as pq  # noqa: PLC0415
  out = []
  for p in paths:
    target = p[: -len(".parquet")] + ".csv"
    if not os.path.exists(target):
      pcsv.write_csv(pq.read_table(p, columns=[c for c in COLUMNS if c != "hist"]), target + ".tmp")
      os.replace(target + ".tmp", target)
    out.append(target)
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dir", help="the folder benchmarks/convert.py --dir generated into")
  parser.add_argument("--requests", type=int, default=200_000, help="which generated log (log-<requests>)")
  parser.add_argument("--batch-rows", type=int, default=65_536)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--csv", action="store_true", help="also compare the CSV readers")
  parser.add_argument("--json", default=None)
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--paths", nargs="*", help=argparse.SUPPRESS)
  a = parser.parse_args()
  if a.child:
    print(json.dumps(child(a.child, a.paths, a.batch_rows)))
    return
  if not a.dir:
    parser.error("--dir is required")
  parquet = sorted(glob.glob(os.path.join(a.dir, f"log-{a.requests}", "cands", "*.parquet")))
  if not parquet:
    sys.exit(f"no Parquet files under {a.dir}/log-{a.requests}/cands; run benchmarks/convert.py --dir {a.dir} first")
  cases = [(c, parquet) for c in CASES]
  if a.csv:
    csv_paths = write_csv(parquet)
    cases += [(c, csv_paths) for c in CSV_CASES]
  best: dict[str, dict] = {}
  for _ in range(a.repeats):  # interleaved, so a burst of load on the shared machine hits every case
    for case, paths in cases:
      out = subprocess.run([sys.executable, __file__, "--child", case, "--batch-rows", str(a.batch_rows),
                            "--paths", *paths], capture_output=True, text=True, check=True).stdout
      r = json.loads(out.strip().splitlines()[-1])
      if case not in best or r["seconds"] < best[case]["seconds"]:
        best[case] = r
  sums = {r["checksum"] for c, r in best.items() if not c.endswith("csv")}
  assert len(sums) == 1 and len({r["rows"] for r in best.values()}) == 1, f"readers disagree: {best}"
  import polars  # noqa: PLC0415
  import pyarrow  # noqa: PLC0415
  print(f"\n{os.cpu_count()} CPU cores, pyarrow {pyarrow.__version__}, polars {polars.__version__}; "
        f"{best[CASES[0]]['rows']:,} rows in {len(parquet)} files, batch_rows {a.batch_rows:,}, best of {a.repeats}\n")
  print("| reader | seconds | rows/s | batches | peak RSS | time / first pyarrow reader of its format |")
  print("|---|---|---|---|---|---|")
  for case, r in best.items():
    reference = best["pyarrow_dataset_csv" if case.endswith("csv") else CASES[0]]["seconds"]
    print(f"| {case} | {r['seconds']:.2f} | {r['rows'] / r['seconds']:,.0f} | {r['batches']} | "
          f"{r['peak_rss'] / 2**20:,.0f} MiB | {r['seconds'] / reference:.2f}x |")
  if a.json:
    with open(a.json, "w") as f:
      json.dump(best, f, indent=1)


if __name__ == "__main__":
  main()
