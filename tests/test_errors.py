"""Command-line overrides that cannot work fail in one line naming the key (`cascadejax.overrides`)."""

import contextlib
import io
import os
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from cascadejax import overrides

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = '''
from ml_collections import ConfigDict

def get_config(arg=None):
  c = ConfigDict()
  c.seed = 0
  c.train = ConfigDict(dict(steps=10, batch_size=4, progress_bar=True))
  c.optimizer = ConfigDict(dict(learning_rate=0.1, grad_clip=1.0))
  c.cascade = ConfigDict(dict(stages=("retrieval", "prerank")))
  return c
'''


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("overrides") / "config.py"
  path.write_text(CONFIG)
  return str(path)


def _parse(config_file, *args):
  """Parses `--config=config_file *args` as a command would; returns (exit status, stderr lines)."""
  argv = ["train.py", f"--config={config_file}", *args]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=values, sys_argv=argv)
  err = io.StringIO()
  with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as done:
    overrides.parse_flags(argv, flag_values=values)
  return done.value.code, err.getvalue().splitlines()


@pytest.mark.parametrize("args,message", [
    (["--config.train.stpes=10"], "unknown config key config.train.stpes (did you mean config.train.steps?)"),
    (["--config.trian.steps=10"], "unknown config key config.trian.steps (did you mean config.train.steps?)"),
    (["--config.optimizer.grad_clip=0.5", "--config.optimizer.gradclip=1"],
     "unknown config key config.optimizer.gradclip (did you mean config.optimizer.grad_clip?)"),
    (["--config.zzzz=1"], "unknown config key config.zzzz (config has the keys cascade, optimizer, seed, train)"),
    (["--config.train.steps.x=1"], "unknown config key config.train.steps.x: config.train.steps is a value (10), "
                                   "not a section"),
    (["--config.cascade.stages[2]=x"], "unknown config key config.cascade.stages[2]: config.cascade.stages has no "
                                       "item [2]"),
    (["--config.train.steps=abc"], "config.train.steps must be an integer, got 'abc'"),
    (["--config.train.steps", "1.5"], "config.train.steps must be an integer, got '1.5'"),
    (["--config.optimizer.learning_rate=fast"], "config.optimizer.learning_rate must be a number, got 'fast'"),
    (["--config.train.progress_bar=maybe"], "config.train.progress_bar must be true or false, got 'maybe'"),
])
def test_a_faulty_override_fails_in_one_line_naming_the_key(config_file, args, message):
  assert _parse(config_file, *args) == (2, [f"train.py: {message}"])


def test_good_overrides_parse_and_other_flag_errors_keep_absls_message(config_file):
  argv = ["train.py", f"--config={config_file}", "--config.train.steps=7", "--noconfig.train.progress_bar"]
  values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, flag_values=values, sys_argv=argv)
  assert overrides.parse_flags(argv, flag_values=values) == ["train.py"]
  assert (holder.value.train.steps, holder.value.train.progress_bar) == (7, False)
  code, lines = _parse(config_file, "--config.train.steps")  # a missing value is absl's to report
  assert code == 1 and lines[0] == "FATAL Flags parsing error: Missing value for flag --config.train.steps"


def test_train_py_names_a_typod_override_and_stops_before_anything_runs(tmp_path):
  """Was a 53-line triple traceback from config_flags that never named config.train.stpes."""
  workdir = tmp_path / "run"
  done = subprocess.run([sys.executable, "train.py", "--config", "configs/default.py", "--workdir", str(workdir),
                         "--config.train.stpes=10"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 2
  assert done.stderr.splitlines() == [
      "train.py: unknown config key config.train.stpes (did you mean config.train.steps?)"]
  assert not workdir.exists()
