"""Your own logs: the two-stage cascade of configs/default.py trained on full-stage logs in Parquet.

Every column is named here, none is hard-coded (docs/data.md, "Your own logs", explains each key).
The example log is written by the simulator in the layout a production system logs: one file per
day, one row per (request, candidate), string ids, the deepest stage reached, a graded label, a
click on exposed candidates and the user's recent items as a list column.

Run:
  python -m cascadejax.data.logs.example --out /tmp/cascadejax/logs_example
  python -m cascadejax.data.convert --config configs/logs_example.py      # optional: train.py converts on first use
  python train.py --config configs/logs_example.py --workdir /tmp/cascadejax/logs

Days 2024-01-01 .. 2024-01-07 train, 2024-01-08 tests; the vocabularies are built from the training
days (ids first seen on the test day map to the out-of-vocabulary row, counted in the report).
Result: not measured yet.
"""

from ml_collections import ConfigDict

from configs import default


def get_config() -> ConfigDict:
  """The default cascade on the example log (`python -m cascadejax.data.logs.example`)."""
  c = default.get_config()
  c.data = ConfigDict(dict(
      name="logs",
      on_device=False,  # True: the training split lives on device (a step moves only row indices)
      seed=0,  # which candidates are kept when a request has more than list_size, and their slot order
      list_size=40,  # N: candidates kept per request (every exposed one first)
      dir="/tmp/cascadejax/logs_example",
      files="candidates/*.parquet",  # globs relative to dir; a folder means every log file in it
      format="auto",  # parquet | feather | csv, from the extension
      cache_dir="~/.cache/cascadejax",  # converted days and vocabularies; "" keeps nothing on disk
      request=("request_id",),  # the request key column(s)
      day="day",  # 'YYYY-MM-DD', a date or a timestamp; or set timestamp= (seconds) instead
      train_days=("2024-01-01", "2024-01-07"),
      test_days=("2024-01-08", "2024-01-08"),
      vocab_days=("2024-01-01", "2024-01-07"),  # pinned, so appended days keep the tables' sizes
      user_features=("user_id", "user_group", "context"),
      item_features=("item_id", "category", "creator"),  # the first identifies the item
      stage=ConfigDict(dict(column="stage")),  # or flags=(...) / groups=(...) of 0/1 columns
      label=ConfigDict(dict(column="label")),  # or add={"click": 1.0} on top of the stage
      feedback=("click",),
      history=ConfigDict(dict(length=20, columns=ConfigDict(dict(history="recent_items")),
                              tables=ConfigDict(dict(history="item_id")))),
      vocab=ConfigDict(dict(min_count=1, oov_buckets=1)),
      valid_fraction=0.0))
  return c
