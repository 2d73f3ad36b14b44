"""The package's structure: imports run only downwards through the layers, and nothing imports in a cycle.

Every import counts, including the ones inside functions and under ``TYPE_CHECKING`` (a static tool sees them all).
The layers, bottom to top, are listed in :data:`LAYERS`; a module may import from its own package and from any
lower layer. The README's Layout section draws the same picture.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "v2a_sampler"

#: Rank of each top-level package or module of ``v2a_sampler`` (imports may only go to a lower rank).
LAYERS = {
    "errors": 0,
    "kernels": 0,
    "core": 1,
    "media": 1,
    "models": 2,
    "diagnostics": 2,
    "synth": 2,
    "mmaudio": 3,
    "lab": 3,
    "metrics": 3,
    "training": 4,
    "pipelines": 5,
    "frontends": 6,
    # the package itself and its documented short paths (aliases of core and front-end modules)
    "__init__": 7,
    "__main__": 7,
    "denoisers": 7,
    "guidance": 7,
    "solvers": 7,
    "cli": 7,
    "datagen": 7,
    "evaluate": 7,
    "tune": 7,
}


def _modules() -> dict[str, Path]:
    """``dotted name -> file`` for every module of the package (the ``kernels`` symlink followed)."""
    out = {}
    files = [Path(d) / f for d, _, names in os.walk(PACKAGE, followlinks=True) for f in names if f.endswith(".py")]
    for path in sorted(files):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = ["v2a_sampler", *rel.parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports (``from x import y`` counts ``x.y`` when that is a module), except its
    own parent packages."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                mod = ".".join(anchor + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t.startswith("v2a_sampler") and t != name and not name.startswith(t + "."):
                found.add(t)  # (a module's own parent packages are imported before it anyway)
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("v2a_sampler")):
            # the module itself must exist (a stale path would hide an edge from the checks below)
            mod = targets[0]
            if mod and mod not in modules:
                MISSING.append(f"{name}: {mod}")
    return found


MISSING: list[str] = []


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_package_has_a_layer(graph):
    assert {_layer(m) for m in graph} <= set(LAYERS), sorted({_layer(m) for m in graph} - set(LAYERS))


def test_imports_only_go_down(graph):
    wrong = [
        f"{m} -> {d}"
        for m, deps in graph.items()
        for d in deps
        if _layer(d) != _layer(m) and LAYERS[_layer(d)] >= LAYERS[_layer(m)] and _layer(d) != "__init__"
    ]
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_the_core_imports_nothing_above_it(graph):
    core = {m: deps for m, deps in graph.items() if _layer(m) == "core"}
    assert core and all(_layer(d) in ("core", "kernels") for deps in core.values() for d in deps)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_between_modules(graph):
    # a package's __init__ re-exporting its own modules is not a cycle of the design: leave those edges out
    edges = {m: {d for d in deps if not (m.startswith(d + ".") and d in graph)} for m, deps in graph.items()}
    assert _cycles(edges) == []


def test_no_import_cycles_between_layers(graph):
    edges: dict[str, set[str]] = {}
    for m, deps in graph.items():
        if LAYERS[_layer(m)] == LAYERS["__init__"]:
            continue
        edges.setdefault(_layer(m), set()).update(_layer(d) for d in deps if _layer(d) != _layer(m))
    assert _cycles(edges) == []


def test_kernels_are_a_real_import_of_the_core(graph):
    assert (PACKAGE / "kernels").is_symlink() and (PACKAGE / "kernels").resolve() == ROOT / "kernels"
    assert "v2a_sampler.kernels" in graph["v2a_sampler.core.engine"]


def test_every_import_of_the_package_resolves(graph):
    assert MISSING == [], "imports of modules that do not exist:\n" + "\n".join(MISSING)
