"""The packages stay layered, acyclic and readable, checked from the source with ``ast``.

crypto at the bottom, storage on it, ai on both, gateway on top (README's layout): a lower
package importing a higher one, any import cycle between modules, or a module over 800 lines
fails here with the modules named. Every import counts, wherever it is written: at module
level, inside a function (a deferred import is still a dependency) and under
``if TYPE_CHECKING:`` (a type-only import still couples the layers and hides cycles).

Imports are read, not executed, so the check is fast and sees code paths tests never run.
An ``import a.b.c`` or ``from a.b import c`` is an edge to the deepest module of these
packages it names; the implicit import of parent packages' ``__init__`` is not counted (every
submodule would otherwise "import" its package, and packages that import their submodules
would all be cycles).
"""

from __future__ import annotations

import ast
import graphlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("crypto", "storage", "ai", "gateway")
"""The layered packages, lowest first: each may import those before it, none after it."""

FORBIDDEN: Mapping[str, frozenset[str]] = {
    package: frozenset(PACKAGES[i + 1 :]) for i, package in enumerate(PACKAGES)
}
"""For each package, the packages none of its modules may import (crypto: storage, ai and
gateway; storage: ai and gateway; ai: gateway)."""

MAX_LINES = 800


@dataclass(frozen=True, slots=True)
class Import:
    """One import statement: the module it names (relative imports resolved), the names a
    ``from`` import takes from it (any may be a submodule), and the line it is written on."""

    module: str
    line: int
    names: tuple[str, ...] = ()

    def targets(self, known: frozenset[str]) -> set[str]:
        """The modules of ``known`` this statement imports (the deepest each name reaches)."""
        names = [f"{self.module}.{name}" for name in self.names] or [self.module]
        return {t for t in (resolve(name, known) for name in names) if t is not None}


@dataclass(frozen=True, slots=True)
class Module:
    """One parsed module: its dotted name, its length and its import statements."""

    name: str
    lines: int
    imports: tuple[Import, ...]


def module_name(path: Path) -> str:
    """``gateway/ingest/rtp.py`` -> ``gateway.ingest.rtp``; a package's ``__init__.py`` is the
    package itself."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(name: str, source: str, *, is_package: bool = False) -> Iterator[Import]:
    """Every import statement in ``source`` (module ``name``), at any depth of the syntax
    tree, in source order. Relative imports are resolved against ``name``."""
    nodes = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Import | ast.ImportFrom)]
    for node in sorted(nodes, key=lambda n: (n.lineno, n.col_offset)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, node.lineno)
        else:
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                # A package's own name is the anchor of its ``from .`` imports.
                drop = node.level - 1 if is_package else node.level
                anchor = anchor[: len(anchor) - drop] if drop else anchor
                base = ".".join([*anchor, base] if base else anchor)
            yield Import(base, node.lineno, tuple(alias.name for alias in node.names))


def resolve(target: str, known: frozenset[str]) -> str | None:
    """The deepest module of ``known`` that ``target`` names (``a.b.C``, a class in module
    ``a.b``, names ``a.b``), or None for a module outside the packages."""
    parts = target.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


@cache
def modules() -> tuple[Module, ...]:
    """Every module of the layered packages, parsed once per test run."""
    paths = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))
    found = []
    for path in paths:
        source = path.read_text(encoding="utf-8")
        name = module_name(path)
        found.append(
            Module(
                name,
                len(source.splitlines()),
                tuple(imports_of(name, source, is_package=path.name == "__init__.py")),
            )
        )
    return tuple(found)


def graph(mods: tuple[Module, ...]) -> dict[str, dict[str, int]]:
    """module -> {module it imports: line of the first such import}, within the packages."""
    known = frozenset(m.name for m in mods)
    edges: dict[str, dict[str, int]] = {}
    for module in mods:
        out = edges.setdefault(module.name, {})
        for imp in module.imports:
            for target in sorted(imp.targets(known) - {module.name}):
                out.setdefault(target, imp.line)
    return edges


def cycle(edges: Mapping[str, Mapping[str, int]]) -> list[str] | None:
    """An import cycle as ``[a, b, ..., a]`` (each module imports the next), or None.

    graphlib reports one cycle at a time; once it is broken, the next one shows.
    """
    try:
        # TopologicalSorter reads each node's values as its predecessors (what it imports)
        # and spells the cycle against that direction, hence the reversal.
        graphlib.TopologicalSorter(edges).prepare()
    except graphlib.CycleError as e:
        return list(reversed(e.args[1]))
    return None


def describe(cycle: list[str], edges: Mapping[str, Mapping[str, int]]) -> str:
    """``a (line 3) -> b (line 9) -> a``: each module with the line of its import."""
    hops = [f"{a} (line {edges[a][b]})" for a, b in zip(cycle, cycle[1:], strict=False)]
    return " -> ".join([*hops, cycle[-1]])


# --- the checker on made-up sources: it sees what it must ----------------------------------


def test_imports_are_found_at_every_depth_and_under_type_checking() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "import storage.media.codecs\n"
        "if TYPE_CHECKING:\n"
        "    from gateway.state import Clock\n"
        "def f() -> None:\n"
        "    from ai import worker\n"
        "class C:\n"
        "    def g(self) -> None:\n"
        "        import crypto.errors as e\n"
        "from . import sibling\n"
        "from ..up import thing\n"
    )
    found = list(imports_of("crypto.pkg.mod", source))
    assert found == [
        Import("typing", 1, ("TYPE_CHECKING",)),
        Import("storage.media.codecs", 2),
        Import("gateway.state", 4, ("Clock",)),
        Import("ai", 6, ("worker",)),
        Import("crypto.errors", 9),
        Import("crypto.pkg", 10, ("sibling",)),
        Import("crypto.up", 11, ("thing",)),
    ]
    known = frozenset({"ai", "ai.worker", "gateway.state", "storage.media.codecs"})
    targets = [sorted(i.targets(known)) for i in found]
    assert targets == [[], ["storage.media.codecs"], ["gateway.state"], ["ai.worker"], [], [], []]
    package = list(imports_of("crypto.pkg", "from . import mod\n", is_package=True))
    assert package == [Import("crypto.pkg", 1, ("mod",))]


def test_cycles_are_found_and_spelled_out() -> None:
    edges = {
        "a": {"b": 1},
        "b": {"c": 2},
        "c": {"a": 3, "d": 4},
        "d": {},
        "e": {"f": 5},
        "f": {"e": 6},
    }
    found = cycle(edges)
    assert found is not None
    assert describe(found, edges) in {
        "a (line 1) -> b (line 2) -> c (line 3) -> a",
        "b (line 2) -> c (line 3) -> a (line 1) -> b",
        "c (line 3) -> a (line 1) -> b (line 2) -> c",
        "e (line 5) -> f (line 6) -> e",
        "f (line 6) -> e (line 5) -> f",
    }
    assert cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {}}) is None


# --- the packages themselves ----------------------------------------------------------------


def test_every_package_is_parsed() -> None:
    names = {m.name for m in modules()}
    assert set(PACKAGES) <= names
    assert {"gateway.state", "storage.media.codecs", "ai.worker", "crypto.errors"} <= names


def test_no_package_imports_a_layer_above_it() -> None:
    offences = [
        f"{module.name} (line {imp.line}) imports {imp.module}"
        for module in modules()
        for imp in module.imports
        if imp.module.split(".")[0] in FORBIDDEN[module.name.split(".")[0]]
    ]
    assert not offences, "imports from a higher layer:\n" + "\n".join(offences)


def test_no_import_cycle() -> None:
    edges = graph(modules())
    found = cycle(edges)
    assert found is None, "import cycle: " + describe(found, edges)


def test_no_module_is_over_800_lines() -> None:
    long = [f"{m.name} ({m.lines} lines)" for m in modules() if m.lines > MAX_LINES]
    assert not long, f"modules over {MAX_LINES} lines: " + ", ".join(long)
