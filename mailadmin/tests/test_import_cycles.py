"""No import cycles among the ``mailadmin`` modules, counting imports inside functions.

A cycle through a function-level import runs today only because the import happens
late; it still ties the two modules together (``tasks -> services.delivery.runs ->
services.delivery.reports -> tasks`` was one). The graph is read from the source with
``ast``, so it sees every import whether or not a test runs the function holding it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "mailadmin"


def module_names(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of ``package`` (tests and migrations left out) by dotted name."""
    names = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if "tests" in parts or "migrations" in parts:
            continue
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names[name] = path
    return names


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> Iterator[str]:
    """The dotted names an import statement loads: for ``from a import b``, the module
    ``a.b`` when there is one, else ``a`` (``b`` is then a name in it)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
        return
    base = node.module or ""
    if node.level:
        parent = module.split(".") if is_package else module.split(".")[:-1]
        parent = parent[: len(parent) - (node.level - 1)]
        base = ".".join([*parent, base] if base else parent)
    for alias in node.names:
        yield f"{base}.{alias.name}"
        yield base


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at the top level or in a function."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = list(_imported(node, name, path.name == "__init__.py"))
                if isinstance(node, ast.ImportFrom):  # pairs: (a.b, a)
                    names = [
                        sub if sub in modules else base
                        for sub, base in zip(names[::2], names[1::2], strict=True)
                    ]
                edges.update(n for n in names if n in modules and n != name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as its modules in order (the first repeated at the end)."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path = [start]
        stack = [iter(sorted(graph.get(start, ())))]
        while stack:
            child = next(stack[-1], None)
            if child is None:
                stack.pop()
                done.add(path.pop())
            elif child in path:
                return [*path[path.index(child) :], child]
            elif child not in done:
                path.append(child)
                stack.append(iter(sorted(graph.get(child, ()))))
    return None


def test_the_graph_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from .celery import app\n")
    (package / "celery.py").write_text("app = 1\n")
    (package / "tasks.py").write_text("from pkg.sub import work\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "work.py").write_text("from pkg.sub.report import spool\n")
    (package / "sub" / "report.py").write_text(
        "def spool():\n    from pkg.tasks import enqueue\n    from . import work\n"
    )
    graph = import_graph(module_names(tmp_path, "pkg"))
    assert graph["pkg"] == {"pkg.celery"}
    assert graph["pkg.sub.report"] == {"pkg.tasks", "pkg.sub.work"}
    assert find_cycle(graph) == ["pkg.sub.report", "pkg.sub.work", "pkg.sub.report"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_mailadmin_has_no_import_cycles() -> None:
    cycle = find_cycle(import_graph(module_names()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_worker_and_beat_start_hooks_are_connected_by_importing_mailadmin() -> None:
    # They left mailadmin/celery.py to break a cycle; `celery -A mailadmin` imports only
    # the package, so the package must connect them.
    from celery.signals import beat_init, worker_init

    from mailadmin import celery_signals

    def connected(signal: Any) -> list[Any]:
        return [ref() for _key, ref in signal.receivers]

    assert celery_signals._refuse_unsafe_start in connected(worker_init)
    assert celery_signals._refuse_unsafe_start in connected(beat_init)
    assert celery_signals._publish_config_at_start in connected(beat_init)
