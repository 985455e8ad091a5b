"""One writer per workdir: an OS lock (`fcntl.flock`) on `workdir/lock.<process index>`.

The kernel releases the lock when its process ends, however it ends (kill -9, a crash, a power cut
ends the whole machine), so there are no stale locks to clean up. The holder writes its host, pid
and start time into the lock file, and a second start fails at once naming them. A multi-host run
takes one lock per process (each process is one writer of its shard of the checkpoint). The lock is
re-entrant within a process: `compare` holds a run's lock around `trainer.train_and_evaluate`,
which takes it again. Read-only commands (`evaluate`, `export`) take no lock.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys
from typing import Iterator

_held: dict[str, list] = {}  # lock path -> [file descriptor, depth]


class WorkdirLockedError(RuntimeError):
  """Another live process holds the workdir's lock."""


def lock_path(workdir: str, process_index: int = 0) -> str:
  """The lock file of `workdir` for one process of a run."""
  return os.path.join(os.path.abspath(workdir), f"lock.{process_index}")


def holder(path: str) -> dict:
  """What the last holder of lock file `path` wrote about itself (empty if nothing readable)."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


@contextlib.contextmanager
def hold(workdir: str, process_index: int = 0) -> Iterator[str]:
  """Holds `workdir`'s lock (for `process_index`) while the block runs; yields the lock file's path.

  Raises:
    WorkdirLockedError: at once, naming the holder's host, pid and start time, if another process
      holds it.
  """
  os.makedirs(workdir, exist_ok=True)
  path = lock_path(workdir, process_index)
  if path in _held:
    _held[path][1] += 1
  else:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      h = holder(path)
      raise WorkdirLockedError(
          f"{os.path.abspath(workdir)} is in use by another run (host {h.get('host', '?')}, pid {h.get('pid', '?')}, "
          f"started {h.get('started', '?')}; lock file {path}): two runs in one workdir would overwrite each "
          "other's checkpoints and reports. Wait for it to end or stop it, or use another --workdir") from None
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "argv": sys.argv}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    _held[path] = [fd, 1]
  try:
    yield path
  finally:
    _held[path][1] -= 1
    if not _held[path][1]:
      fd = _held.pop(path)[0]
      fcntl.flock(fd, fcntl.LOCK_UN)
      os.close(fd)
