"""The package's import graph: no cycles, layers that only point down, every module importable alone.

The graph is read from the source (every `import` statement, including ones inside functions), so
a cycle hidden behind a lazy import fails here as well.
"""

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cascadejax"

# Layer of each top-level part (a module or a subpackage): imports may only point to a lower or
# equal layer, and within a layer the graph must still be acyclic.
LAYERS = {
    "sections": 0, "data": 0, "ops": 0, "checkpoint": 0, "metric_writer": 0, "optimizer": 0,
    "overrides": 0,
    "files": 0, "faults": 0, "checksums": 0, "workdir_lock": 0, "huge_pages": 0,
    "embedding": 1, "losses": 1, "mesh": 1, "rerank": 1, "multitask": 3,
    "models": 2,
    "cascade": 3,
    "methods": 4, "metrics": 4, "corpus": 4,
    "configuration": 5,
    "steps": 6, "experiment": 6,
    "trainer": 7, "tuning": 7,
    "workdir": 7,
    "evaluate": 8, "export": 8, "compare": 8, "day_report": 8, "tables": 0,
}


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
  """The cascadejax modules `name` imports (a `from pkg import sub` counts as importing `pkg.sub`)."""
  path = MODULES[name]
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
      targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    else:
      continue
    out.update(t for t in targets if t in MODULES and t != name)
  return out


GRAPH = {name: imports_of(name) for name in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle as a list of modules (first == last), or None."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state and (cycle := visit(nxt)):
        return cycle
    state[node] = "done"
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state and (cycle := visit(node)):
      return cycle
  return None


def test_find_cycle_finds_a_planted_cycle():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_cycle():
  assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH))


def layer(name: str) -> int:
  part = name.split(".")[1] if "." in name else "__init__"
  if part not in LAYERS:
    raise AssertionError(f"{name}: add its top-level part {part!r} to LAYERS in {__file__}")
  return LAYERS[part]


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n != "cascadejax"))
def test_imports_point_down(name):
  up = sorted(t for t in GRAPH[name] if t != "cascadejax" and layer(t) > layer(name))
  assert not up, f"{name} (layer {layer(name)}) imports higher layers: {[(t, layer(t)) for t in up]}"


def test_every_module_imports_alone():
  """Each module imports in a fresh module table (only third-party modules stay loaded), so none
  relies on another having been imported first. A module behind an optional extra that is not
  installed must say which one (`pip install 'cascadejax[...]'`)."""
  script = (
      "import importlib, sys, traceback\n"
      "import jax, flax, optax, numpy\n"
      "bad = []\n"
      f"for name in {sorted(MODULES)!r}:\n"
      "  for m in [m for m in sys.modules if m == 'cascadejax' or m.startswith('cascadejax.')]:\n"
      "    del sys.modules[m]\n"
      "  try:\n"
      "    importlib.import_module(name)\n"
      "  except ImportError as err:\n"
      "    if \"pip install 'cascadejax[\" not in str(err):\n"
      "      bad.append(name + ': ' + str(err))\n"
      "  except Exception:\n"
      "    bad.append(name + ': ' + traceback.format_exc(limit=-1).strip().splitlines()[-1])\n"
      "print('\\n'.join(bad))\n"
      "sys.exit(1 if bad else 0)\n")
  done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stdout + done.stderr[-2000:]
