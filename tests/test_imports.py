"""The package's import graph (issue 19): no cycle, counting imports inside functions; inside
functions only optional dependencies and what a jax release may move; no module past ~600 lines.

Read from the source with `ast` (nothing is imported), so a cycle hidden in a function body is
found as surely as one at the top.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "albert_jax"

# Imported inside functions on purpose, each with a comment where it is imported: optional extras
# and readers only one path needs (Beam, TFDS, torch, ONNX, fsspec for buckets, the record
# formats), jax's TPU kernels (a release may move them), tensorboardX (imported without torch),
# Orbax internals, and jax itself in the data code (prepare's workers run without it).
LAZY_OK = ("apache_beam", "tensorflow_datasets", "torch", "jax2onnx", "onnx", "fsspec",
           "tensorboardX", "jax.experimental.pallas", "google_crc32c", "grain", "array_record",
           "orbax.checkpoint._src")


def _lazy_ok(target: str, module: str) -> bool:
  return (target.startswith(tuple(f"{m}." for m in LAZY_OK)) or target in LAZY_OK
          or (target == "jax" and module.startswith("albert_jax.data.")))
MAX_LINES = 650


def _modules() -> dict[str, Path]:
  found = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    found[name] = path
  return found


MODULES = _modules()


def _imports(path: Path, name: str):
  """(imported project module, line, inside a function) for every import in the file."""
  tree = ast.parse(path.read_text(encoding="utf-8"))
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  functions = [n for n in ast.walk(tree)
               if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))]
  inside = {id(n) for f in functions for n in ast.walk(f) if n is not f}
  for node in ast.walk(tree):
    targets = []
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                        + ([node.module] if node.module else []))
      # `from albert_jax import files` imports the module albert_jax.files.
      targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                 for a in node.names]
    for target in targets:
      yield target, node.lineno, id(node) in inside


def _graph() -> dict[str, set[str]]:
  graph = {}
  for name, path in MODULES.items():
    graph[name] = {t for t, _, _ in _imports(path, name) if t in MODULES and t != name
                   and not name.startswith(t + ".")}  # a package's __init__ runs first anyway
  return graph


def _cycle(graph) -> list[str] | None:
  """One import cycle, as the modules in order, or None."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_the_cycle_finder_finds_a_cycle():
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_import_graph_has_no_cycle():
  assert len(MODULES) > 30 and "albert_jax.checkpoints.hf" in MODULES
  graph = _graph()
  assert "albert_jax.init_from" in graph["albert_jax.train"]  # the graph sees real edges
  assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_no_project_module_is_imported_inside_a_function():
  lazy = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
          for name, path in MODULES.items() for target, line, inside in _imports(path, name)
          if inside and target.startswith("albert_jax")]
  assert not lazy, lazy


def test_imports_inside_functions_are_optional_dependencies_with_a_reason():
  found = []
  for name, path in MODULES.items():
    lines = path.read_text(encoding="utf-8").splitlines()
    for target, line, inside in _imports(path, name):
      if not inside or target.startswith("albert_jax"):
        continue
      reason = "#" in lines[line - 1] or lines[line - 2].strip().startswith("#")
      if not _lazy_ok(target, name) or not reason:
        found.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
                     + ("" if reason else " (no comment says why)"))
  assert not found, found


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_past_the_size_a_reader_holds(name):
  lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
  assert lines <= MAX_LINES, f"{MODULES[name]} has {lines} lines: split it by what its parts are"
