"""`cascadejax.huge_pages`: when the commands re-execute themselves with glibc's malloc asking for huge
pages, and that the re-executed process is the same command, the same pid, with the tunable set."""

import os
import subprocess
import sys

import pytest

from cascadejax import huge_pages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("env, glibc_ok, thp, want", [
    ({}, True, "madvise", "glibc.malloc.hugetlb=1"),
    ({}, True, "always", "glibc.malloc.hugetlb=1"),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, True, "madvise",
     "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"),            # the user's own tunables are kept
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, True, "madvise", None),  # the user's choice stands
    ({"CASCADEJAX_HUGE_PAGES": "0"}, True, "madvise", None),        # turned off
    ({}, False, "madvise", None),                                   # glibc before 2.35 has no such tunable
    ({}, True, "never", None),                                      # the kernel gives no huge pages
    ({}, True, None, None),                                         # no transparent huge pages at all
])
def test_when_to_reexecute(env, glibc_ok, thp, want):
  got = huge_pages.environment({"PATH": "/bin", **env}, glibc_ok=glibc_ok, thp=thp)
  if want is None:
    assert got is None
  else:
    assert got == {"PATH": "/bin", **env, "GLIBC_TUNABLES": want}


def test_thp_mode_reads_the_kernels_bracketed_choice(tmp_path):
  path = tmp_path / "enabled"
  path.write_text("always [madvise] never\n")
  assert huge_pages._thp_mode(str(path)) == "madvise"
  assert huge_pages._thp_mode(str(tmp_path / "missing")) is None


def test_the_process_replaces_itself_once_with_the_tunable_set():
  code = ("import os, sys; print('pid', os.getpid(), flush=True)\n"
          "from cascadejax import huge_pages; huge_pages.reexec()\n"
          "print('tunables', os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])")
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", huge_pages.OFF)}
  env["PYTHONPATH"] = ROOT
  done = subprocess.run([sys.executable, "-c", code, "an", "argument"], env=env, cwd=ROOT, capture_output=True,
                        text=True, timeout=120, check=True)
  lines = done.stdout.splitlines()
  expected = huge_pages.environment(env, glibc_ok=huge_pages._glibc_at_least((2, 35)), thp=huge_pages._thp_mode())
  if expected is None:  # this machine's glibc or kernel gives no huge pages: nothing happens
    assert len(lines) == 2 and lines[1] == "tunables None ['an', 'argument']"
  else:  # the command ran again, same pid and arguments, now with the tunable
    assert len(lines) == 3 and lines[0] == lines[1]
    assert lines[2] == f"tunables {expected['GLIBC_TUNABLES']} ['an', 'argument']"
