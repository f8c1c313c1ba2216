"""The layering rules of docs/ARCHITECTURE.md, checked on the source (every import, including
imports inside functions and under ``TYPE_CHECKING``), so a move that breaks them fails here."""

from __future__ import annotations

import ast
from collections import defaultdict
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "aiprod"
MAX_LINES = 500
MAX_CONFIGS = 8

# package -> packages (or modules) of aiprod it must not import
FORBIDDEN: dict[str, set[str]] = {
    "engine": {"data", "training", "service", "db", "worker", "cli", "jobs"},
    "db": {"service", "worker", "cli", "training", "engine", "data", "jobs", "builtin"},
    "worker": {"service", "cli"},
    "jobs": {"service", "cli", "worker", "training", "data", "builtin"},
    "service": {"worker", "cli", "training", "engine", "data", "builtin"},
    "builtin": {"service", "db", "worker", "cli", "jobs"},
    "data": {"service", "db", "worker", "cli", "jobs", "engine", "training"},
    "training": {"service", "db", "worker", "cli", "jobs"},
}
# The engine reaches the built-in model's backend only through its backend table.
ENGINE_MAY_IMPORT_BUILTIN = {"aiprod.engine.backends"}
NO_TORCH = {"service", "jobs", "db", "core"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


@cache
def imports() -> dict[str, set[str]]:
    """Module -> every module it imports (aiprod modules resolved; others by top name)."""
    mods = modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                graph[name].update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    graph[name].add(sub if sub in mods else target)
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if parts[0] == "aiprod" and len(parts) > 1 else ""


def test_layers_import_only_downwards() -> None:
    bad = []
    for mod, targets in sorted(imports().items()):
        layer = _layer(mod)
        for target in sorted(targets):
            if not target.startswith("aiprod."):
                continue
            other = _layer(target)
            if layer == "core" and other not in ("core", ""):
                bad.append(f"{mod} -> {target} (core imports no other aiprod package)")
            elif other in FORBIDDEN.get(layer, set()):
                bad.append(f"{mod} -> {target} ({layer}/ must not import {other}/)")
            elif layer == "engine" and other == "builtin" and mod not in ENGINE_MAY_IMPORT_BUILTIN:
                bad.append(f"{mod} -> {target} (the engine reaches builtin/ via engine.backends)")
    assert not bad, "layering broken:\n" + "\n".join(bad)


def test_api_side_never_imports_torch() -> None:
    bad = [
        f"{mod} imports {t}"
        for mod, targets in sorted(imports().items())
        if _layer(mod) in NO_TORCH
        for t in targets
        if t.split(".")[0] in ("torch", "diffusers", "transformers")
    ]
    assert not bad, "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    mods = modules()
    graph = {m: {t for t in ts if t in mods and t != m} for m, ts in imports().items()}
    assert not _cycles(graph), _cycles(graph)


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_over_the_line_limit(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)}: {lines} lines (split it by concern)"


def test_configs_hold_only_product_configs() -> None:
    found = sorted(p.name for p in (ROOT / "configs").rglob("*.y*ml"))
    assert len(found) <= MAX_CONFIGS, found
