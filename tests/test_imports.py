"""The import graph of pythia/: no cycle anywhere (lazy imports inside functions included), and
the model side (pythia.layers, pythia.model, pythia.models.*) free of the system layer.

The graph is read from the source with ast, so an import inside a function counts as much as one
at the top of a module. A module's edge goes to the deepest pythia module an import names
(`from .system import threads` -> pythia.system.threads; `from . import kernels` ->
pythia.kernels); importing a package also runs its __init__, which is then a node of its own.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "pythia"
MODEL_SIDE = ("pythia.layers", "pythia.model", "pythia.models")
FORBIDDEN = ("pythia.system", "threading", "signal", "mmap", "concurrent", "ctypes", "multiprocessing", "mpi4py")


def module_names() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every module `name` imports, at any depth of its code: absolute names as written."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")
                up = up[:len(up) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            for a in node.names:
                full = f"{base}.{a.name}"
                found.add(full if full in known else base)
    return found


def graph() -> dict[str, set[str]]:
    known = module_names()
    return {n: {m for m in imports_of(n, p, known) if m in known and m != n} for n, p in known.items()}


def test_the_walk_sees_lazy_imports():
    # the model's generate() imports pythia.sampling inside the method: the walk must find it
    assert "pythia.sampling" in graph()["pythia.models.gpt2"]


def test_no_import_cycle_in_pythia():
    g = graph()
    state: dict[str, int] = {}                                  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        path.append(n)
        for m in sorted(g[n]):
            if state.get(m) == 1:
                cycle = path[path.index(m):] + [m]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if m not in state:
                visit(m)
        path.pop()
        state[n] = 2

    for n in sorted(g):
        if n not in state:
            visit(n)


def test_the_model_side_imports_no_system_layer_threads_signals_or_mmap():
    known = module_names()
    checked = [n for n in known if n.startswith(MODEL_SIDE)]
    assert {"pythia.layers", "pythia.model", "pythia.models.gpt2"} <= set(checked)
    for n in checked:
        bad = sorted(m for m in imports_of(n, known[n], known) if m.startswith(FORBIDDEN))
        assert not bad, f"{n} imports {bad}"
