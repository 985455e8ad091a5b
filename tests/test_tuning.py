"""`compare --tune`: the validation split, `train.eval_split`, and a tuning protocol that never reads the
test split or the test seeds."""

import csv
import json
import os

import numpy as np
import pytest

from cascadejax import compare, configuration, data as data_lib, metric_writer, trainer, tuning
from tests.conftest import tiny_config


def _loaded(fraction):
  c = tiny_config()
  if fraction is not None:
    c.data.valid_fraction = fraction
  return data_lib.load(c.data, num_stages=2)


def test_valid_split_is_the_tail_of_train_with_its_request_ids(monkeypatch):
  plain, held = _loaded(None), _loaded(0.1)
  assert set(plain.splits) == {"train", "test"} and set(held.splits) == {"train", "test", "valid"}
  n = int(np.ceil(0.1 * 256))  # 26 of tiny_config's 256 training requests
  assert (held.splits["train"].batch_size, held.splits["valid"].batch_size) == (256 - n, n)
  ids = plain.request_ids["train"]
  np.testing.assert_array_equal(held.request_ids["train"], ids[:-n])
  np.testing.assert_array_equal(held.request_ids["valid"], ids[-n:])
  np.testing.assert_array_equal(held.request_ids["test"], plain.request_ids["test"])
  assert not set(held.request_ids["valid"]) & set(held.request_ids["train"])
  for field in ("label", "stage", "mask"):  # the rows move with their ids, untouched
    before = getattr(plain.splits["train"], field)
    np.testing.assert_array_equal(getattr(held.splits["valid"], field), before[-n:])
    np.testing.assert_array_equal(getattr(held.splits["train"], field), before[:-n])
  np.testing.assert_array_equal(held.splits["test"].label, plain.splits["test"].label)
  np.testing.assert_array_equal(_loaded(0.1).splits["valid"].label, held.splits["valid"].label)  # deterministic
  assert held.report["valid_split"] == {"fraction": 0.1, "train_requests": 256 - n, "valid_requests": n}
  assert data_lib.num_valid(0.1, 30) == 3  # not 4, as ceil(0.1 * 30) would give in floating point

  # The reader never sees the key, so an on-disk cache entry does not depend on the fraction.
  seen = []
  reader = data_lib.READERS["synthetic"]
  monkeypatch.setitem(data_lib.READERS, "synthetic", lambda cfg, s: seen.append(set(cfg)) or reader(cfg, s))
  _loaded(0.25)
  assert "valid_fraction" not in seen[0]


@pytest.mark.parametrize("fraction, match", [
    (1.0, r"config.data.valid_fraction must be a number in \[0, 1\), got 1.0"),
    (True, r"config.data.valid_fraction must be a number"),
    (0.999, r"config.data.valid_fraction=0.999 of 256 training requests leaves no training request"),
])
def test_a_bad_valid_fraction_names_the_key(fraction, match):
  with pytest.raises(ValueError, match=match):
    _loaded(fraction)


def test_eval_split_is_checked_before_training_and_names_its_split(tmp_path):
  c = tiny_config()
  c.train.eval_split = 3
  with pytest.raises(ValueError, match="config.train.eval_split must be a split name"):
    configuration.validate(c)
  c = tiny_config()
  c.train.eval_split = "valid"
  with pytest.raises(ValueError, match=r"config.train.eval_split='valid' needs .*config.data.valid_fraction"):
    configuration.validate(c)
  c.data.valid_fraction, c.train.eval_split = 0.25, "dev"
  with pytest.raises(ValueError, match=r"config.train.eval_split: unknown split 'dev'; the data has "
                                       r"\['test', 'train', 'valid'\]"):
    trainer.train_and_evaluate(c, str(tmp_path / "dev"))
  assert not (tmp_path / "dev" / "checkpoints").exists()

  c.train.eval_split = "valid"
  c.train.steps, c.train.eval_every, c.train.log_every = 4, 2, 2
  report = trainer.train_and_evaluate(c, str(tmp_path / "valid"))
  lines = metric_writer.read(str(tmp_path / "valid"))
  assert {line["split"] for line in lines} == {"train", "valid"}
  assert [line["step"] for line in lines if line["split"] == "valid"] == [2, 4]
  assert lines[-1]["final"] and lines[-1]["split"] == "valid"
  assert lines[-1]["recall_e2e"] == report["recall_e2e"]


def test_a_run_saved_before_the_split_keys_resumes_and_config_files_need_not_name_them(tmp_path):
  old = tiny_config()  # configs/default.py names neither key: a run saved today looks like an old one
  assert "valid_fraction" not in old.data and "eval_split" not in old.train
  configuration.save(old, str(tmp_path))
  explicit = tiny_config()
  explicit.data.valid_fraction, explicit.train.eval_split = 0.0, "test"
  for current in (tiny_config(), explicit):
    assert configuration.check_resumable(configuration.load(str(tmp_path)), current, str(tmp_path)) == []
  (tmp_path / "new").mkdir()
  configuration.save(explicit, str(tmp_path / "new"))  # saved with the keys, resumed without them
  assert configuration.differing_keys(configuration.load(str(tmp_path / "new")), tiny_config()) == []
  explicit.data.valid_fraction = 0.1
  with pytest.raises(ValueError, match=r"config.data.valid_fraction: 0.0 in the workdir, 0.1 now"):
    configuration.check_resumable(configuration.load(str(tmp_path)), explicit, str(tmp_path))


@pytest.mark.parametrize("spec, match", [
    ("lcorn:temperature=1,2", r"method 'lcorn' is not one of the --methods entries"),
    ("lcron:temprature=1,2", r"--tune 'lcron:temprature=1,2' \(temprature=1\): config.method.lcron: unknown "
                             r"option\(s\) \['temprature'\]"),
    ("lcron:temperature=", r"no values to try for 'temperature'"),
    ("lcron:temperature=1,,2", r"no values to try"),
    ("lcron:temperature=1,1", r"a value is listed twice"),
    ("lcron", r"expected METHOD:OPTION=v1,v2"),
    ("lcron:temperature", r"expected METHOD:OPTION=v1,v2"),
    ("lcron:joint_k=gt_num,stage", r"the --methods entry 'lcron:joint_k=stage' already sets 'joint_k'"),
])
def test_bad_tune_specs_fail_before_training(tmp_path, spec, match):
  with pytest.raises(ValueError, match=match):
    compare.compare(tiny_config(), ["independent", "lcron:joint_k=stage"], 1, str(tmp_path), tune=[spec])
  assert not (tmp_path / "tune").exists() and not (tmp_path / "runs").exists()


def test_bad_tune_settings_fail_before_training(tmp_path):
  methods, spec = ["independent", "lcron"], ["lcron:temperature=1,2"]
  for kwargs, match in [(dict(valid_fraction=0.0), r"--valid_fraction must be in \(0, 1\)"),
                        (dict(tune_seeds=0), r"--tune_seeds must be >= 1")]:
    with pytest.raises(ValueError, match=match):
      compare.compare(tiny_config(), methods, 1, str(tmp_path), tune=spec, **kwargs)
  with pytest.raises(ValueError, match="one flag per --methods entry"):
    compare.compare(tiny_config(), methods, 1, str(tmp_path), tune=spec + ["lcron:joint_k=gt_num,stage"])
  with pytest.raises(ValueError, match="matches several of the --methods entries"):
    tuning.parse_tune("lcron:temperature=1", ["lcron:joint_k=stage", "lcron:joint_k=gt_num"])
  assert tuning.parse_tune("lcron:relax_k=(2, 1),gt_num", ["lcron"]).values == ("(2, 1)", "gt_num")
  assert not (tmp_path / "tune").exists()


def _scripted(calls, recall, diverged=()):
  """A `compare.run_one` stand-in: validation recall `recall(method, options, seed index)`, divergence
  for the (value, seed index) pairs in `diverged`."""

  def run_one(config, workdir):
    calls.append((config, workdir))
    options = config.method.get(config.method.name, {})
    seed = config.seed - tiny_config().seed
    if (options.get("temperature"), seed) in diverged:
      return {"diverged_step": 3, "wall_s": 1.0}
    return {"step": 4, "split": config.train.get("eval_split", "test"), "final": True, "wall_s": 1.0,
            "recall_e2e": recall(config.method.name, options, seed), "recall_e2e_random": 0.2}

  return run_one


def test_tuning_chooses_on_validation_seeds_only_then_trains_test_seeds_with_the_choice(tmp_path, monkeypatch):
  calls = []
  # lcron: temperature 50 is best on validation, 200 diverges once; icc: 0.1 and 1.0 tie (the first wins).
  valid = {("lcron", 10): 0.5, ("lcron", 50): 0.6, ("lcron", 200): 0.9, ("icc", 0.001): 0.3, ("icc", 0.1): 0.4,
           ("icc", 1.0): 0.4}
  def recall(method, options, seed):  # validation seeds alternate +0.00, +0.01; test seeds all 0.7
    return valid[method, options.get("temperature")] + 0.01 * (seed % 2) if seed >= 1000 else 0.7

  monkeypatch.setattr(compare, "run_one", _scripted(calls, recall, diverged={(200, 1001)}))
  tune = ["lcron:temperature=10,50,200", "icc:temperature=0.001,0.1,1.0"]
  rows = compare.compare(tiny_config(), ["independent", "lcron", "icc"], 2, str(tmp_path), tune=tune,
                         tune_seeds=3)

  tune_calls = [(c, w) for c, w in calls if "/tune/" in w]
  test_calls = [(c, w) for c, w in calls if "/runs/" in w]
  assert len(tune_calls) == 2 * 3 * 3 and len(test_calls) == 3 * 2 and len(calls) == 24
  assert calls[:len(tune_calls)] == tune_calls  # every choice is made before any test run starts
  for c, w in tune_calls:  # validation runs: the held-out split, seeds from TUNE_OFFSET
    assert c.train.eval_split == "valid" and c.data.valid_fraction == 0.1
    assert c.seed >= tuning.TUNE_OFFSET and c.data.seed >= tuning.TUNE_OFFSET
    value, j = c.method[c.method.name].temperature, c.seed - tuning.TUNE_OFFSET
    assert w == os.path.join(str(tmp_path), "tune", c.method.name, f"temperature={value}", f"seed{j}")
  for c, w in test_calls:  # test runs: exactly an untuned entry's config, on test seeds
    assert c.train.get("eval_split", "test") == "test" and c.data.get("valid_fraction", 0.0) == 0.0
    assert c.seed < 2 and c.data.seed < 2
  chosen = {c.method.name: c.method[c.method.name].get("temperature") for c, _ in test_calls}
  assert chosen == {"independent": None, "lcron": 50, "icc": 0.1}
  assert [r["method"] for r in rows[:3]] == ["independent", "lcron (tuned temperature=50)",
                                             "icc (tuned temperature=0.1)"]
  assert {w for _, w in test_calls} >= {os.path.join(str(tmp_path), "runs", "lcron_temperature=50", "seed1")}

  md = (tmp_path / "results.md").read_text()
  assert "| `lcron (tuned temperature=50)` |" in md and "## Tuning" in md
  assert "| `lcron` | `temperature` | 50 | 0.6033 ± 0.0058 | **chosen** |" in md
  assert "| `lcron` | `temperature` | 200 | 0.9000 ± 0.0000; diverged on 1/3 seeds (at steps 3) |  |" in md
  assert "| `icc` | `temperature` | 1.0 | 0.4033 ± 0.0058 |  |" in md
  with open(tmp_path / "tuning.csv") as f:
    table = list(csv.DictReader(f))
  assert [(r["method"], r["value"], r["chosen"]) for r in table if r["chosen"] == "True"] == [
      ("lcron", "50", "True"), ("icc", "0.1", "True")]
  np.testing.assert_allclose(float(table[1]["recall_e2e_mean"]), np.mean([0.6, 0.61, 0.6]))


def test_every_value_diverging_keeps_the_configured_value(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(compare, "run_one", _scripted(calls, lambda m, o, s: 0.5,
                                                    diverged={(v, s) for v in (1, 2) for s in (1000, 1001)}))
  rows = compare.compare(tiny_config(), ["lcron"], 1, str(tmp_path), tune=["lcron:temperature=1,2"],
                         tune_seeds=2)
  assert rows[0]["method"] == "lcron (untuned temperature=50.0: all diverged)"
  test = [c for c, w in calls if "/runs/" in w]
  assert len(test) == 1 and "temperature" not in test[0].method.get("lcron", {})  # the configured value
  md = (tmp_path / "results.md").read_text()
  assert "| `lcron` | `temperature` | 1 | diverged on 2/2 seeds (at steps 3, 3) |  |" in md
  assert "every value diverged: kept" in md and "**chosen**" not in md


def test_a_real_tiny_tuning_never_evaluates_on_test_and_resumes(tmp_path):
  config = tiny_config()
  config.train.steps, config.train.eval_every = 4, 0
  tune = ["lcron:temperature=10,50"]
  rows = compare.compare(config, ["lcron"], 1, str(tmp_path), tune=tune, tune_seeds=1, valid_fraction=0.25)
  recalls = {}
  for value in ("10", "50"):
    workdir = str(tmp_path / "tune" / "lcron" / f"temperature={value}" / "seed0")
    saved = configuration.load(workdir)
    assert (saved.train.eval_split, saved.data.valid_fraction) == ("valid", 0.25)
    assert saved.seed == saved.data.seed == tuning.TUNE_OFFSET  # tiny_config's seeds are 0
    lines = metric_writer.read(workdir)
    assert {line["split"] for line in lines} == {"train", "valid"}
    recalls[value] = lines[-1]["recall_e2e"]
  best = max(recalls, key=lambda v: (recalls[v], v == "10"))  # a tie goes to the first listed, 10
  assert [r["method"] for r in rows] == [f"lcron (tuned temperature={best})"]
  test_dir = tmp_path / "runs" / f"lcron_temperature={best}" / "seed0"
  assert configuration.load(str(test_dir)).method.lcron.temperature == int(best)
  assert metric_writer.read(str(test_dir))[-1]["split"] == "test"
  with open(tmp_path / "tuning.csv") as f:
    assert [r["chosen"] for r in csv.DictReader(f)] == [str(best == "10"), str(best == "50")]

  mtime = os.path.getmtime(tmp_path / "tune" / "lcron" / "temperature=50" / "seed0" / "metrics.jsonl")
  again = compare.compare(config, ["lcron"], 1, str(tmp_path), tune=tune, tune_seeds=1, valid_fraction=0.25)
  assert again == rows
  assert os.path.getmtime(tmp_path / "tune" / "lcron" / "temperature=50" / "seed0" / "metrics.jsonl") == mtime
  assert json.loads((test_dir / compare.WALL_FILE).read_text())["wall_s"] > 0
