"""Writes an example full-stage log to try the logs reader on: `python -m cascadejax.data.logs.example --out DIR`.

The requests come from the built-in simulator (`cascadejax/data/synthetic.py`, a small world) and
are written the way a production system would log them: one Parquet file per day under
`DIR/candidates/`, one row per (request, candidate), string ids, the deepest stage each candidate
reached, a graded label, a click on exposed candidates (null elsewhere) and the user's recent items
as a list column. `configs/logs_example.py` reads it.
"""

from __future__ import annotations

import argparse
import datetime
import os

import numpy as np

FIRST_DAY = datetime.date(2024, 1, 1)
WORLD = dict(name="synthetic", list_size=40, min_candidates=30, num_users=2_000, num_items=2_000, num_user_groups=64,
             num_categories=64, num_creators=400, num_contexts=8, latent_dim=16, history_len=20, min_history=5,
             history_temperature=0.5, candidate_temperature=1.0, w_dot=1.0, w_cross=1.0, w_pop=0.5, w_context=0.5,
             click_offset=2.0)  # the simulator of configs/default.py, with fewer users and items


def write(out: str, *, requests: int = 8_000, days: int = 8, seed: int = 0) -> list[str]:
  """Simulates `requests` requests over `days` days and writes them; returns the files written."""
  import pyarrow as pa  # noqa: PLC0415
  import pyarrow.parquet as pq  # noqa: PLC0415

  from ml_collections import ConfigDict  # noqa: PLC0415

  from cascadejax.data import synthetic  # noqa: PLC0415

  c = ConfigDict(dict(WORLD, seed=seed, num_train=requests, num_test=1,
                      production=ConfigDict(dict(ks=(20, 10), noise=(0.5, 0.3)))))
  b = synthetic.load(c, 2).splits["train"]
  per_day = -(-requests // days)
  os.makedirs(os.path.join(out, "candidates"), exist_ok=True)
  paths = []
  for d in range(days):
    rows = np.arange(d * per_day, min((d + 1) * per_day, requests))
    if not len(rows):
      break
    r, j = np.nonzero(np.asarray(b.mask)[rows])
    req = rows[r]
    day = FIRST_DAY + datetime.timedelta(days=d)
    stage = np.asarray(b.stage)[req, j]
    click = np.asarray(b.feedback["click"])[req, j]
    hist = np.asarray(b.user["history"])[rows]
    table = pa.table({
        "request_id": pa.array([f"{day:%Y%m%d}-{i:07d}" for i in req]),
        "day": pa.array([str(day)] * len(req)),
        "user_id": pa.array([f"u{x}" for x in np.asarray(b.user["user_id"])[req]]),
        "user_group": np.asarray(b.user["user_group"])[req].astype(np.int64),
        "context": np.asarray(b.user["context"])[req].astype(np.int64),
        "item_id": pa.array([f"i{x}" for x in np.asarray(b.items["item_id"])[req, j]]),
        "category": np.asarray(b.items["category"])[req, j].astype(np.int64),
        "creator": pa.array([f"c{x}" for x in np.asarray(b.items["creator"])[req, j]]),
        "stage": stage.astype(np.int64),
        "label": np.asarray(b.label)[req, j].astype(np.float64),
        "click": pa.array(np.where(stage == 2, click, np.nan), from_pandas=True),
        "recent_items": pa.array([[f"i{x}" for x in hist[k] if x] for k in r]),
    })
    path = os.path.join(out, "candidates", f"{day}.parquet")
    pq.write_table(table, path)
    paths.append(path)
  return paths


def main() -> None:
  """The command (see the module docstring)."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True, help="folder to write candidates/<day>.parquet into")
  p.add_argument("--requests", type=int, default=8_000)
  p.add_argument("--days", type=int, default=8)
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args()
  for path in write(a.out, requests=a.requests, days=a.days, seed=a.seed):
    print(path)


if __name__ == "__main__":
  main()
