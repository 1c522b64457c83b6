"""Find the compiled kernels, even when a source checkout shadows the installed package.

`python -m pythia` run from the repository root imports `pythia` from the source folder,
where `pip install .` put no compiled extension. Rather than fall back silently to NumPy,
look for the extension inside any installed copy of the package on sys.path and load it from
there, provided it was built from the same kernel API version.

Two builds of the same kernels may exist: `pythia._kernels` (baseline x86-64 / any CPU) and
`pythia._kernels_avx2` (-mavx2 -mfma). The AVX2 one is used when the CPU has AVX2 and FMA,
unless `PYTHIA_KERNELS_ISA=baseline` asks for the baseline build.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
from contextlib import contextmanager
from typing import Iterator
import sys
from pathlib import Path
from types import ModuleType

BUILD_HINT = ("build them with `pip install -e .` (or `python setup.py build_ext --inplace`) "
              "from the repository root")


def _from_installed_copy(name: str) -> ModuleType | None:
    """Load pythia.<name> from another copy of the pythia package on sys.path, if one has it."""
    here = Path(__file__).resolve().parent.parent  # the pythia package being imported
    for entry in sys.path:
        pkg = Path(entry or ".").resolve() / "pythia"
        if pkg == here or not pkg.is_dir():
            continue
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            so = pkg / f"{name}{suffix}"
            if so.is_file():
                spec = importlib.util.spec_from_file_location(f"pythia.{name}", so)
                if spec is None or spec.loader is None:
                    continue
                mod = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(mod)
                sys.modules[f"pythia.{name}"] = mod
                return mod
    return None


def _import(name: str) -> ModuleType | None:
    """pythia.<name> from this package or an installed copy; None if neither has it built."""
    try:
        return importlib.import_module(f"pythia.{name}")
    except ImportError:
        return _from_installed_copy(name)


WAIT_POLICY_SET = False  # True when Pythia, not the user, put its OpenMP wait setting in the environment
WAIT_ENV = ("GOMP_SPINCOUNT", "1000")  # that setting: spin ~30 us after a loop, then sleep


def _quiet_openmp_threads() -> None:
    """Bound how long an idle kernel thread spins before it sleeps (unless the user chose).

    libgomp's default keeps a thread spinning for ~300,000 iterations (~10 ms here) after each
    parallel loop. On 2 cores that also run BLAS threads, Python or other programs, the
    spinning thread takes a core from the thread that has work, and a 20 us kernel was
    measured at 4-12 ms. Sleeping at once (OMP_WAIT_POLICY=passive) costs ~10-20 us to wake the
    thread for the next loop, as much as a whole kernel at config M. GOMP_SPINCOUNT=1000 spins
    ~30 us (measured: ~25-35 ns an iteration): back-to-back kernels find the thread awake, and
    a thread whose next work is far off gives its core back after 30 us. It only takes effect
    if no OpenMP runtime is loaded yet, so it is set before the extension loads.
    """
    global WAIT_POLICY_SET
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ[WAIT_ENV[0]] = WAIT_ENV[1]
        WAIT_POLICY_SET = True


@contextmanager
def without_our_wait_setting() -> Iterator[None]:
    """Inside the block os.environ lacks the OpenMP wait setting Pythia put there for itself, so
    child processes started in it (PyTorch in the benchmarks) begin at their own defaults."""
    ours = os.environ.pop(WAIT_ENV[0], None) if WAIT_POLICY_SET else None
    try:
        yield
    finally:
        if ours is not None:
            os.environ[WAIT_ENV[0]] = ours


ISA_CHOICES = ("baseline",)  # PYTHIA_KERNELS_ISA's values; unset (or empty) means AVX2 when the CPU has it


def isa_wanted() -> str:
    """PYTHIA_KERNELS_ISA, checked: a value that means nothing is an error, as for PYTHIA_KERNELS."""
    wanted = os.environ.get("PYTHIA_KERNELS_ISA", "").strip().lower()
    if wanted and wanted not in ISA_CHOICES:
        raise ValueError(f"PYTHIA_KERNELS_ISA={wanted!r} is not a kernel build; set it to 'baseline' (the build "
                         f"for any x86-64 CPU) or unset it (the AVX2 build when the CPU has AVX2 and FMA)")
    return wanted


def load_compiled():
    """Return (compiled-backend module, None) or (None, reason the NumPy fallback is used)."""
    wanted = isa_wanted()                        # a bad value is an error even where nothing is built
    _quiet_openmp_threads()
    try:
        ext = _import("_kernels")
    except ImportError as err:
        return None, f"compiled kernels failed to load ({err}); {BUILD_HINT}"
    if ext is None:
        return None, f"compiled kernels are not built; {BUILD_HINT}"
    from . import compiled
    if getattr(ext, "API_VERSION", None) != compiled.API_VERSION:
        return None, (f"compiled kernels are stale (API {getattr(ext, 'API_VERSION', '?')}, "
                      f"need {compiled.API_VERSION}); {BUILD_HINT}")
    if wanted != "baseline" and ext.cpu_has_avx2_fma():
        try:
            simd = _import("_kernels_avx2")
        except ImportError:
            simd = None  # not built by this compiler, or unloadable: the baseline build serves
        if simd is not None and getattr(simd, "API_VERSION", None) == compiled.API_VERSION:
            ext = simd
    compiled.bind(ext)
    return compiled, None
