"""Backend selection: PYTHIA_KERNELS, kernels.use(), the AVX2 build choice, the fallback reason."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from kernel_cases import compiled_builds

from pythia import kernels
from pythia.kernels import _loader, compiled, reference

BUILT = bool(compiled_builds())


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter with extra environment variables."""
    ours = ("PYTHIA_KERNELS", "PYTHIA_KERNELS_ISA", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
    full = {k: v for k, v in os.environ.items() if k not in ours}
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=120)


def test_environment_variable_forces_the_numpy_reference():
    p = run_python("from pythia import kernels; print(kernels.BACKEND, kernels.softmax_forward.__module__)",
                   PYTHIA_KERNELS="numpy")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["numpy", "pythia.kernels.reference"]


def test_default_backend_is_cython_when_built():
    if not BUILT:
        pytest.skip("compiled kernels are not built")
    p = run_python("from pythia import kernels; print(kernels.BACKEND, kernels.FALLBACK_REASON)")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["cython", "None"]


def test_unknown_backend_name_in_the_environment_is_an_error():
    p = run_python("import pythia.kernels", PYTHIA_KERNELS="fortran")
    assert p.returncode != 0
    assert "PYTHIA_KERNELS" in p.stderr and "fortran" in p.stderr


def test_isa_variable_selects_the_baseline_build():
    if not BUILT:
        pytest.skip("compiled kernels are not built")
    code = "from pythia.kernels import compiled, _loader; _loader.load_compiled(); print(compiled.ISA)"
    p = run_python(code, PYTHIA_KERNELS_ISA="baseline")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "baseline"
    p = run_python(code)
    expected = "avx2" if "_kernels_avx2" in compiled_builds() else "baseline"
    assert p.stdout.strip() == expected


def test_use_switches_every_kernel_and_back():
    before = kernels.BACKEND
    try:
        assert kernels.use("numpy") == "numpy"
        assert kernels.BACKEND == "numpy"
        for name in kernels.NAMES:
            assert getattr(kernels, name) is getattr(reference, name)
        if BUILT:
            assert kernels.use("cython") == "cython"
            for name in kernels.NAMES:
                assert getattr(kernels, name) is getattr(compiled, name)
            x = np.ones((2, 3), np.float32)
            np.testing.assert_allclose(kernels.softmax_forward(x), np.full((2, 3), 1 / 3, np.float32), rtol=1e-6)
    finally:
        kernels.use(before)


def test_use_rejects_an_unknown_backend():
    with pytest.raises(ValueError, match="cython"):
        kernels.use("cuda")


def test_missing_extension_gives_a_reason_with_the_build_command(monkeypatch):
    # no pythia._kernels anywhere: load_compiled says so and how to build, use("cython") raises it
    monkeypatch.setattr(_loader, "_import", lambda name: None)
    impl, reason = _loader.load_compiled()
    assert impl is None
    assert "not built" in reason and "build_ext --inplace" in reason and "pip install -e ." in reason
    before = kernels.BACKEND
    try:
        with pytest.raises(RuntimeError, match="build_ext --inplace"):
            kernels.use("cython")
    finally:
        monkeypatch.undo()
        kernels.use(before)


def test_stale_extension_is_refused(monkeypatch):
    # an extension built from another kernel API version must not be bound
    class Stale:
        API_VERSION = compiled.API_VERSION - 1

    monkeypatch.setattr(_loader, "_import", lambda name: Stale)
    impl, reason = _loader.load_compiled()
    assert impl is None and "stale" in reason


def test_idle_openmp_threads_spin_briefly_unless_the_user_chose():
    # libgomp's default spin (~10 ms) took a core from the working threads on the shared 2-core
    # machine; sleeping at once cost ~10-20 us a wake-up. Pythia asks for ~30 us of spinning.
    code = ("import os; from pythia import kernels; "
            "print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))")
    assert run_python(code).stdout.split() == ["1000", "None"]
    assert run_python(code, OMP_WAIT_POLICY="passive").stdout.split() == ["None", "passive"]
    assert run_python(code, GOMP_SPINCOUNT="50").stdout.split() == ["50", "None"]


def test_large_kernels_run_parallel_loops_and_agree_with_small_ones():
    # the same rows computed in one big (threaded) call and row by row (serial) agree exactly,
    # except where threads change a summation order (none of these kernels does)
    if not BUILT:
        pytest.skip("compiled kernels are not built")
    _loader.load_compiled()
    ext = compiled._ext
    x = np.random.default_rng(7).standard_normal((1024, 96)).astype(np.float32)
    work = ext.WORK_UNITS["exp"] * x.size                              # softmax exponentiates each element
    stats = ext.threading_stats(work)
    may_thread = ext.max_threads() > 1 and stats["serial_for_s"] == 0  # not backing off now
    big = compiled.softmax_forward(x)                                   # 98304 elements: threaded
    if may_thread:
        assert ext.threading_stats(work)["parallel_loops"] == stats["parallel_loops"] + 1
    rows = np.stack([compiled.softmax_forward(r) for r in x])
    np.testing.assert_array_equal(big, rows)


def test_after_a_serial_spell_the_first_parallel_loop_only_wakes_the_thread():
    # a late loop sends loops of its size to one thread for a while; the first parallel loop
    # after that spell is not judged (its thread slept through the spell), the next one is
    if not BUILT:
        pytest.skip("compiled kernels are not built")
    _loader.load_compiled()
    ext = compiled._ext
    if ext.max_threads() < 2:
        pytest.skip("one OpenMP thread: nothing runs in parallel")
    x = np.random.default_rng(3).standard_normal((1024, 96)).astype(np.float32)
    work = ext.WORK_UNITS["exp"] * x.size
    ext._as_if_late(work, 0.0)                                   # a spell that has already ended
    before = ext.threading_stats(work)
    assert before["serial_for_s"] == 0 and not before["judge_next"]
    compiled.softmax_forward(x)                                  # the waking loop, not judged
    after = ext.threading_stats(work)
    assert after["parallel_loops"] == before["parallel_loops"] + 1
    assert after["late_loops"] == before["late_loops"]
    assert after["judge_next"]
    ext._as_if_late(work, 60.0)                                  # during a spell: one thread
    compiled.softmax_forward(x)
    assert ext.threading_stats(work)["parallel_loops"] == after["parallel_loops"]
    ext._as_if_late(work, 0.0)                                   # leave no spell behind
    compiled.softmax_forward(x)
