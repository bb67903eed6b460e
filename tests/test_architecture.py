"""Imports point down the flow (ARCHITECTURE.md): a package imports only from packages before it,
and no modules import each other in a circle. The test parses every import of the package —
function-level ones included, since a deferred import is still a dependency.

``KNOWN`` lists what is still to be untangled, each with the way out; the test fails when a new
violation appears and when a listed one is gone (so the list only shrinks).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

#: The flow, first to last; a package may import from its own layer and the ones before it.
LAYERS: list[set[str]] = [
    {"errors", "_io", "_provenance", "stats", "preprocess", "_onnx_match"},  # shared foundations
    {"data"},
    {"profiles", "models"},
    {"select"},
    {"train"},
    {"evaluate"},
    {"export"},
    {"inference", "runtime", "_runtime"},  # the two faces of a loaded bundle
    {"bench"},
    {"registry"},
    {"serve"},  # HTTP over the runtime, following the registry
    {"build"},
    {"cli"},
]

#: The package's compiled extension modules (built by scikit-build; no .py source).
COMPILED = ("edgeclf._runtime",)

#: Remaining debts: (importer layer, imported layer) for upward edges, or a frozenset of the
#: modules of a cycle. Each names its way out.
KNOWN: dict[object, str] = {}


def _layer_of(package: str) -> int:
    for i, members in enumerate(LAYERS):
        if package in members:
            return i
    raise AssertionError(f"edgeclf.{package} is in no layer of tests/test_architecture.py: add it where the flow puts it")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports() -> dict[str, set[str]]:
    """module -> the edgeclf modules it imports (relative imports resolved, names mapped to modules)."""
    files: dict[str, Path | None] = {_module_name(p): p for p in (REPO / "edgeclf").rglob("*.py")}
    # compiled extension modules are leaves of their own (`from edgeclf import _runtime` imports
    # the extension, not the package's __init__)
    files |= dict.fromkeys(COMPILED)
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        if path is None:
            continue
        pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in files]
                # `from pkg import submodule` depends on the submodule; `from mod import name` on mod
                targets = subs if len(subs) == len(node.names) else [base, *subs]
            for t in targets:
                while t and t not in files:
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t and t != mod and t.startswith("edgeclf"):
                    graph[mod].add(t)
    return graph


def _package(mod: str) -> str | None:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else None


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[frozenset[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(frozenset(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_imports_only_point_down_the_flow() -> None:
    graph = _imports()
    upward: dict[tuple[str, str], list[str]] = {}
    for mod, deps in graph.items():
        a = _package(mod)
        if a is None:  # edgeclf/__init__: the public re-exports, lazily
            continue
        for dep in deps:
            b = _package(dep)
            if b is None or a == b:
                continue
            if _layer_of(b) > _layer_of(a):
                upward.setdefault((a, b), []).append(f"{mod} -> {dep}")
    new = {k: v for k, v in upward.items() if k not in KNOWN}
    assert not new, "imports that point up the flow: " + "; ".join(f"{k}: {v}" for k, v in new.items())
    gone = [k for k in KNOWN if isinstance(k, tuple) and k not in upward]
    assert not gone, f"fixed, remove from KNOWN: {gone}"


def test_no_import_cycles() -> None:
    cycles = _cycles(_imports())
    known = [k for k in KNOWN if isinstance(k, frozenset)]
    new = [c for c in cycles if not any(c <= k for k in known)]
    assert not new, "modules importing each other in a circle: " + "; ".join(", ".join(sorted(c)) for c in new)
    gone = [k for k in known if not any(c & k for c in cycles)]
    assert not gone, f"fixed, remove from KNOWN: {gone}"
