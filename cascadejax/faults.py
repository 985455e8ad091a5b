"""Fault injection for tests: `CASCADEJAX_FAULT` names a point where the process dies (or a write fails).

The training code calls `point(name, step)` at the moments a long run can be cut off: inside the
config and metrics writes, before the first (compiling) step, after a step, inside a checkpoint save,
between a save and its checksums, during the final evaluation. With the variable unset (always,
outside tests) a point does nothing. `CASCADEJAX_FAULT="after_step:3"` kills the process with
SIGKILL (as a preemption, the OOM killer or a power cut would) when step 3 is done;
`"inside_save:4:enospc"` raises `OSError(ENOSPC)` there instead; several comma-separated specs may
be given. tests/test_faults.py runs training in a subprocess, kills it and checks the rerun.
"""

from __future__ import annotations

import errno
import os
import signal
from typing import Callable

ENV = "CASCADEJAX_FAULT"
POINTS = ("config_write", "before_compile", "after_step", "inside_save", "before_checksums", "metrics_write",
          "metrics_rewrite", "final_eval")
ACTIONS = ("kill", "enospc")


def _specs() -> list[tuple[str, int | None, str]]:
  out = []
  for spec in filter(None, os.environ.get(ENV, "").split(",")):
    name, _, rest = spec.partition(":")
    step, _, action = rest.partition(":")
    action = action or "kill"
    if name not in POINTS or action not in ACTIONS or (step and not step.lstrip("-").isdigit()):
      raise ValueError(f"{ENV}={os.environ[ENV]!r}: {spec!r} is not POINT[:STEP][:ACTION] with POINT one of "
                       f"{POINTS} and ACTION one of {ACTIONS}")
    out.append((name, int(step) if step else None, action))
  return out


def point(name: str, step: int | None = None, *, before: Callable[[], None] | None = None) -> None:
  """Kills the process (or raises `OSError(ENOSPC)`) if `CASCADEJAX_FAULT` names this point (and step).

  Args:
    name: one of `POINTS`.
    step: the training step the point is at, matched against the spec's step when it has one.
    before: called first when the fault fires (e.g. to leave half a line in a file).
  """
  if ENV not in os.environ:
    return
  for want, want_step, action in _specs():
    if want == name and (want_step is None or want_step == step):
      if before is not None:
        before()
      if action == "enospc":
        raise OSError(errno.ENOSPC, f"No space left on device (injected by {ENV} at {name})")
      os.kill(os.getpid(), signal.SIGKILL)
