"""Shared fixtures: a tiny synthetic cascade that trains in seconds; a child pytest on forced devices."""

import os
import subprocess
import sys
import xml.etree.ElementTree as ET

# Tests compile hundreds of small XLA programs and run each a few times, so compiling dominates: skip
# LLVM's expensive passes in this process and in every child it starts (they inherit the environment).
# Results stay within float32 rounding of an optimised build; benchmarks/ and training use the default.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true").strip()

import pytest  # noqa: E402
from ml_collections import ConfigDict  # noqa: E402

from configs import default  # noqa: E402

pytest_plugins = ("tests.launch_helpers", "tests.data_recflow_helpers")  # the `env` and `hand` fixtures


def tiny_config(num_stages: int = 2) -> ConfigDict:
  """The default config shrunk to lists of 8 candidates and a few hundred requests."""
  c = default.get_config()
  d = c.data
  d.num_train, d.num_test = 256, 48
  d.list_size, d.min_candidates = 8, 6
  d.num_users, d.num_items = 40, 60
  d.num_user_groups, d.num_categories, d.num_creators, d.num_contexts = 4, 6, 5, 3
  d.latent_dim, d.history_len, d.min_history = 4, 5, 1
  c.embedding.dim = 4
  c.cascade.gt_num = 2
  c.cascade.retrieval.k = 4
  c.cascade.retrieval.model_kwargs = ConfigDict(dict(hidden=(8,), out_dim=4))
  c.cascade.prerank.k = 2
  c.cascade.prerank.model_kwargs = ConfigDict(dict(hidden=(8,)))
  d.production.ks = (4, 2)
  if num_stages == 3:
    d.production.ks, d.production.noise = (5, 3, 2), (0.5, 0.6, 0.3)
    c.cascade.stages = ("retrieval", "prerank", "rank")
    c.cascade.retrieval.k, c.cascade.prerank.k = 5, 3
    c.cascade.rank = ConfigDict(dict(model="dcn", k=2, model_kwargs=ConfigDict(dict(num_cross=1, deep=(8,)))))
  t = c.train
  t.batch_size, t.eval_batch_size = 16, 32
  t.steps, t.log_every, t.eval_every, t.checkpoint_every = 12, 4, 8, 4
  t.progress_bar = False
  c.optimizer.warmup_steps = 2
  return c


@pytest.fixture
def config() -> ConfigDict:
  return tiny_config()


@pytest.fixture
def initial_params(monkeypatch) -> list:
  """A list that receives a host copy of the parameters from each `Experiment.init_state` call. The call
  is wrapped, not replaced, so a test reads a run's real starting point without compiling a second
  init. The copy is taken because the first train step takes over (donates) the state's buffers."""
  import jax
  from cascadejax.experiment import Experiment
  seen, init = [], Experiment.init_state

  def spy(self):
    state = init(self)
    seen.append(jax.device_get(state.params))
    return state

  monkeypatch.setattr(Experiment, "init_state", spy)
  return seen


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_devices_env(devices: int) -> dict[str, str]:
  """This process's environment for a child that runs JAX on `devices` forced CPU devices (the XLA
  flags of the tests kept) and imports the project from the repository root."""
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
  return {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}


def run_on_cpu_devices(cases_files: list[str], devices: int, report_dir) -> dict[str, str | None]:
  """Runs the tests of `tests/<file>` for each of `cases_files` in one child pytest with `devices`
  forced CPU devices (a process's device count is fixed once JAX starts). Returns
  {"<module>.<test name>": failure text or None}; a parametrized test's variants are reported together."""
  report = os.path.join(str(report_dir), "junit.xml")
  env = cpu_devices_env(devices)
  proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                         *[os.path.join(ROOT, "tests", f) for f in cases_files]],
                        env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
  if not os.path.exists(report):
    pytest.fail(f"the {devices}-device child pytest did not run:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
  results = {}
  for case in ET.parse(report).getroot().iter("testcase"):
    problem = case.find("failure") if case.find("failure") is not None else case.find("error")
    name = f"{case.get('classname').split('.')[-1]}.{case.get('name').split('[')[0]}"
    results.setdefault(name, None)
    if problem is not None:
      text = f"{case.get('name')}: {problem.get('message')}\n{problem.text}"
      results[name] = f"{results[name]}\n{text}" if results[name] else text
  return results


def check_child_case(results: dict[str, str | None], case: str) -> None:
  """Fails with the child's report unless `case` ran and passed there."""
  assert case in results, f"{case} did not run in the child pytest"
  if results[case]:
    pytest.fail(results[case])
