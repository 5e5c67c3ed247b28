"""The product's layers, read from its source with ``ast``: imports flow downward only
(core <- stores <- cache <- front), the cache layer knows neither aiohttp nor the front, no
import circle among ``proxy.*`` modules, and no file under ``proxy/`` over 600 lines.

Every import counts, also those under ``TYPE_CHECKING`` and inside functions: a circle that
only the type checker walks still means the modules cannot be read one without the other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "proxy"
#: Lowest first: a module may import from its own layer and those before it.
LAYERS = ("core", "stores", "cache", "front")
MAX_LINES = 600


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, path: Path) -> Iterator[str]:
    """Every module name an import statement of ``path`` names (absolute or relative)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def graph(known: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the ``proxy.*`` modules it imports (a name imported from a package that is a
    module of its own counts as that module)."""
    return {
        name: {dep for dep in imported(name, path) if dep in known and dep != name}
        for name, path in known.items()
    }


def external(path: Path, name: str) -> set[str]:
    return {dep.split(".")[0] for dep in imported(name, path) if not dep.startswith("proxy")}


def layer(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), plus self-loops."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(edges[node]):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_imports_under_type_checking_and_relative_ones(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import sibling\n"
        "if TYPE_CHECKING:\n    from proxy.front.server import Front\n"
        "def f():\n    import proxy.app\n"
    )
    names = set(imported("proxy.front.m", source))
    assert {"proxy.front.sibling", "proxy.front.server", "proxy.app"} <= names


def test_no_import_circle_among_proxy_modules() -> None:
    assert cycles(graph(modules())) == []


def test_imports_flow_downward_only() -> None:
    upward = [
        f"{name} -> {dep}"
        for name, deps in graph(modules()).items()
        for dep in sorted(deps)
        if (mine := layer(name)) is not None
        and (theirs := layer(dep)) is not None
        and LAYERS.index(theirs) > LAYERS.index(mine)
    ]
    assert upward == []


def test_the_cache_layer_does_not_import_the_front() -> None:
    edges = graph(modules())
    offending = [
        f"{name} -> {dep}"
        for name, deps in edges.items()
        if layer(name) in ("core", "stores", "cache")
        for dep in sorted(deps)
        if layer(dep) == "front"
    ]
    assert offending == []


def test_nothing_under_proxy_cache_imports_aiohttp() -> None:
    offending = [
        name
        for name, path in modules().items()
        if layer(name) == "cache" and "aiohttp" in external(path, name)
    ]
    assert offending == []


def test_the_front_connection_knows_no_server() -> None:
    """The connection, the fast path and the responder are typed by ``proxy.front.seams``."""
    edges = graph(modules())
    for name in ("proxy.front.connection", "proxy.front.prepared", "proxy.front.responder"):
        assert "proxy.front.server" not in edges[name], name
        others = {"proxy.front.connection", "proxy.front.prepared", "proxy.front.responder"}
        assert not edges[name] & (others - {name}), name


def long_files() -> list[str]:
    return [
        f"{path.relative_to(ROOT)}: {lines}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    ]


def test_no_front_file_over_600_lines() -> None:
    assert [entry for entry in long_files() if entry.startswith("proxy/front/")] == []


def test_no_file_under_proxy_over_600_lines() -> None:
    assert long_files() == []
