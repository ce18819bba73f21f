"""The layering ../shared/DESIGN.md fixes (core knows no plugin or task; plugins know no task), and
the import graph of core/ and tasks/: no cycle, no import hidden inside a function."""

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


PACKAGES = ("core", "tasks")
LAZY_IMPORTS_ALLOWED = {
    # The command line parses its arguments before importing torch and the registry, so that
    # --help answers at once (tests/test_cli_imports.py measures what each command imports).
    ("tasks/run.py", "tasks.cli.command"),
}
"""(file, module) of the only imports allowed inside a function in core/ and tasks/."""


def _module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules():
    return {_module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}


def _targets(node, modules):
    """The modules of core/ and tasks/ an import statement names (a submodule where it names one)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        names = [f"{node.module}.{alias.name}" for alias in node.names]
        names = [name if name in modules else node.module for name in names]
    return {name for name in names if name in modules}


def import_graph():
    """Module -> the modules it imports, from every import statement (in functions and under
    TYPE_CHECKING too). Only explicit statements count: importing ``a.b`` also runs ``a``'s
    ``__init__``, which here imports nothing of its package except in ``core``, whose
    modules never import ``core`` itself."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        imports = [
            n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and getattr(n, "level", 0) == 0
        ]
        graph[name] = set().union(*(_targets(node, modules) for node in imports)) if imports else set()
    return graph


def _cycle(graph):
    """One import cycle as a list of modules, or None."""
    state = {}

    def visit(node, path):
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state:
                found = visit(target, [*path, target])
                if found:
                    return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_the_graph_sees_every_kind_of_import():
    graph = import_graph()
    assert "tasks.cli.command" in graph["tasks.run"], "an import inside a function counts"
    assert "tasks.runs.spec" in graph["tasks.runs.context"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_core_and_tasks_have_no_import_cycle():
    assert _cycle(import_graph()) is None


def test_no_imports_inside_functions_but_the_allowed_ones():
    found = set()
    for path in _modules().values():
        tree = ast.parse(path.read_text(), str(path))
        for function in ast.walk(tree):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(function):
                    if isinstance(node, ast.Import):
                        found |= {(str(path.relative_to(ROOT)), alias.name) for alias in node.names}
                    elif isinstance(node, ast.ImportFrom):
                        found.add((str(path.relative_to(ROOT)), node.module))
    assert found == LAZY_IMPORTS_ALLOWED


def test_no_function_is_longer_than_60_lines():
    long = []
    for package in ("core", "plugins", "tasks"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert long == [], "split these into named steps"
