"""The project's modules import each other in one direction: no circle, counting every import
(module level, under ``TYPE_CHECKING`` and inside functions), since a circle of any kind makes import
order matter and hides which module owns a name."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("operators", "models", "bench")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.Module, modules: set[str]) -> set[str]:
    """The project modules a file imports anywhere (``from pkg import mod`` counts as ``pkg.mod``)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in modules}


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports, over operators/, models/ and bench/."""
    paths = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    modules = {_module_name(p) for p in paths}
    return {_module_name(p): _imports(ast.parse(p.read_text()), modules) - {_module_name(p)} for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """Modules forming a circle (the first repeated at the end), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)) is not None:
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_cycle_finder_finds_a_planted_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_circle() -> None:
    graph = import_graph()
    # the scan sees module-level, TYPE_CHECKING-only and function-level imports
    assert "models.deq" in graph["models.luser"] and "models.deq" in graph["models.base"]
    assert "models" in graph["bench.harness.run"]
    cycle = find_cycle(graph)
    assert cycle is None, f"import circle: {' -> '.join(cycle or [])}"


#: The floors, lowest first: a module may import only from its own floor or a lower one.
#: (`bench.schema` is torch-free and imports nothing of the project: every floor above models may use it.)
FLOORS: tuple[tuple[str, ...], ...] = (
    ("operators",),
    ("models",),
    ("bench.schema",),
    ("bench.meters", "bench.data"),
    ("bench.harness",),
    ("bench.analysis", "bench.gate", "bench.gpu_check", "bench.benchmarks"),
    ("bench.cli", "bench.__main__"),
)


def floor_of(module: str) -> int:
    """The floor a module stands on (ValueError for a module no floor names)."""
    for level, prefixes in enumerate(FLOORS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return level
    raise ValueError(f"module {module} is on no floor of {FLOORS}")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """'a -> b' for every import of a module on a higher floor."""
    return sorted(
        f"{m} -> {d}" for m, deps in graph.items() if m != "bench" for d in deps if floor_of(d) > floor_of(m)
    )


def test_upward_import_finder_finds_a_planted_one() -> None:
    assert upward_imports({"models.lu": {"bench.harness.run"}, "bench.cli": {"models.lu"}}) == [
        "models.lu -> bench.harness.run"
    ]


def test_imports_go_one_way_down_the_floors() -> None:
    graph = import_graph()
    assert graph["bench"] == set(), "bench/__init__.py imports nothing of the project"
    assert upward_imports(graph) == []


def test_no_module_is_over_450_lines() -> None:
    paths = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    long = {str(p.relative_to(ROOT)): n for p in paths if (n := len(p.read_text().splitlines())) > 450}
    assert long == {}
