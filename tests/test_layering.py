"""The layering DESIGN.md fixes: core knows no plugin or task; plugins know no task."""

import ast

import pytest

from tests.conftest import ROOT


def imported_packages(package):
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {(path.name, alias.name.split(".")[0]) for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add((path.name, node.module.split(".")[0]))
    return found


@pytest.mark.parametrize(("package", "forbidden"), [("core", {"plugins", "tasks"}), ("plugins", {"tasks"})])
def test_no_upward_imports(package, forbidden):
    bad = sorted((name, target) for name, target in imported_packages(package) if target in forbidden)
    assert bad == []


def test_tasks_reach_plugins_only_through_the_registry():
    assert not any(target == "plugins" for _, target in imported_packages("tasks"))
