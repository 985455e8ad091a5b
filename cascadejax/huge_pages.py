"""Huge pages for glibc's malloc: the commands re-execute themselves with `glibc.malloc.hugetlb=1`.

XLA's CPU runtime allocates a step's temporaries with malloc. glibc serves every allocation above
32 MB with a fresh `mmap`, which the kernel maps and zero-fills 4 kB page by page on first touch,
on every call: on the 2-core CPU of benchmarks/RESULTS.md that made the default config's train step
1.57x slower and the LCRON RecFlow step 1.2-1.7x slower than with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`,
which makes malloc ask for transparent huge pages (results are unchanged: only the allocator's
pages differ). glibc reads the tunable once, at process start, so `train.py` and `compare` call
`reexec()` first thing: where the tunable would take effect and is not set yet, the process
replaces itself (same pid, same arguments) with one that has it. `CASCADEJAX_HUGE_PAGES=0` turns
this off. This module imports nothing from cascadejax.
"""

from __future__ import annotations

import os
import sys
from typing import Mapping

TUNABLE = "glibc.malloc.hugetlb"
OFF = "CASCADEJAX_HUGE_PAGES"
THP = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_at_least(version: tuple[int, int]) -> bool:
  try:
    name, number = os.confstr("CS_GNU_LIBC_VERSION").split()  # e.g. "glibc 2.36"
    return name == "glibc" and tuple(int(x) for x in number.split(".")[:2]) >= version
  except (ValueError, OSError, AttributeError):
    return False


def _thp_mode(path: str = THP) -> str | None:
  """The kernel's transparent-huge-page mode (`always`, `madvise` or `never`), None if unknown."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  return text[text.index("[") + 1:text.index("]")] if "[" in text and "]" in text else None


def environment(env: Mapping[str, str], *, glibc_ok: bool, thp: str | None) -> dict[str, str] | None:
  """The environment to re-execute with, or None when there is nothing to do: turned off
  (`CASCADEJAX_HUGE_PAGES=0`), the tunable already set, a glibc without it (before 2.35), or
  transparent huge pages unavailable or `never`."""
  tunables = env.get("GLIBC_TUNABLES", "")
  if env.get(OFF, "1") == "0" or TUNABLE in tunables or not glibc_ok or thp not in ("always", "madvise"):
    return None
  return {**env, "GLIBC_TUNABLES": ":".join(filter(None, (tunables, f"{TUNABLE}=1")))}


def reexec() -> None:
  """Replaces this process by the same command with glibc's malloc asking for huge pages, where
  that takes effect and is not set yet (see `environment`); returns without doing anything
  otherwise. Call it before anything else runs (no threads, no open state)."""
  if not sys.platform.startswith("linux"):
    return
  env = environment(os.environ, glibc_ok=_glibc_at_least((2, 35)), thp=_thp_mode())
  if env is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
