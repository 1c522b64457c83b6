"""Find the compiled kernels, even when a source checkout shadows the installed package.

`python -m pythia` run from the repository root imports `pythia` from the source folder,
where `pip install .` put no compiled extension. Rather than fall back silently to NumPy,
look for the extension inside any installed copy of the package on sys.path and load it from
there, provided it was built from the same kernel API version.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BUILD_HINT = ("build them with `pip install -e .` (or `python setup.py build_ext --inplace`) "
              "from the repository root")


def _from_installed_copy() -> ModuleType | None:
    here = Path(__file__).resolve().parent.parent  # the pythia package being imported
    for entry in sys.path:
        pkg = Path(entry or ".").resolve() / "pythia"
        if pkg == here or not pkg.is_dir():
            continue
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            so = pkg / f"_kernels{suffix}"
            if so.is_file():
                spec = importlib.util.spec_from_file_location("pythia._kernels", so)
                if spec is None or spec.loader is None:
                    continue
                mod = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(mod)
                sys.modules["pythia._kernels"] = mod
                return mod
    return None


def load_compiled():
    """Return (compiled-backend module, None) or (None, reason the NumPy fallback is used)."""
    try:
        ext = importlib.import_module("pythia._kernels")
    except ImportError:
        try:
            ext = _from_installed_copy()
        except ImportError as err:
            return None, f"compiled kernels failed to load ({err}); {BUILD_HINT}"
        if ext is None:
            return None, f"compiled kernels are not built; {BUILD_HINT}"
    from . import compiled
    if getattr(ext, "API_VERSION", None) != compiled.API_VERSION:
        return None, (f"compiled kernels are stale (API {getattr(ext, 'API_VERSION', '?')}, "
                      f"need {compiled.API_VERSION}); {BUILD_HINT}")
    compiled.bind(ext)
    return compiled, None
