"""`cascadejax.sections.Section`: parsing a config section into its frozen dataclass."""

import dataclasses

import pytest
from ml_collections import ConfigDict

from cascadejax.sections import Section, flatten, plain


@dataclasses.dataclass(frozen=True)
class Example(Section):
  KEY = "example"
  ADDED = ("axes", "rate")
  size: int
  axes: tuple[str, ...] = ("model",)
  rate: float = 0.5
  name: str | None = None

  def check(self):
    if self.size < 1:
      raise ValueError(f"config.example.size must be >= 1, got {self.size}")


@dataclasses.dataclass(frozen=True)
class Open(Section):
  KEY = "open"
  OPEN = True
  size: int


def test_defaults_fill_absent_keys_and_values_are_converted():
  s = Example.parse(ConfigDict(dict(size=3, axes=["data", "model"], rate=1)))
  assert s == Example(size=3, axes=("data", "model"), rate=1.0, name=None)
  assert isinstance(s.rate, float) and isinstance(s.axes, tuple)
  assert Example.parse({"size": 2}).axes == ("model",)
  assert Example.parse({"size": 2, "name": "x"}).name == "x"
  with pytest.raises(dataclasses.FrozenInstanceError):
    s.size = 4


@pytest.mark.parametrize("given, message", [
    ({}, r"config is missing required key config.example.size"),
    ({"size": 2, "sise": 3}, r"config.example: unknown option\(s\) \['sise'\]; it takes \['axes', 'name', 'rate', 'size'\]"),
    ({"size": True}, r"config.example.size must be of type int, got True"),
    ({"size": 2.0}, r"config.example.size must be of type int, got 2.0"),
    ({"size": 2, "axes": "model"}, r"config.example.axes must be of type"),
    ({"size": 2, "axes": ("a", 1)}, r"config.example.axes must be of type str, got 1"),
    ({"size": 2, "rate": "fast"}, r"config.example.rate must be of type float, got 'fast'"),
    ({"size": 2, "name": 3}, r"config.example.name must be of type"),
    ({"size": 0}, r"config.example.size must be >= 1, got 0"),
])
def test_bad_sections_name_the_key(given, message):
  with pytest.raises(ValueError, match=message):
    Example.parse(given)


def test_open_sections_pass_other_keys_to_their_owner():
  assert Open.parse({"size": 1, "reader_key": 2}) == Open(size=1)


def test_added_keys_are_the_defaults_of_the_listed_fields():
  assert Example.added_keys() == {"example.axes": ("model",), "example.rate": 0.5}


def test_plain_and_flatten():
  c = ConfigDict(dict(a=dict(b=[1, 2], c=dict(d="x")), e=3))
  assert plain(c) == {"a": {"b": (1, 2), "c": {"d": "x"}}, "e": 3}
  assert flatten(c) == {"a.b": (1, 2), "a.c.d": "x", "e": 3}
