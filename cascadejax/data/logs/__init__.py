"""Your own logs (`config.data.name = "logs"`): a declarative reader for full-stage logs in Parquet,
Feather or CSV, converted in two streamed passes into a store that later runs extend day by day.

`config.py` declares the columns (`LogsSection`), `files.py` reads them, `vocab.py` maps raw ids to
rows, `scan.py` (pass 1) partitions the rows, `requests.py` (pass 2) builds padded requests,
`store.py` keeps the converted days and `convert.py` runs it all. docs/data.md ("Your own logs")
walks through it; `configs/logs_example.py` sets every key.
"""

from __future__ import annotations

import sys

from ml_collections import ConfigDict

from cascadejax.data.logs.config import LogsSection
from cascadejax.data.logs.convert import convert
from cascadejax.data.logs.vocab import Vocabulary
from cascadejax.data.schema import CascadeData


def check_config(cfg: ConfigDict, num_stages: int) -> LogsSection:
  """Parses `config.data` for the logs reader (no file is read); raises naming the bad key."""
  del num_stages
  return LogsSection.parse(cfg)


def load(cfg: ConfigDict, num_stages: int, *, progress: bool | None = None,
         share: tuple[int, int] | None = None) -> CascadeData:
  """The logs `cfg` names as splits "train" and "test", converting what the store lacks (with
  progress bars when `progress`, by default when stderr is a terminal). With `share` = (i, n) only
  the requests whose hash is i modulo n are converted and returned (process i of n)."""
  progress = sys.stderr.isatty() if progress is None else progress
  return convert(LogsSection.parse(cfg), num_stages, progress=progress, share=share)


__all__ = ["LogsSection", "Vocabulary", "check_config", "convert", "load"]
