"""How the modules import each other: no cycle anywhere in pythia/ or benchmarks/, and a model
that needs nothing of the system layer.

Imports are read from the source (every `import` and `from ... import` statement, those inside
functions included, which a run would only meet on some paths), so a lazy import that closes a
cycle is found without running anything. `from package import name` depends on the submodule
`package.name` when there is one, else on the package; importing a submodule initialises its
parent packages first, which is no cycle and is not counted.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The core's model modules and what they may not import: the model is NumPy, math, dataclasses,
# the kernels and the errors; threads, signals, memory maps and the system layer wrap it.
MODEL_FILES = ["pythia/layers.py", "pythia/models/*.py", "pythia/model.py"]
NOT_IN_THE_MODEL = ("pythia.system", "threading", "signal", "mmap")


def module_files(root: Path, package: str | None) -> dict[str, Path]:
    """Dotted module name -> file, for a package folder (pythia) or a folder of scripts (benchmarks)."""
    out = {}
    for p in sorted(root.rglob("*.py")):
        parts = list(p.relative_to(root.parent if package else root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def import_statements(path: Path, name: str) -> list[tuple[str, list[str]]]:
    """Each import of the file as (absolute module, the names taken from it; [] for `import module`)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:                              # relative: the package, up level - 1, then module
                parts = package.split(".")
                module = ".".join(parts[:len(parts) - node.level + 1] + ([module] if module else []))
            found.append((module, [a.name for a in node.names]))
    return found


def imported_names(path: Path, name: str) -> set[str]:
    """Every module the file names in an import, and `module.name` for each name taken from one."""
    return {n for module, names in import_statements(path, name) for n in (module, *(f"{module}.{x}" for x in names))}


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of `modules` it imports directly: for `from m import x`, the submodule
    m.x when there is one, else m."""
    graph = {}
    for name, path in modules.items():
        deps = set()
        for module, names in import_statements(path, name):
            deps.update([f"{module}.{x}" if f"{module}.{x}" in modules else module for x in names] or [module])
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_lazy_cycle_and_passes_a_package_importing_its_parts(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\nfrom .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .sub.b import g\n    return g\n")
    (pkg / "sub" / "b.py").write_text("from .. import a\ndef g():\n    return 1\n")   # a -> b (lazily) -> a
    (pkg / "c.py").write_text("from . import sub\nfrom .sub import b\nimport pkg.a\n")
    graph = import_graph(module_files(pkg, "pkg"))
    assert graph["pkg.c"] == {"pkg.sub", "pkg.sub.b", "pkg.a"}
    assert graph["pkg.sub.b"] == {"pkg.a"} and graph["pkg.a"] == {"pkg.sub.b"}
    assert cycles(graph) == [["pkg.a", "pkg.sub.b"]]
    (pkg / "a.py").write_text("def f():\n    return 0\n")
    assert cycles(import_graph(module_files(pkg, "pkg"))) == []


def test_no_import_cycle_in_pythia():
    graph = import_graph(module_files(REPO / "pythia", "pythia"))
    assert len(graph) > 30
    assert not cycles(graph), f"modules that import each other: {cycles(graph)}"


def test_no_import_cycle_in_benchmarks():
    graph = import_graph(module_files(REPO / "benchmarks", None))
    assert "bench_train_step" in graph
    assert not cycles(graph), f"modules that import each other: {cycles(graph)}"


def forbidden(module: str) -> bool:
    """True for a module the model may not import: one of NOT_IN_THE_MODEL or a submodule of one."""
    return any(module == m or module.startswith(m + ".") for m in NOT_IN_THE_MODEL)


def model_modules() -> dict[str, Path]:
    everything = module_files(REPO / "pythia", "pythia")
    files = {p.resolve() for pattern in MODEL_FILES for p in REPO.glob(pattern)}
    return {name: p for name, p in everything.items() if p.resolve() in files}


def test_the_model_imports_nothing_of_the_system_layer():
    modules = model_modules()
    assert "pythia.layers" in modules and any(n.startswith("pythia.models.") for n in modules), sorted(modules)
    bad = {name: sorted(t for t in imported_names(p, name) if forbidden(t)) for name, p in modules.items()}
    assert not any(bad.values()), f"the model imports the system layer: { {k: v for k, v in bad.items() if v} }"


def test_the_model_check_sees_a_lazy_import_of_the_system_layer(tmp_path):
    (tmp_path / "pythia" / "models").mkdir(parents=True)
    (tmp_path / "pythia" / "models" / "gpt2.py").write_text(
        "import numpy as np\nfrom .. import kernels\n\ndef f():\n    from ..system import threads\n"
        "    import threading\n    return threads\n")
    names = imported_names(tmp_path / "pythia" / "models" / "gpt2.py", "pythia.models.gpt2")
    assert sorted(t for t in names if forbidden(t)) == [
        "pythia.system", "pythia.system.threads", "threading"]
    assert "pythia.kernels" in names and not forbidden("signals") and forbidden("signal")
