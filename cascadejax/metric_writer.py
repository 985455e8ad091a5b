"""Where training reports go: `workdir/metrics.jsonl` (one JSON object per report) and TensorBoard.

`metrics.jsonl` is only ever appended to or replaced whole: a resume that drops the reports written
after the restored checkpoint, or the repair of a partial last line (a power cut inside an append),
writes the kept lines to a temp file and renames it over the log (`files.write_atomic`), so a kill at
any moment leaves the whole old log or the whole new one. Appends and rewrites hold
`metrics.jsonl.lock` (`files.exclusive`), so the run and `cascadejax.evaluate` never lose each
other's lines.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

from absl import logging
from tensorboardX import SummaryWriter

from cascadejax import faults, files


class MetricWriter:
  """Appends reports to `metrics.jsonl` and TensorBoard event files under `workdir/tensorboard`.

  Args:
    workdir: the run's directory.
    resume_step: the step training starts from (a restored checkpoint's, or 0 for a start from
      scratch): reports of later steps (written by an interrupted run after its last checkpoint, or
      before its first) are dropped from both logs so they are not doubled (TensorBoard: the new
      event file purges later steps of the old ones, `purge_step`). None (`cascadejax.evaluate`)
      keeps every report.
    enabled: False on every process but the first of a multi-host run.
    test_days: the days the final evaluation tests (`config.data.test_days`, for readers with days):
      on resume, final reports of other test days are kept, so a run moved forward day by day keeps
      one final report per evaluated day.
  """

  def __init__(self, workdir: str, *, resume_step: int | None = None, enabled: bool = True,
               test_days: list | None = None):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = enabled
    if not enabled:
      return
    if os.path.exists(self.path):
      with files.exclusive(self.path):  # an evaluate appending meanwhile waits, so its line is kept
        with open(self.path) as f:
          text = f.read()
        lines = _lines(text, self.path)
        kept = [line for line in lines if resume_step is None or not _after(line, resume_step, test_days)]
        if kept != lines or (text and not text.endswith("\n")):
          files.write_atomic(self.path, "".join(line + "\n" for line in kept),
                             midway=lambda: faults.point("metrics_rewrite", resume_step))
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"),
                             purge_step=None if resume_step is None else resume_step + 1)

  def write(self, step: int, scalars: dict[str, float], **fields: Any) -> dict[str, Any]:
    """Writes one report: `{"step": step, **fields, **scalars}`; returns it. Its TensorBoard tags
    are `<split>/<metric>` (`<source>/<split>/<metric>` for a `source` other than "train")."""
    record = {"step": int(step), **fields, **{k: float(v) for k, v in scalars.items()}}
    if self.enabled:
      line = json.dumps(record) + "\n"
      try:
        with files.exclusive(self.path), open(self.path, "a") as f:
          faults.point("metrics_write", int(step), before=lambda: (f.write(line[: len(line) // 2]), f.flush()))
          f.write(line)
      except OSError as err:
        raise OSError(err.errno, f"appending the step-{int(step)} report to {self.path} failed: {err.strerror}; "
                      "the reports before it are kept (free space and run the same command again)") from err
      # `cascadejax.evaluate`'s reports get their own tags, so they never double the run's final ones
      source = fields.get("source", "train")
      prefix = "".join(f"{x}/" for x in (None if source == "train" else source, fields.get("split")) if x)
      for k, v in scalars.items():
        self._tb.add_scalar(prefix + _tag(k), float(v), int(step))
      self._tb.flush()
    return record

  def close(self) -> None:
    """Flushes and closes the TensorBoard writer."""
    if self.enabled:
      self._tb.close()


def _tag(name: str) -> str:
  """A TensorBoard-legal tag: `recall@10@20` -> `recall_at_10_at_20`."""
  return name.replace("@", "_at_")


def _lines(text: str, path: str) -> list[str]:
  """The complete report lines of a `metrics.jsonl` text (without newlines). A last line cut short
  (no newline, not JSON: an append cut off) is dropped with a warning naming the file.

  Raises:
    ValueError: naming the file and line, for a damaged line before the last.
  """
  lines = text.split("\n")
  tail = lines.pop()  # "" when the text ends with a newline
  for i, line in enumerate(lines):
    if line.strip():
      try:
        json.loads(line)
      except json.JSONDecodeError as err:
        raise ValueError(f"{path}, line {i + 1}, is not a JSON report ({err}): the log was damaged; "
                         f"remove or repair that line") from None
  if tail.strip():
    try:
      json.loads(tail)
      lines.append(tail)  # whole, only its newline missing
    except json.JSONDecodeError:
      logging.warning("%s: its last line (%d characters, %r...) is cut short (an append was cut off); it "
                      "is dropped", path, len(tail), tail[:40])
  return [line for line in lines if line.strip()]


def _after(line: str, step: int, test_days: list | None = None) -> bool:
  """Whether a trainer report is one the resumed run writes again: a step after `step`, or the
  final evaluation of the same test days (reports of `cascadejax.evaluate` are kept)."""
  record = json.loads(line)
  final_again = record.get("final", False) and record.get("test_days") == test_days
  return record.get("source", "train") == "train" and (record.get("step", -1) > step or final_again)


def read(workdir: str) -> list[dict[str, Any]]:
  """All reports of `workdir/metrics.jsonl`, in order (a cut-off last line is left out, with a warning).

  Raises:
    ValueError: naming the file and line, for a damaged line before the last.
  """
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path) as f:
    return [json.loads(line) for line in _lines(f.read(), path)]


# `<stage>/recall@G@K`, `<stage>/ndcg@K`, `<stage>/survival`, each maybe with `_random` (metrics.py).
_STAGE_METRIC = re.compile(r"(?P<row>[^/]+)/(?:recall@(?P<gt>\d+)@(?P<rk>\d+)|ndcg@(?P<nk>\d+)|survival)"
                           r"(?P<random>_random)?")
_FIELDS = ("step", "split", "final", "source")  # what `MetricWriter.write` adds beside the metrics
_E2E = ("recall_e2e", "recall_e2e_random")


def _stage_rows(report: Mapping[str, Any]) -> tuple[dict[str, dict[str, Any]], set[str], dict[str, float]]:
  """`(rows, gt_nums, others)`: per row name its k and values by kind (`recall`, `ndcg_random`...),
  the ground-truth sizes seen, and the numeric metrics that fit no row."""
  rows, gts, others = {}, set(), {}
  for key, value in report.items():
    if key in _FIELDS or key in _E2E or isinstance(value, bool) or not isinstance(value, (int, float)):
      continue
    m = _STAGE_METRIC.fullmatch(key)
    k = m and (m["rk"] or m["nk"])
    if m is None or (k and rows.get(m["row"], {}).setdefault("k", k) != k):  # one k a row
      others[key] = value
      continue
    kind = "recall" if m["rk"] else "ndcg" if m["nk"] else "survival"
    rows.setdefault(m["row"], {"k": k} if k else {})[kind + (m["random"] or "")] = value
    if m["gt"]:
      gts.add(m["gt"])
  return rows, gts, others


def table(report: Mapping[str, Any]) -> str:
  """A report's metrics as a fixed-width text table, for people (the JSON keeps every digit).

  One row per stage: its k, then `recall@G@k`, `ndcg@k` and `survival`, each followed by its
  random-selection reference where the report has one ("-" where a row lacks a value). Stages (the
  rows with a `survival`) come in cascade order, i.e. by decreasing k (a config's k's strictly
  decrease; a report's keys are sorted, by JSON and by pytrees); other rows, e.g. the lists shown by
  `cascadejax.evaluate`'s re-ranking (`rerank`, `shown`), follow in report order. Below the rows,
  the end-to-end recall beside its random reference, then every other numeric metric, one a line.

  Args:
    report: a report as `MetricWriter.write` returns it (or a line of `metrics.jsonl`).

  Returns:
    The table, lines joined by newlines, without a trailing newline.
  """
  rows, gts, others = _stage_rows(report)

  def cascade_order(name):  # stages by decreasing k, then the other rows as they came (sorted is stable)
    return (0, -int(rows[name].get("k", 0))) if "survival" in rows[name] else (1, 0)

  order = sorted(rows, key=cascade_order)
  recall = f"recall@{next(iter(gts))}@k" if len(gts) == 1 else "recall@G@k"
  head, kinds = ["stage", "k"], []
  for kind, name in (("recall", recall), ("ndcg", "ndcg@k"), ("survival", "survival")):
    for column, title in ((kind, name), (kind + "_random", "random")):
      if any(column in r for r in rows.values()):
        head.append(title)
        kinds.append(column)
  body = [[name, r.get("k", "-"), *(f"{r[c]:.4f}" if c in r else "-" for c in kinds)] for name, r in ((n, rows[n]) for n in order)]
  widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]

  def line(cells):  # the stage name left-aligned, numbers right-aligned
    return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

  title = " ".join(x for x in (report.get("split"), "metrics") if x)
  lines = [f"{title} at step {report['step']}" if "step" in report else title]
  if body:
    lines += [line(head), *map(line, body)]
  if "recall_e2e" in report:
    random = report.get("recall_e2e_random")
    lines.append(f"end-to-end recall_e2e {report['recall_e2e']:.4f}"
                 + (f" (random {random:.4f})" if random is not None else ""))
  width = max(map(len, others), default=0)
  lines += [f"{key.ljust(width)}  {value:.4f}" for key, value in others.items()]
  return "\n".join(lines)
