"""The package's import graph: no cycles, and no module imports a layer above its own (docs/architecture.md).

Read with `ast`, without importing anything. An import counts wherever it runs (module level or inside a
function); imports under `if TYPE_CHECKING:` never run and do not count. `from package import name` counts as
an import of `package.name` when that is a module, else of the package itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"

# Lowest first. A module may import its own layer or a lower one, never a higher one.
# "" is the root package, which holds only the version.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("", "io", "types", "lazy"),
    ("data", "runtime"),
    ("image_tasks", "tiny", "models", "checkpoints", "merging", "statistics"),
    ("training", "shipped", "evaluation"),
    ("adaptive",),
    ("report",),
    ("dag",),
    ("commands",),
    ("shell",),
)


def module_files() -> dict[str, Path]:
    modules = {}
    for path in sorted((SOURCE / "mergeflow").rglob("*.py")):
        parts = path.relative_to(SOURCE).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = module_files()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST):
    """Every node except those under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def imports_of(module: str) -> set[str]:
    """The mergeflow modules `module` imports at run time."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target)
    return {name for name in found if name in MODULES and name != module}


def layer_of(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    for rank, names in enumerate(LAYERS):
        if top in names:
            return rank
    raise AssertionError(f"{module}: its top-level name {top!r} is in no layer of LAYERS; add it")


GRAPH = {module: imports_of(module) for module in MODULES if module != "mergeflow"}


def test_every_module_has_a_layer() -> None:
    for module in GRAPH:
        layer_of(module)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_module_imports_a_higher_layer(module: str) -> None:
    upward = sorted(target for target in GRAPH[module] if layer_of(target) > layer_of(module))
    assert not upward, f"{module} (layer {layer_of(module)}) imports {upward} from higher layers"


def test_no_module_imports_its_own_package_init() -> None:
    """Inside a package, import the module that defines a name: the lazy re-exports are for callers outside."""
    offenders = []
    for module, targets in GRAPH.items():
        for target in targets:
            is_init = MODULES[target].name == "__init__.py"
            inside = module.startswith(target + ".") and target != "mergeflow"
            if is_init and inside and MODULES[module].name != "__init__.py":
                offenders.append(f"{module} -> {target}")
    assert not offenders, offenders


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as a path that returns to its start, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles() -> None:
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH) or [])


def test_the_checks_can_fail() -> None:
    """The cycle finder and the layer rule each catch a planted violation."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer_of("mergeflow.shell.launcher") > layer_of("mergeflow.commands.main") > layer_of("mergeflow.io")
    assert "mergeflow.commands.inputs" in GRAPH["mergeflow.commands.evaluation"]
