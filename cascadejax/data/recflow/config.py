"""RecFlow's configuration: its groups, fields and labels, and the checks of a `config.data` section for
it; shared by its reader (`recflow.py`) and the simulator's RecFlow layout (`synthetic_recflow.py`).

RecFlow logs, per request, the videos each stage of Kuaishou's cascade dropped, in named groups
(`GROUPS`, shallowest first). A cascade trained on it reads a subset, `config.data.groups`, and a
candidate of group index d (0 = shallowest) in an S-stage cascade gets stage min(d, S) and a label
that ranks every deeper group above every shallower one: either graded (d + 1 / (2 + position) in the
`graded` groups, d elsewhere) or, with `config.data.label_values = "reference"`, the values the
LCRON authors' data loaders give (`reference_labels`).
"""

from __future__ import annotations

import datetime

import numpy as np
from ml_collections import ConfigDict

from cascadejax.data.recflow.history import HISTORY_COLUMNS

GROUPS = ("prerank_neg", "coarse_neg", "rank_neg", "rank_pos", "rerank_neg", "rerank_pos", "realshow")
POSITION = {"rank_pos": "rank_index", "rank_neg": "rank_index", "rerank_pos": "rerank_index",
            "rerank_neg": "rerank_index"}
# The LCRON authors' loader labels: REFERENCE_TOP - index, with a fixed index outside the deepest group.
REFERENCE_TOP = 30
REFERENCE_INDEX = {"rerank_neg": 22, "rank_neg": 23, "coarse_neg": 24, "prerank_neg": 25}
LABEL_VALUES = ("graded", "reference")
USER_FIELDS = ("user_id", "device_id", "age", "gender", "province")
CONTEXT_FIELDS = {"request_hour": 24, "request_wday": 7}
ITEM_FIELDS = ("video_id", "author_id", "category_level_one", "category_level_two", "upload_type")
BINARY_FEEDBACK = ("effective_view", "long_view", "like", "follow", "forward", "comment", "realshow")
FEEDBACK = BINARY_FEEDBACK + ("playing_time",)
DEFAULT_GROUPS = {2: ("prerank_neg", "coarse_neg", "rank_neg", "rank_pos"),
                  3: ("prerank_neg", "coarse_neg", "rank_neg", "rerank_neg", "rerank_pos")}


def reference_labels(depth: np.ndarray, position: np.ndarray, gs: tuple[str, ...]) -> np.ndarray:
  """The labels of `label_values="reference"`: 30 - `position` in the deepest of the groups `gs`,
  30 - the group's fixed index in the others.

  Args:
    depth: group index of every candidate (0 = `gs[0]`, the shallowest).
    position: logged position of every candidate (read in the deepest group only).
    gs: the group names, shallowest first; all but the deepest must be in `REFERENCE_INDEX`.

  Returns:
    float64 labels shaped like `depth`.
  """
  fixed = np.array([REFERENCE_TOP - REFERENCE_INDEX.get(g, REFERENCE_TOP) for g in gs], np.float64)
  return np.where(depth == len(gs) - 1, REFERENCE_TOP - position.astype(np.float64), fixed[depth])


def check_label_values(cfg: ConfigDict, gs: tuple[str, ...]) -> None:
  """Raises `ValueError` naming `config.data.label_values` when the reference labels cannot apply."""
  values = cfg.get("label_values", "graded")
  if values not in LABEL_VALUES:
    raise ValueError(f"config.data.label_values must be one of {LABEL_VALUES}, got {values!r}")
  if values == "reference" and any(g not in REFERENCE_INDEX for g in gs[:-1]):
    raise ValueError(f"config.data.label_values='reference' gives fixed labels to {tuple(REFERENCE_INDEX)} "
                     f"only, but the shallower groups are {gs[:-1]}")


def groups(cfg: ConfigDict, num_stages: int) -> tuple[str, ...]:
  """`config.data.groups`, or LCRON's groups for a 2- or 3-stage cascade when it is not set."""
  if "groups" in cfg:
    return tuple(cfg.groups)
  if num_stages not in DEFAULT_GROUPS:
    raise ValueError(f"config.data.groups must be set for a {num_stages}-stage cascade (defaults exist "
                     f"for 2 and 3 stages)")
  return DEFAULT_GROUPS[num_stages]


def day_range(pair, key: str) -> list[str]:
  """Every day from `pair[0]` to `pair[1]` (inclusive) as 'YYYY-MM-DD'; `key` names the config key in errors."""
  try:
    start, end = (datetime.date.fromisoformat(d) for d in pair)
  except (TypeError, ValueError):
    raise ValueError(f"config.data.{key} must be (first, last) dates as 'YYYY-MM-DD', got {pair!r}") from None
  if end < start:
    raise ValueError(f"config.data.{key}: last day {end} is before first day {start}")
  return [str(start + datetime.timedelta(days=i)) for i in range((end - start).days + 1)]


def check_config(cfg: ConfigDict, num_stages: int) -> None:
  """Raises `ValueError` naming the `config.data` key that cannot work (before any file is read)."""
  gs = groups(cfg, num_stages)
  bad = [g for g in gs if g not in GROUPS]
  if bad or len(set(gs)) != len(gs):
    raise ValueError(f"config.data.groups: {gs} must be distinct names from {GROUPS}")
  if len(gs) < num_stages + 1:
    raise ValueError(f"config.data.groups: {len(gs)} groups cannot tell apart the {num_stages + 1} stage "
                     f"values of a {num_stages}-stage cascade; give at least {num_stages + 1}")
  if cfg.per_group < 1:
    raise ValueError(f"config.data.per_group must be >= 1, got {cfg.per_group}")
  if cfg.list_size != len(gs) * cfg.per_group:
    raise ValueError(f"config.data.list_size={cfg.list_size} must equal len(config.data.groups) * "
                     f"config.data.per_group = {len(gs)} * {cfg.per_group}")
  check_label_values(cfg, gs)
  if cfg.get("label_values", "graded") == "reference" and tuple(cfg.graded) != gs[-1:]:
    raise ValueError(f"config.data.label_values='reference' reads the deepest group's positions: "
                     f"config.data.graded must be ({gs[-1]!r},), got {tuple(cfg.graded)}")
  for key, value, allowed in (("graded", cfg.graded, tuple(g for g in gs if g in POSITION)),
                              ("feedback", cfg.feedback, FEEDBACK),
                              ("user_fields", cfg.user_fields, USER_FIELDS + tuple(CONTEXT_FIELDS)),
                              ("item_fields", cfg.item_fields, ITEM_FIELDS),
                              ("history_fields", cfg.history_fields, tuple(HISTORY_COLUMNS))):
    unknown = [v for v in value if v not in allowed]
    if unknown or len(set(value)) != len(tuple(value)):
      raise ValueError(f"config.data.{key}: {tuple(value)} must be distinct names from {allowed}")
  if not cfg.item_fields or "video_id" not in cfg.item_fields:
    raise ValueError(f"config.data.item_fields must include 'video_id', got {tuple(cfg.item_fields)}")
  if cfg.history_len < 0 or cfg.max_requests_per_day < 0:
    raise ValueError("config.data.history_len and config.data.max_requests_per_day must be >= 0")
  train, test = day_range(cfg.train_days, "train_days"), day_range(cfg.test_days, "test_days")
  if set(train) & set(test):
    raise ValueError(f"config.data.train_days and config.data.test_days overlap on {sorted(set(train) & set(test))}")
