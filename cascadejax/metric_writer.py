"""Where training reports go: `workdir/metrics.jsonl` (one JSON object per report) and TensorBoard."""

from __future__ import annotations

import json
import os
from typing import Any

from tensorboardX import SummaryWriter


class MetricWriter:
  """Appends reports to `metrics.jsonl` and TensorBoard event files under `workdir/tensorboard`.

  Args:
    workdir: the run's directory.
    resume_step: when resuming from a checkpoint at this step, reports of later steps (written by the
      interrupted run after its last checkpoint) are dropped from both logs so they are not doubled.
    enabled: False on every process but the first of a multi-host run.
  """

  def __init__(self, workdir: str, *, resume_step: int | None = None, enabled: bool = True):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = enabled
    if not enabled:
      return
    if resume_step is not None and os.path.exists(self.path):
      with open(self.path) as f:
        kept = [line for line in f if line.strip() and not _after(line, resume_step)]
      with open(self.path, "w") as f:
        f.writelines(kept)
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"),
                             purge_step=None if resume_step is None else resume_step + 1)

  def write(self, step: int, scalars: dict[str, float], **fields: Any) -> dict[str, Any]:
    """Writes one report: `{"step": step, **fields, **scalars}`; returns it."""
    record = {"step": int(step), **fields, **{k: float(v) for k, v in scalars.items()}}
    if self.enabled:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")
      prefix = f"{fields['split']}/" if "split" in fields else ""
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


def _after(line: str, step: int) -> bool:
  """Whether a trainer report is one the resumed run writes again: a step after `step`, or the
  final evaluation (reports of `cascadejax.evaluate` are kept)."""
  record = json.loads(line)
  return record.get("source", "train") == "train" and (record.get("step", -1) > step or record.get("final", False))


def read(workdir: str) -> list[dict[str, Any]]:
  """All reports of `workdir/metrics.jsonl`, in order."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]
