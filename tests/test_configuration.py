"""Bad configs fail before anything is built or compiled, with a message naming the key."""

import glob
import os

import pytest

from ml_collections import ConfigDict

from cascadejax import configuration, trainer
from cascadejax.embedding.collection import EmbeddingSection
from tests.conftest import tiny_config


def _set(c, dotted, value):
  """Sets a key as a config file would: replacing the field, whatever its type."""
  *path, last = dotted.split(".")
  node = c
  for p in path:
    if p not in node:
      node[p] = ConfigDict()
    node = node[p]
  if last in node:
    del node[last]
  node[last] = value


CASES = [
    ("cascade.retrieval.k", 8, r"config.cascade.retrieval.k=8 must be smaller than the 8 candidates"),
    ("cascade.prerank.k", 6, r"config.cascade.prerank.k=6 must be smaller than the 4 candidates .*config.cascade.retrieval.k"),
    ("cascade.gt_num", 3, r"config.cascade.gt_num=3 exceeds the last stage's k \(config.cascade.prerank.k=2\)"),
    ("cascade.prerank.model", "transformer", r"config.cascade.prerank.model: unknown model 'transformer'; available"),
    ("cascade.retrieval.model_kwargs.depth", 3, r"config.cascade.retrieval.model_kwargs: model 'two_tower' has no hyperparameter\(s\) \['depth'\]"),
    ("method.name", "lcron_v9", r"config.method.name: unknown method 'lcron_v9'"),
    ("method.independent.margin", 1.0, r"config.method.independent: unknown option\(s\) \['margin'\]"),
    ("optimizer.name", "lion", r"config.optimizer.name: unknown optimizer 'lion'"),
    ("train.steps", 0, r"config.train.steps must be >= 1"),
    ("train.steps", 1e4, r"config.train.steps must be of type int, got 10000.0"),
    ("train.stpes", 10, r"config.train: unknown option\(s\) \['stpes'\]"),
    ("train.eval_every", -1, r"config.train.eval_every must be >= 0"),
    ("optimizer.grad_clip", -1.0, r"config.optimizer.grad_clip must be >= 0"),
    ("embedding.replicate_below", 1.5, r"config.embedding.replicate_below must be of type int, got 1.5"),
    ("rerank.k", 9, r"config.rerank.k=9 must be in \[1, 2\]"),
    ("mesh.shape", (2, 2), r"config.mesh.axes .* and config.mesh.shape .* must have the same length"),
]


@pytest.mark.parametrize("key,value,message", CASES, ids=[c[0] for c in CASES])
def test_bad_value_names_the_key_before_anything_runs(tmp_path, key, value, message):
  c = tiny_config()
  _set(c, key, value)
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match=message):
    trainer.train_and_evaluate(c, str(workdir))
  assert not workdir.exists()  # failed before touching the workdir, data, or the compiler


def test_a_bad_rerank_section_fails_training_before_any_step(tmp_path):
  """`config.rerank` is used only by evaluation, but it is checked when the run is built: the item
  feature it names must be one of the data's."""
  c = tiny_config()
  c.rerank = ConfigDict(dict(method="mmr", feature="color"))
  with pytest.raises(ValueError, match=r"config.rerank.feature='color' is not an item feature of the data"):
    trainer.train_and_evaluate(c, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_added_keys_are_the_sections_defaults():
  """`ADDED_KEYS` is derived from the sections' defaults (one place), e.g. `replicate_below`."""
  assert configuration.ADDED_KEYS["embedding.replicate_below"] == EmbeddingSection.parse(
      dict(dim=4, shared=False)).replicate_below == 100_000
  assert configuration.ADDED_KEYS["train.eval_split"] == "test"
  c = tiny_config()
  del c.embedding["replicate_below"]
  assert configuration.validate(c).embedding.replicate_below == 100_000


@pytest.mark.parametrize("missing", ["train.steps", "cascade.gt_num", "optimizer", "cascade.prerank"])
def test_missing_required_key(missing):
  c = tiny_config()
  *path, last = missing.split(".")
  node = c
  for p in path:
    node = node[p]
  del node[last]
  with pytest.raises(ValueError, match=rf"config is missing required key config.{missing}"):
    configuration.validate(c)


def test_later_k_larger_than_earlier_in_three_stages():
  c = tiny_config(3)
  c.cascade.rank.k = 4  # prerank keeps 3
  with pytest.raises(ValueError, match=r"config.cascade.rank.k=4 must be smaller than the 3 candidates"):
    configuration.validate(c)


def test_resuming_with_another_config_is_refused(tmp_path):
  c = tiny_config()
  os.makedirs(tmp_path, exist_ok=True)
  configuration.save(c, str(tmp_path))
  changed = tiny_config()
  changed.optimizer.learning_rate = 0.5
  changed.train.steps = 99  # allowed: it only extends the run
  saved_lr = c.optimizer.learning_rate
  with pytest.raises(ValueError, match=rf"config.optimizer.learning_rate: {saved_lr} in the workdir, 0.5 now"):
    configuration.check_resumable(configuration.load(str(tmp_path)), changed, str(tmp_path))
  changed.optimizer.learning_rate = c.optimizer.learning_rate
  assert configuration.check_resumable(configuration.load(str(tmp_path)), changed, str(tmp_path)) == ["train.steps"]


def test_config_round_trips_through_the_workdir(tmp_path):
  c = tiny_config(3)
  configuration.save(c, str(tmp_path))
  assert configuration.flatten(configuration.load(str(tmp_path))) == configuration.flatten(c)


def test_from_file_reads_config_files_like_train_py(tmp_path):
  from configs import three_stage  # imports configs/default.py itself
  assert configuration.flatten(configuration.from_file("configs/three_stage.py")) == \
      configuration.flatten(three_stage.get_config())
  with pytest.raises(FileNotFoundError, match="cannot load config file"):
    configuration.from_file(str(tmp_path / "missing.txt"))
  # "file.py:argument" passes the argument to get_config, as config_flags does for train.py
  corpus = configuration.from_file("configs/corpus.py:three_stage")
  assert corpus.cascade.stages == ("retrieval", "prerank", "rank") and corpus.corpus.evaluate
  assert configuration.flatten(configuration.from_file("configs/corpus.py")) == \
      configuration.flatten(configuration.from_file("configs/corpus.py:default"))


@pytest.mark.parametrize("path", sorted(p for p in glob.glob("configs/*.py") if not p.endswith("__init__.py")))
def test_every_shipped_config_validates(path):
  config = configuration.from_file(path)
  configuration.validate(config)
  assert config.method.name in config.method, f"{path}: the config should spell out its method's options"


def test_a_run_saved_before_an_added_key_resumes_only_with_its_old_value(tmp_path):
  # A workdir saved before the row-sharding keys existed: no config.embedding.sharded etc.
  old = tiny_config()
  for key in [k.split(".", 1)[1] for k in configuration.ADDED_KEYS if k.startswith("embedding.")]:
    del old.embedding[key]
  configuration.save(old, str(tmp_path))
  current = tiny_config()
  assert configuration.check_resumable(configuration.load(str(tmp_path)), current, str(tmp_path)) == []
  current.embedding.sharded = True  # a behaviour the old run never had
  with pytest.raises(ValueError, match=r"config.embedding.sharded: False in the workdir, True now"):
    configuration.check_resumable(configuration.load(str(tmp_path)), current, str(tmp_path))


def test_runs_compare_only_their_own_methods_options_with_defaults_filled():
  """A run saved before an option was added to its method, or before another method's section
  existed, is the same run; a changed option of its own method is not."""
  saved = tiny_config()
  saved.method.name = "lcron"
  saved.method.lcron = ConfigDict({"temperature": 50.0})  # saved before topk_method existed: its default
  current = tiny_config()
  current.method.name = "lcron"
  current.method.lcron = ConfigDict({"temperature": 50.0, "topk_method": "neural_sort"})
  current.method.dftopk = ConfigDict({"topk_method": "lapsum"})  # another method's options
  assert configuration.differing_keys(saved, current) == []
  current.method.lcron.topk_method = "dftopk"
  assert configuration.differing_keys(saved, current) == ["method.lcron.topk_method"]
  current.method.lcron.topk_method = "neural_sort"
  current.method.name = "bce"
  assert "method.name" in configuration.differing_keys(saved, current)
