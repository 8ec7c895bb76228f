"""No import cycles between the modules of `safety_modules/` (a small AST check).

Every import counts: absolute and relative, at module level, inside functions, and under
``if TYPE_CHECKING:`` (a typing-only import is still a dependency of the design). An import of
``pkg.mod`` or ``from pkg import mod`` is an edge to that module; ``from pkg import name`` (not a
module) is an edge to the package's ``__init__``. Importing a submodule does not count as
importing its parent packages (Python runs those first, without a cycle). A package whose ``__init__``
loads its public names lazily lists them in ``__init__.pyi``; those imports count as the ``__init__``'s.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "safety_modules"


def module_files(package_dir: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``), for every .py file under ``package_dir``."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules[".".join(parts)] = (path, is_package)
    return modules


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (anywhere in its file)."""
    modules = module_files(package_dir)
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        package = name.split(".") if is_package else name.split(".")[:-1]
        targets: set[str] = set()
        sources = [path, *([path.with_suffix(".pyi")] if path.with_suffix(".pyi").exists() else [])]
        nodes = [node for source in sources for node in ast.walk(ast.parse(source.read_text(), filename=str(source)))]
        for node in nodes:
            if isinstance(node, ast.Import):
                targets.update(_known_prefix(alias.name, modules) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    if node.level - 1 > len(package):
                        raise ValueError(f"{path}:{node.lineno}: relative import beyond the top package")
                    base = ".".join(package[: len(package) - (node.level - 1)] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    targets.add(submodule if submodule in modules else _known_prefix(base, modules))
        graph[name] = {t for t in targets if t is not None and t != name}
    return graph


def _known_prefix(dotted: str, modules: dict) -> str | None:
    """The longest prefix of ``dotted`` that is a module of the package (None for outside imports)."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected group of modules that import each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm; the package is small enough for recursion
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(_cycle_through(min(group), group, graph) for group in groups)


def _cycle_through(start: str, group: set[str], graph: dict[str, set[str]]) -> list[str]:
    """The shortest path start -> ... -> start inside ``group`` (breadth first)."""
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & group):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if nxt not in parents:
                    parents[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(group)}")


def describe(cycles: list[list[str]]) -> str:
    return "\n".join("import cycle: " + " -> ".join(cycle) for cycle in cycles)


def test_no_import_cycles_in_the_package():
    cycles = find_cycles(import_graph(PACKAGE))
    assert not cycles, f"{len(cycles)} import cycle(s) in safety_modules/:\n{describe(cycles)}"


def test_the_gate_sits_above_the_wrapper():
    graph = import_graph(PACKAGE)
    below_the_gate = {
        "safety_modules.modeling.safe_llava",
        "safety_modules.policy",
        "safety_modules.images",
        "safety_modules.modeling.llava.conversation",
    }
    assert "safety_modules.modeling.safe_llava" in graph["safety_modules.gate.gate"]
    for name in below_the_gate:
        reached = _reachable(graph, name)
        assert not any(m.startswith("safety_modules.gate") for m in reached), f"{name} reaches the gate"


def test_the_library_does_not_import_its_test_fixtures():
    """`testing/` (tiny model, synthetic corpus, demo jobs) is for the tests, benches and the CLI only."""
    graph = import_graph(PACKAGE)
    users = {
        name: sorted(t for t in targets if t.startswith("safety_modules.testing"))
        for name, targets in graph.items()
        if not name.startswith(("safety_modules.testing", "safety_modules.cli"))
    }
    offenders = {name: targets for name, targets in users.items() if targets}
    assert not offenders, f"library modules import the test fixtures: {offenders}"


def test_the_server_and_the_scan_share_what_they_both_use_from_below():
    """The server scores with the gate's `VisionScorer` and the images' blank image: it never imports the scan
    or a benchmark loader, and the gate, below both, imports neither."""
    graph = import_graph(PACKAGE)
    for name, targets in graph.items():
        if name.startswith("safety_modules.serve"):
            sideways = sorted(t for t in targets if t.startswith(("safety_modules.scan", "safety_modules.data")))
            assert not sideways, f"{name} imports {sideways}"
        if name.startswith("safety_modules.gate"):
            above = sorted(
                t for t in _reachable(graph, name) if t.startswith(("safety_modules.scan", "safety_modules.serve"))
            )
            assert not above, f"{name} reaches {above}"


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_checker_finds_cycles_of_every_kind(tmp_path):
    """A synthetic package with cycles hidden in a function, under TYPE_CHECKING and through absolute imports."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "lazy").mkdir()
    files = {
        "__init__.py": "from .a import run\n",
        "a.py": "def run():\n    from . import b\n    return b\n",
        "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import run\n",
        "c.py": "import os\nfrom .a import run\n",  # imports a, but nothing imports c: no cycle
        "sub/__init__.py": "",
        "sub/x.py": "import pkg.sub.y\nfrom ..c import run\n",
        "sub/y.py": "from pkg.sub import x\n",
        "lazy/__init__.py": "import lazy_loader\n",
        "lazy/__init__.pyi": "from .m import f as f\n",  # the lazy package's names import from m
        "lazy/m.py": "from pkg.lazy import f\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph = import_graph(pkg)
    assert graph["pkg"] == {"pkg.a"} and graph["pkg.sub.x"] == {"pkg.sub.y", "pkg.c"}
    cycles = find_cycles(graph)
    assert graph["pkg.lazy"] == {"pkg.lazy.m"}
    assert cycles == [
        ["pkg.a", "pkg.b", "pkg.a"],
        ["pkg.lazy", "pkg.lazy.m", "pkg.lazy"],
        ["pkg.sub.x", "pkg.sub.y", "pkg.sub.x"],
    ]
    assert describe(cycles[::2]) == (
        "import cycle: pkg.a -> pkg.b -> pkg.a\nimport cycle: pkg.sub.x -> pkg.sub.y -> pkg.sub.x"
    )

    # Removing the typing-only import or the stub's breaks those cycles; a three-module ring is found whole.
    (pkg / "b.py").write_text("")
    (pkg / "lazy/__init__.pyi").write_text("")
    (pkg / "sub/y.py").write_text("")
    (pkg / "sub/z.py").write_text("from . import x\n")
    (pkg / "sub/y.py").write_text("from .z import *\n")
    assert find_cycles(import_graph(pkg)) == [["pkg.sub.x", "pkg.sub.y", "pkg.sub.z", "pkg.sub.x"]]
