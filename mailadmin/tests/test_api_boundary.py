"""The console, the document service and /metrics stand beside the REST API, not on it.

They share access rules (``mailadmin.access``), paging (``mailadmin.paging``) and the
document's schema (``mailadmin.docschema``) with the API; none of them, nor those neutral
modules, imports ``mailadmin.api`` (only ``mailadmin/urls.py`` routes to it). Every import
statement counts, a function's own included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1]
BESIDE_THE_API = sorted(
    [
        *(PACKAGE / "console").glob("*.py"),
        *(PACKAGE / name for name in ("configdoc.py", "metrics.py")),
        *(PACKAGE / name for name in ("access.py", "paging.py", "docschema.py")),
    ]
)


def imported_modules(source: str, package: str) -> set[str]:
    """Every module an import statement in ``source`` (a module of ``package``) names,
    relative ones resolved, and for ``from X import a`` also ``X.a`` (``from mailadmin
    import api`` imports the API)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0]
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", BESIDE_THE_API, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_it_imports_nothing_from_the_api(path: Path) -> None:
    package = ".".join(path.relative_to(PACKAGE.parent).parts[:-1])
    found = imported_modules(path.read_text(), package)
    api = sorted(n for n in found if n == "mailadmin.api" or n.startswith("mailadmin.api."))
    assert api == [], f"{path.relative_to(PACKAGE)} imports {api}"


def test_the_check_sees_every_form_of_import() -> None:
    source = (
        "import mailadmin.api.views\n"
        "from mailadmin import api\n"
        "from ..api.permissions import IsReader\n"
        "from . import forms\n"
        "def later():\n"
        "    from mailadmin.api.queue_views import ACTIONS\n"
    )
    assert imported_modules(source, "mailadmin.console") >= {
        "mailadmin.api.views",
        "mailadmin.api",
        "mailadmin.api.permissions",
        "mailadmin.api.queue_views",
        "mailadmin.console.forms",
    }
