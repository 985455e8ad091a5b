"""Checkpoints move between device counts: the 8-device cases of `tests/checkpoint_move_cases.py`
(8 -> 1 and 1 -> 8 devices, row-sharded tables re-laid out on the way) run in a child pytest with
8 forced CPU devices and are reported here one by one."""

import inspect

import pytest

from tests import checkpoint_move_cases
from tests.conftest import check_child_case, run_on_cpu_devices

CASES = sorted(n for n, f in inspect.getmembers(checkpoint_move_cases, inspect.isfunction) if n.startswith("test_"))


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory):
  """Runs the 8-device cases once; returns {case name: failure text or None}."""
  return run_on_cpu_devices("checkpoint_move_cases.py", 8, tmp_path_factory.mktemp("moves"))


@pytest.mark.parametrize("case", CASES)
def test_on_eight_devices(eight_devices, case):
  check_child_case(eight_devices, case)
