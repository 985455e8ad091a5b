"""Durable file writes: `write_atomic` replaces a file by a temp file, fsync and rename, so a reader
(or a run started after a kill, a power cut or a full disk) sees the old file or the new one, whole,
never a truncated mix; `exclusive` serialises the writers of one file across processes."""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Callable, Iterator


@contextlib.contextmanager
def exclusive(path: str) -> Iterator[None]:
  """Holds an OS lock (`fcntl.flock`) on `path + ".lock"` while the block runs, so that processes that
  append to or replace `path` take turns (e.g. `cascadejax.evaluate` appending a report while a
  resumed run rewrites the log: without it the rewrite, read before the append and renamed after it,
  would drop the appended line). The lock is on a side file because a rename replaces `path`'s
  inode; the kernel releases it when its process ends, however it ends."""
  fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)  # closing releases the lock


def fsync_directory(directory: str) -> None:
  """Makes a rename inside `directory` durable (a no-op where directories cannot be opened)."""
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass  # a filesystem that cannot sync directories: the rename itself is done
  finally:
    os.close(fd)


def write_atomic(path: str, text: str, *, midway: Callable[[], None] | None = None) -> None:
  """Writes `text` to `path` through `path + ".tmp"`: write, flush, fsync, rename, fsync the directory.

  Args:
    path: the file to replace (or create).
    text: its whole new content.
    midway: called with half of `text` written to the temp file (`cascadejax.faults` kills there).

  Raises:
    OSError: from the file layer (e.g. ENOSPC), naming the temp file; `path` is then left as it was.
  """
  tmp = path + ".tmp"
  try:
    with open(tmp, "w") as f:
      f.write(text[: len(text) // 2])
      if midway is not None:
        f.flush()
        midway()
      f.write(text[len(text) // 2:])
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    try:
      os.remove(tmp)
    except OSError:
      pass  # never created, or already gone: the original error is the one to raise
    raise
  fsync_directory(os.path.dirname(os.path.abspath(path)))
