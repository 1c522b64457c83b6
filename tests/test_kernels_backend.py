"""Backend selection: PYTHIA_KERNELS, kernels.use(), the AVX2 build choice, the fallback reason."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from kernel_cases import BWD_RTOL, bound_build, close, compiled_builds

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


def _large_cases(r):
    """(kernel, args) for every kernel at sizes above the kernels' threading threshold
    (32768 units), with row counts that do not divide evenly among 2 or 3 threads."""
    x = r.standard_normal((1001, 97)).astype(np.float32)
    w, b = r.standard_normal(97).astype(np.float32), r.standard_normal(97).astype(np.float32)
    _, mean, rstd = reference.layernorm_forward(x, w, b)
    s = r.standard_normal((5, 3, 48, 64)).astype(np.float32)
    ys = reference.attention_softmax_forward(s, 0.125)
    t = r.integers(0, 97, 1001)
    _, p = reference.crossentropy_forward(x, t)
    return [
        ("softmax_forward", (x,)), ("softmax_backward", (x, reference.softmax_forward(x))),
        ("layernorm_forward", (x, w, b)), ("layernorm_backward", (x, x, w, mean, rstd)),
        ("gelu_forward", (x,)), ("gelu_backward", (x, x)),
        ("attention_softmax_forward", (s, 0.125)), ("attention_softmax_backward", (s, ys, 0.125)),
        ("crossentropy_forward", (x, t)),
        ("crossentropy_backward", (np.full(1001, 1 / 1001, np.float32), p, t)),       # a mean loss
        ("crossentropy_backward", (r.random(1001).astype(np.float32), p, t)),         # per-row weights
    ]


@pytest.mark.parametrize("build", ["_kernels", "_kernels_avx2"])
def test_every_kernel_gives_the_same_bits_on_one_two_and_three_threads(build):
    # the thread count splits rows (LayerNorm's dw, db: blocks of rows of a fixed size) and
    # never a sum, so it cannot change a result; each result also matches the NumPy twin
    if build not in compiled_builds():
        pytest.skip(f"pythia.{build} is not built or not runnable here")
    cases = _large_cases(np.random.default_rng(11))
    limit = compiled.set_thread_limit(1)
    try:
        with bound_build(build) as k:
            for name, args in cases:
                runs = []
                for n in (1, 2, 3):
                    compiled.set_thread_limit(n)
                    out = getattr(k, name)(*args)
                    runs.append(out if isinstance(out, tuple) else (out,))
                expect = getattr(reference, name)(*args)
                for j, e in enumerate(expect if isinstance(expect, tuple) else (expect,)):
                    np.testing.assert_array_equal(runs[1][j], runs[0][j], err_msg=f"{name} 2 threads")
                    np.testing.assert_array_equal(runs[2][j], runs[0][j], err_msg=f"{name} 3 threads")
                    close(runs[0][j], e, BWD_RTOL, name, scale=1.0)
    finally:
        compiled.set_thread_limit(limit)


def test_adamw_gives_the_same_bits_on_one_and_two_threads():
    if not BUILT:
        pytest.skip("compiled kernels are not built")
    _loader.load_compiled()
    r = np.random.default_rng(5)
    p0, g, m0, v0 = (r.standard_normal(100_003).astype(np.float32) for _ in range(4))
    v0 = np.abs(v0)
    limit = compiled.set_thread_limit(1)
    try:
        out = []
        for n in (1, 2):
            compiled.set_thread_limit(n)
            p, m, v = p0.copy(), m0.copy(), v0.copy()
            compiled.adamw_update(p, g, m, v, lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, t=3, weight_decay=0.1)
            out.append((p, m, v))
        for a, b in zip(*out):
            np.testing.assert_array_equal(a, b)
    finally:
        compiled.set_thread_limit(limit)


def test_set_thread_limit_returns_the_previous_limit():
    before = kernels.BACKEND
    try:
        if BUILT:
            kernels.use("cython")
            first = kernels.set_thread_limit(3)
            assert first >= 1
            assert kernels.set_thread_limit(0) == 3                # 0 counts as 1 ...
            assert kernels.set_thread_limit(2) == 1                # ... as the next call shows
            assert kernels.set_thread_limit(np.int64(2)) == 2      # any integer type
            with pytest.raises(TypeError, match="thread count"):
                kernels.set_thread_limit(2.5)
            assert kernels.set_thread_limit(first) == 2            # a refused value changed nothing
        kernels.use("numpy")
        assert kernels.set_thread_limit(4) == 1                    # the reference runs on one thread
    finally:
        kernels.use(before)


def test_the_limit_decides_how_many_threads_the_kernels_start():
    # OpenMP keeps the threads it starts: in a fresh process, large kernels on a limit of 1
    # start none, small ones on a limit of 3 none either (too little work), large ones on 3
    # start two helpers beside the calling thread
    if not BUILT:
        pytest.skip("compiled kernels are not built")
    if not os.path.isdir("/proc/self/task"):
        pytest.skip("needs /proc/self/task to count threads")
    code = (
        "import os, numpy as np\n"
        "from pythia import kernels\n"
        "n = lambda: len(os.listdir('/proc/self/task'))\n"
        "big, small = np.ones((512, 256), np.float32), np.ones((8, 64), np.float32)\n"
        "base = n(); kernels.set_thread_limit(1); kernels.gelu_forward(big); one = n()\n"
        "kernels.set_thread_limit(3); kernels.gelu_forward(small); few = n()\n"
        "kernels.gelu_forward(big); three = n()\n"
        "print(one - base, few - base, three - base)\n")
    p = run_python(code, OPENBLAS_NUM_THREADS="1")
    assert p.returncode == 0, p.stderr
    if p.stdout.split() == ["0", "0", "0"]:
        pytest.skip("a serial build (no OpenMP): the limit has no threads to start")
    assert p.stdout.split() == ["0", "0", "2"]
