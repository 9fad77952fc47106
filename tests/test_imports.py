"""The import graph of ``core``: no cycles, dependencies pointing one way, no imports hidden in functions.

The graph is read from the source (the AST of every module under ``core/``), not from a running
interpreter, so a cycle dodged by importing inside a function is still an edge. An import under
``if TYPE_CHECKING:`` never runs and is left out; ``from pkg import name`` where ``pkg``'s
``__init__`` re-exports ``name`` lazily counts as an import of the module that defines it.
"""
from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "core"


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    #: Imported core module -> the lines importing it.
    imports: dict[str, list[int]] = field(default_factory=dict)
    #: (line, imported module) of every import of a core module inside a function.
    in_functions: list[tuple[int, str]] = field(default_factory=list)
    #: Imported core module -> the lines importing it under ``if TYPE_CHECKING:`` (annotations only).
    type_imports: dict[str, list[int]] = field(default_factory=dict)
    #: Names a package ``__init__`` re-exports lazily -> the module defining each.
    lazy_exports: dict[str, str] = field(default_factory=dict)


def module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def walk_imports(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool, bool]]:
    """Every import statement with (inside a function, under ``if TYPE_CHECKING``)."""
    def visit(node: ast.AST, in_function: bool, type_only: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom,
                                                                                  bool, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, in_function, type_only
            elif isinstance(child, ast.If) and is_type_checking(child.test):
                for stmt in child.body:
                    yield from visit(ast.Module(body=[stmt], type_ignores=[]), in_function, True)
                for stmt in child.orelse:
                    yield from visit(ast.Module(body=[stmt], type_ignores=[]), in_function, type_only)
            else:
                inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                yield from visit(child, inner, type_only)
    yield from visit(tree, False, False)


def absolute(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def load_modules() -> dict[str, Module]:
    modules: dict[str, Module] = {}
    trees: dict[str, ast.AST] = {}
    for path in sorted(CORE.rglob("*.py")):
        name, is_package = module_name(path)
        modules[name] = Module(name, path, is_package)
        trees[name] = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    # A package's lazily re-exported names are the ones its TYPE_CHECKING block imports.
    for name, module in modules.items():
        if not module.is_package:
            continue
        for node, _, type_only in walk_imports(trees[name]):
            if type_only and isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    module.lazy_exports[alias.asname or alias.name] = absolute(module, node)
    for name, module in modules.items():
        for node, in_function, type_only in walk_imports(trees[name]):
            if type_only:
                if not module.is_package:  # a package's own are its lazy re-exports, counted where used
                    for target in targets(module, node, modules):
                        module.type_imports.setdefault(target, []).append(node.lineno)
                continue
            for target in targets(module, node, modules):
                module.imports.setdefault(target, []).append(node.lineno)
                if in_function:
                    module.in_functions.append((node.lineno, target))
    return modules


def targets(module: Module, node: ast.Import | ast.ImportFrom, modules: dict[str, Module]) -> set[str]:
    """The core modules an import statement loads (not the packages it passes through)."""
    found: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name in modules:
                found.add(alias.name)
        return found
    source = absolute(module, node)
    if source not in modules:
        return found
    package = modules[source]
    for alias in node.names:
        submodule = f"{source}.{alias.name}"
        if submodule in modules:
            found.add(submodule)
        elif alias.name in package.lazy_exports and package.lazy_exports[alias.name] in modules:
            found.add(package.lazy_exports[alias.name])
        else:
            found.add(source)
    found.discard(module.name)
    return found


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; returns the components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def reachable(graph: dict[str, set[str]], start: str) -> dict[str, str]:
    """Every module ``start`` loads, directly or not, each with the module that imports it."""
    seen: dict[str, str] = {}
    todo = [start]
    while todo:
        node = todo.pop()
        for child in graph.get(node, ()):
            if child not in seen and child != start:
                seen[child] = node
                todo.append(child)
    return seen


def chain(via: dict[str, str], start: str, end: str) -> str:
    path = [end]
    while path[-1] != start:
        path.append(via[path[-1]])
    return " -> ".join(reversed(path))


@pytest.fixture(scope="module")
def modules() -> dict[str, Module]:
    return load_modules()


@pytest.fixture(scope="module")
def graph(modules: dict[str, Module]) -> dict[str, set[str]]:
    """Every import, type-only ones included: an annotation that points the wrong way is a back-edge too."""
    return {name: set(module.imports) | set(module.type_imports) for name, module in modules.items()}


def test_the_graph_is_read(modules: dict[str, Module], graph: dict[str, set[str]]) -> None:
    # Guards the reader itself: a parser that found no edges would pass every test below.
    assert "core.tasks.handler" in modules and "core.json" in modules
    assert "core.tasks.executor" in graph["core.tasks.handler"]
    assert "core.tasks.queryiter" in graph["core.extension"] or any(
        name.startswith("core.tasks.queryiter") for name in graph["core.extension"])


def test_no_cycles_among_core_modules(graph: dict[str, set[str]]) -> None:
    cycles = strongly_connected(graph)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_core_imports_inside_functions(modules: dict[str, Module]) -> None:
    found = [f"{m.path.relative_to(ROOT)}:{line} imports {target}"
             for m in modules.values() for line, target in m.in_functions]
    assert not found, "imports of core modules inside functions:\n" + "\n".join(found)


#: The web layer: pages, the module tree, the extension, the CLI and the local stack.
WEB = ("core.admin", "core.module", "core.extension", "core.app", "core.cli", "core.devserver", "core.testing")


def _in(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _violations(graph: dict[str, set[str]], lower: tuple[str, ...], exempt: tuple[str, ...],
                wrong: Callable[[str], bool]) -> list[str]:
    found = []
    for name in sorted(graph):
        if _in(name, lower) and not _in(name, exempt):
            via = reachable(graph, name)
            found += [chain(via, name, target) for target in sorted(via) if wrong(target)]
    return found


@pytest.mark.parametrize(("lower", "upper", "exempt"), [
    (("core.tasks",), ("core.admin",), ()),
    (("core.tasks",), WEB, ("core.tasks.handler",)),  # the handler is the tasks' own web view
    (("core.json",), ("core.db",), ()),
    (("core.json",), ("core.tasks",), ()),
    (("core.db",), ("core.tasks", *WEB), ()),  # the whole wing: entities, query, store, tags
    (("core.tasks.transports",), ("core.tasks.runtime",), ()),
], ids=["tasks-admin", "tasks-web", "json-db", "json-tasks", "db-tasks-web", "transports-runtime"])
def test_dependencies_point_one_way(graph: dict[str, set[str]], lower: tuple[str, ...], upper: tuple[str, ...],
                                    exempt: tuple[str, ...]) -> None:
    wrong = _violations(graph, lower, exempt, lambda target: _in(target, upper))
    assert not wrong, f"{' / '.join(lower)} load {' / '.join(upper)}:\n" + "\n".join(wrong)


@pytest.mark.parametrize(("lower", "allowed"), [
    (("core.json",), ("core.json",)),  # the codec (encoding, decoding) stands on the standard library alone
    (("core.tasks.transports",), ("core.tasks.transports", "core.tasks.errors", "core.tasks.queues",
                                  "core.tasks.google_admin", "core.config", "core.files", "core.lazy")),
], ids=["json", "transports"])
def test_the_lowest_rooms_load_only_what_they_stand_on(graph: dict[str, set[str]], lower: tuple[str, ...],
                                                       allowed: tuple[str, ...]) -> None:
    wrong = _violations(graph, lower, (), lambda target: not _in(target, allowed))
    assert not wrong, f"{' / '.join(lower)} load more than {allowed}:\n" + "\n".join(wrong)


def test_every_user_of_the_codec_loads_the_datastore_tags(graph: dict[str, set[str]]) -> None:
    # core.db.entities registers the ~k and ~e tags on import: a room that decodes payloads must load it.
    users = [name for name, imported in graph.items() if "core.json" in imported and name != "core.db.tags"]
    assert len(users) >= 5, users
    registrar = "core.db.entities"
    missing = [name for name in users if name != registrar and registrar not in reachable(graph, name)]
    assert not missing, f"these import core.json but not core.db: {missing}"


def test_the_checks_catch_what_they_look_for() -> None:
    # The helpers on a made-up graph: a cycle, an indirect import upwards.
    made_up = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(made_up) == [["a", "b", "c"]]
    assert chain(reachable(made_up, "d"), "d", "c") == "d -> a -> b -> c"
    tree = ast.parse("import x\nif TYPE_CHECKING:\n    import y\ndef f():\n    import z\n")
    seen = {node.names[0].name: (in_function, type_only) for node, in_function, type_only in walk_imports(tree)}
    assert seen == {"x": (False, False), "y": (False, True), "z": (True, False)}
