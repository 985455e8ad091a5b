"""The tests that need 8 devices, run in one child pytest with 8 forced CPU devices (a process's
device count is fixed once JAX starts) and reported here one by one:

- `tests/embedding_sharded_cases.py`: routed lookups and gradients against `jnp.take`, sparse
  updates against optax, a (2 data x 4 model) training run against one device;
- `tests/checkpoint_move_cases.py`: checkpoints moving 8 -> 1 and 1 -> 8 devices, row-sharded
  tables re-laid out on the way;
- `tests/corpus_sharded_cases.py`: full-corpus evaluation with the item table split over 8 devices
  against one device.

(The `_cases` names keep the parent pytest from collecting them in a process whose devices are fixed.)
"""

import inspect

import pytest

from tests import checkpoint_move_cases, corpus_sharded_cases, embedding_sharded_cases
from tests.conftest import check_child_case, run_on_cpu_devices

MODULES = (embedding_sharded_cases, checkpoint_move_cases, corpus_sharded_cases)
CASES = sorted(f"{m.__name__.split('.')[-1]}.{n}" for m in MODULES
               for n, f in inspect.getmembers(m, inspect.isfunction) if n.startswith("test_"))


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory):
  """Runs every 8-device case once; returns {"<module>.<case>": failure text or None}."""
  files = [m.__name__.split(".")[-1] + ".py" for m in MODULES]
  return run_on_cpu_devices(files, 8, tmp_path_factory.mktemp("eight_devices"))


@pytest.mark.parametrize("case", CASES)
def test_on_eight_devices(eight_devices, case):
  check_child_case(eight_devices, case)
