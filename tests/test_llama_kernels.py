"""The Llama-family kernels (RMSNorm, rotary embedding, SwiGLU, x W^T and x W for a few rows): NumPy twins against the math
(finite differences in float64, rotation invariants, HF's formulas written out), the compiled
kernels against the twins, and bad input refused the same way by both backends.

Tolerances as in kernel_cases: forward 1e-5, backward 1e-4 relative (plus that fraction of the
output's largest entry); finite differences in float64 to 1e-6 relative.
"""
from __future__ import annotations

import numpy as np
import pytest

from kernel_cases import BWD_RTOL, FWD_RTOL, close, f32, rng
from pythia.kernels import reference_llama as ref

# (..., C) rows, and (..., T, hs) heads: one row, odd C, wide rows, several leading axes, and
# sizes of at least 32768 elements so that the compiled loops run on several threads
ROW_SHAPES = [(1,), (7,), (3, 1), (5, 33), (2, 3, 576), (4, 1536), (64, 576)]
HEAD_SHAPES = [(1, 2), (3, 8), (2, 5, 16), (2, 4, 7, 64), (1, 9, 64, 64)]
# matvec and vecmat (N, C, O): one row and one output, C and O below, at and past a vector's
# lanes and the kernels' tiles, every row count the kernels hold in registers (1-8) and more
# (split in calls of 8), odd sizes, and weights of at least 32768 elements so that the work is
# split over threads
FEW_SHAPES = [(1, 1, 1), (1, 7, 3), (2, 16, 5), (1, 33, 9), (3, 576, 960), (4, 1536, 577), (1, 64, 4099),
              (5, 67, 131), (6, 128, 300), (7, 9, 1000), (8, 768, 2304), (12, 40, 70), (17, 100, 33)]


@pytest.fixture(scope="module")
def compiled():
    """pythia.kernels.llama_compiled bound to the built extension (the test skips if not built)."""
    ext = pytest.importorskip("pythia._llama_kernels")
    from pythia.kernels import llama_compiled
    assert ext.API_VERSION == llama_compiled.API_VERSION
    llama_compiled.bind(ext)
    return llama_compiled


def numgrad(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar f() wrt every entry of the float64 array x (in place)."""
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        up = f()
        x[i] = old - h
        down = f()
        x[i] = old
        g[i] = (up - down) / (2 * h)
    return g


def tables(T: int, hs: int, theta: float = 10000.0, offset: int = 0):
    return ref.rope_tables(np.arange(offset, offset + T), hs, theta)


# ----------------------------------------------------------------------------- the twins against the math

def test_rmsnorm_twin_is_hf_formula_and_gradients_match_finite_differences():
    r = rng("rms-fd")
    x, w, dy = r.normal(size=(3, 5)), r.normal(size=5), r.normal(size=(3, 5))
    y, rstd = ref._rmsnorm_forward(x, w, 1e-5)
    np.testing.assert_allclose(y, w * x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-5), rtol=1e-12)
    dx, dw = ref._rmsnorm_backward(dy, x, w, rstd)
    loss = lambda: float(np.sum(dy * ref._rmsnorm_forward(x, w, 1e-5)[0]))
    np.testing.assert_allclose(dx, numgrad(loss, x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dw, numgrad(loss, w), rtol=1e-6, atol=1e-8)


def test_rope_twin_rotates_pairs_and_its_backward_matches_finite_differences():
    r = rng("rope-fd")
    T, hs = 4, 6
    x, dy = r.normal(size=(2, T, hs)), r.normal(size=(2, T, hs))
    cos, sin = (t.astype(np.float64) for t in tables(T, hs, 500.0, offset=3))
    y = ref._rope_forward(x, cos, sin)
    # pair i = (x[i], x[i + hs/2]) turned by angle p * 500^(-2i/hs) at position p (HF rotate-half)
    for p in range(T):
        for i in range(hs // 2):
            a = (p + 3) * 500.0 ** (-2 * i / hs)
            x1, x2 = x[:, p, i], x[:, p, i + hs // 2]
            np.testing.assert_allclose(y[:, p, i], x1 * np.cos(a) - x2 * np.sin(a), rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(y[:, p, i + hs // 2], x2 * np.cos(a) + x1 * np.sin(a), rtol=1e-6, atol=1e-6)
    loss = lambda: float(np.sum(dy * ref._rope_forward(x, cos, sin)))
    np.testing.assert_allclose(ref._rope_backward(dy, cos, sin), numgrad(loss, x), rtol=1e-6, atol=1e-8)


def test_rope_at_position_zero_is_identity():
    x = f32(rng("rope0").normal(size=(3, 1, 8)))
    cos, sin = tables(1, 8)
    np.testing.assert_array_equal(ref.rope_forward(x, cos, sin), x)


def test_swiglu_twin_gradients_match_finite_differences():
    r = rng("swiglu-fd")
    g, u, dy = r.normal(size=(3, 7)) * 3, r.normal(size=(3, 7)), r.normal(size=(3, 7))
    np.testing.assert_allclose(ref._swiglu_forward(g, u), g / (1 + np.exp(-g)) * u, rtol=1e-12)
    dg, du = ref._swiglu_backward(dy, g, u)
    loss = lambda: float(np.sum(dy * ref._swiglu_forward(g, u)))
    np.testing.assert_allclose(dg, numgrad(loss, g), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(du, numgrad(loss, u), rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------- compiled == twin

@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_compiled_rmsnorm_matches_twin(compiled, shape):
    r = rng("rms", shape)
    x, w, dy = (f32(r.normal(size=s)) for s in (shape, shape[-1:], shape))
    y, rstd = compiled.rmsnorm_forward(x, w, 1e-5)
    ye, rstde = ref.rmsnorm_forward(x, w, 1e-5)
    close(y, ye, FWD_RTOL, "y")
    close(rstd, rstde, FWD_RTOL, "rstd")
    dx, dw = compiled.rmsnorm_backward(dy, x, w, rstd)
    # against the float64 twin: float32 sums over many rows differ in order between the two
    dxe, dwe = ref._rmsnorm_backward(dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64),
                                     rstde.astype(np.float64))
    close(dx, f32(dxe), BWD_RTOL, "dx")
    close(dw, f32(dwe), BWD_RTOL, "dweight")


@pytest.mark.parametrize("shape", HEAD_SHAPES)
def test_compiled_rope_matches_twin(compiled, shape):
    r = rng("rope", shape)
    x, dy = f32(r.normal(size=shape)), f32(r.normal(size=shape))
    cos, sin = tables(shape[-2], shape[-1], 1e6, offset=5)
    close(compiled.rope_forward(x, cos, sin), ref.rope_forward(x, cos, sin), FWD_RTOL, "y")
    close(compiled.rope_backward(dy, cos, sin), ref.rope_backward(dy, cos, sin), BWD_RTOL, "dx")


@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_compiled_swiglu_matches_twin(compiled, shape):
    r = rng("swiglu", shape)
    g, u, dy = (f32(r.normal(size=shape) * 4) for _ in range(3))
    close(compiled.swiglu_forward(g, u), ref.swiglu_forward(g, u), FWD_RTOL, "y")
    for a, e, what in zip(compiled.swiglu_backward(dy, g, u), ref.swiglu_backward(dy, g, u), ("dgate", "dup")):
        close(a, e, BWD_RTOL, what)


def test_compiled_rmsnorm_forward_is_the_same_on_one_and_two_threads(compiled):
    x, w = f32(rng("thr").normal(size=(64, 576))), np.ones(576, np.float32)
    outs = []
    for n in (1, 2):
        y, rstd = np.empty_like(x), np.empty(64, np.float32)
        compiled._ext.rmsnorm_forward(x, w, y, rstd, 64, 576, 1e-5, n)
        outs.append(y)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_matvec_twin_is_the_float64_product():
    r = rng("matvec-twin")
    x, w, b = f32(r.normal(size=(3, 40))), f32(r.normal(size=(11, 40))), f32(r.normal(size=11))
    xd, wd = x.astype(np.float64), w.astype(np.float64)
    expected = np.array([[sum(xd[n, c] * wd[o, c] for c in range(40)) + b[o] for o in range(11)] for n in range(3)])
    np.testing.assert_allclose(ref.matvec(x, w, b), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ref.matvec(x, w), expected - b, rtol=1e-5, atol=1e-5)


def test_vecmat_twin_is_the_float64_product():
    r = rng("vecmat-twin")
    x, w, b = f32(r.normal(size=(3, 40))), f32(r.normal(size=(40, 11))), f32(r.normal(size=11))
    xd, wd = x.astype(np.float64), w.astype(np.float64)
    expected = np.array([[sum(xd[n, c] * wd[c, o] for c in range(40)) + b[o] for o in range(11)] for n in range(3)])
    np.testing.assert_allclose(ref.vecmat(x, w, b), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ref.vecmat(x, w), expected - b, rtol=1e-5, atol=1e-5)


@pytest.fixture(params=[0, 1], ids=["baseline", "avx2"])
def level(request, compiled):
    """Each vector code of matvec/vecmat this CPU runs (the test skips the others)."""
    if request.param > compiled._ext.FEW_LEVEL:
        pytest.skip("this CPU lacks AVX2 and FMA")
    compiled.LEVEL = request.param
    yield request.param
    compiled.LEVEL = None


@pytest.mark.parametrize("shape", FEW_SHAPES)
def test_compiled_matvec_and_vecmat_match_twins(compiled, level, shape):
    N, C, O = shape
    r = rng("few-rows", shape)
    x, w, b = f32(r.normal(size=(N, C))), f32(r.normal(size=(O, C))), f32(r.normal(size=O))
    wt = np.ascontiguousarray(w.T)                               # the same weight stored (in, out)
    # each output sums C products of unit-variance terms: its size is sqrt(C), the scale of the error
    close(compiled.matvec(x, w), ref.matvec(x, w), FWD_RTOL, "x w^T", scale=np.sqrt(C))
    close(compiled.matvec(x, w, b), ref.matvec(x, w, b), FWD_RTOL, "x w^T + bias", scale=np.sqrt(C))
    close(compiled.vecmat(x, wt), ref.vecmat(x, wt), FWD_RTOL, "x w", scale=np.sqrt(C))
    close(compiled.vecmat(x, wt, b), ref.vecmat(x, wt, b), FWD_RTOL, "x w + bias", scale=np.sqrt(C))


@pytest.mark.parametrize("N", [1, 3, 8])
def test_compiled_few_row_products_are_the_same_on_one_and_two_threads(compiled, level, N):
    r = rng("few-thr", N)
    x, w, b = f32(r.normal(size=(N, 576))), f32(r.normal(size=(1001, 576))), f32(r.normal(size=1001))
    wt = np.ascontiguousarray(w.T)
    for kernel, weight in ((compiled._ext.matvec, w), (compiled._ext.vecmat, wt)):
        outs = []
        for n in (1, 2):
            y = np.empty((N, 1001), np.float32)
            kernel(x, weight, b, y, N, 576, 1001, n, level)
            outs.append(y)
        np.testing.assert_array_equal(outs[0], outs[1])
    if N == 1:                                                   # vecmat's one-row path: bands of w's rows
        outs = []
        for n in (1, 2):
            y = np.empty((1, 1001), np.float32)
            compiled._ext.vecmat_row(x, wt, b, y, 576, 1001, n, level)
            outs.append(y)
        np.testing.assert_array_equal(outs[0], outs[1])


def test_compiled_few_row_products_validate_before_touching_memory(compiled):
    ext = compiled._ext
    x, w, y = np.ones((9, 8), np.float32), np.ones((8, 8), np.float32), np.empty((9, 8), np.float32)
    for kernel in (ext.matvec, ext.vecmat):
        with pytest.raises(ValueError, match="takes 1 to 8 rows"):
            kernel(x, w, None, y, 9, 8, 8, 1, 0)                 # more rows than the registers hold
        with pytest.raises(ValueError, match="level 2 is not run"):
            kernel(x[:1], w, None, y[:1], 1, 8, 8, 1, 2)
        with pytest.raises(ValueError, match="C-contiguous float32 array of 72 elements"):
            kernel(x[:1], w[:7], None, y[:1], 1, 8, 9, 1, 0)     # w shorter than C x O
        with pytest.raises(ValueError, match="of 8 elements"):
            kernel(x[:1], w, np.ones(7, np.float32), y[:1], 1, 8, 8, 1, 0)
        with pytest.raises(ValueError, match="writeable"):
            kernel(x[:1], w, None, _read_only(np.empty((1, 8), np.float32)), 1, 8, 8, 1, 0)
    row = ext.vecmat_row
    with pytest.raises(ValueError, match="non-empty sizes"):
        row(x[:1], w, None, y[:1], 0, 8, 1, 0)
    with pytest.raises(ValueError, match="level 2 is not run"):
        row(x[:1], w, None, y[:1], 8, 8, 1, 2)
    with pytest.raises(ValueError, match="of 72 elements"):
        row(x[:1], w, None, y[:1], 8, 9, 1, 0)                   # w shorter than C x O
    with pytest.raises(ValueError, match="of 9 elements"):
        row(x[:1], w[:1, :8].reshape(8, 1).repeat(9, 1).copy(), None, y[:1], 8, 9, 1, 0)  # y of 8, not 9
    with pytest.raises(ValueError, match="writeable"):
        row(x[:1], w, None, _read_only(np.empty((1, 8), np.float32)), 8, 8, 1, 0)


def _read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


# ----------------------------------------------------------------------------- large magnitudes

def test_large_magnitudes_stay_finite(compiled):
    x = f32(np.array([[1e17, -3e17, 2e17, 5e16], [1e-20, 0, 0, 0]]))
    w = np.ones(4, np.float32)
    for impl in (ref, compiled):
        y, rstd = impl.rmsnorm_forward(x, w, 1e-6)
        assert np.all(np.isfinite(y)) and np.all(np.isfinite(rstd))
        # the rms-normalised big row is x / rms(x), computed here in float64
        xd = x[0].astype(np.float64)
        np.testing.assert_allclose(y[0], xd / np.sqrt(np.mean(xd ** 2)), rtol=1e-5)
        g = f32([[1e30, -1e30, 88.0, -104.0]])
        u = f32([[1.0, 2.0, 3.0, 4.0]])
        y = impl.swiglu_forward(g, u)
        dg, du = impl.swiglu_backward(np.ones_like(g), g, u)
        assert np.all(np.isfinite(y)) and np.all(np.isfinite(dg)) and np.all(np.isfinite(du))
        np.testing.assert_allclose(y, [[1e30, -0.0, 264.0, 0.0]], rtol=1e-6, atol=1e-30)
        np.testing.assert_allclose(dg, [[1.0, 0.0, 3.0, 0.0]], rtol=1e-6, atol=1e-30)


# ----------------------------------------------------------------------------- bad input, both backends

@pytest.fixture(scope="module")
def impls():
    try:
        import pythia._llama_kernels as ext
    except ImportError:
        return [ref]
    from pythia.kernels import llama_compiled
    llama_compiled.bind(ext)
    return [ref, llama_compiled]


def test_bad_dtype_shape_and_0d_input_are_refused_naming_the_argument(impls):
    x = np.ones((2, 8), np.float32)
    w = np.ones(8, np.float32)
    cos, sin = tables(2, 8)
    for k in impls:
        with pytest.raises(TypeError, match="x must be float32"):
            k.rmsnorm_forward(x.astype(np.float64), w)
        with pytest.raises(TypeError, match="x must be a numpy.ndarray"):
            k.rmsnorm_forward([[1.0]], w)
        with pytest.raises(ValueError, match="weight must have shape \\(8,\\)"):
            k.rmsnorm_forward(x, np.ones(7, np.float32))
        with pytest.raises(ValueError, match="x must have at least 1"):
            k.rmsnorm_forward(np.ones((), np.float32), w)
        with pytest.raises(ValueError, match="eps must be a positive"):
            k.rmsnorm_forward(x, w, 0.0)
        with pytest.raises(ValueError, match="rstd must have shape \\(2,\\)"):
            k.rmsnorm_backward(x, x, w, np.ones(3, np.float32))
        with pytest.raises(ValueError, match="dy has shape"):
            k.rmsnorm_backward(x[:1], x, w, np.ones(2, np.float32))
        with pytest.raises(ValueError, match="x must have at least 2"):
            k.rope_forward(np.ones(8, np.float32), cos, sin)
        with pytest.raises(ValueError, match="odd head size"):
            k.rope_forward(np.ones((2, 7), np.float32), cos[:, :7], sin[:, :7])
        with pytest.raises(ValueError, match="sin must have shape \\(2, 8\\)"):
            k.rope_forward(x, cos, sin[:1])
        with pytest.raises(TypeError, match="cos must be float32"):
            k.rope_backward(x, cos.astype(np.float64), sin)
        with pytest.raises(ValueError, match="up has shape"):
            k.swiglu_forward(x, x[:1])
        with pytest.raises(ValueError, match="dy has shape"):
            k.swiglu_backward(x[:1], x, x)
        with pytest.raises(ValueError, match="gate is empty"):
            k.swiglu_forward(np.ones((0,), np.float32), np.ones((0,), np.float32))
        with pytest.raises(ValueError, match="matvec needs x \\(N, C\\) and w \\(O, C\\) with the same C"):
            k.matvec(x, np.ones((3, 7), np.float32))
        with pytest.raises(ValueError, match="matvec needs"):
            k.matvec(np.ones((1, 2, 8), np.float32), np.ones((3, 8), np.float32))
        with pytest.raises(ValueError, match="w must have at least 2"):
            k.matvec(x, w)
        with pytest.raises(TypeError, match="w must be float32"):
            k.matvec(x, np.ones((3, 8)))
        with pytest.raises(ValueError, match="bias must have shape \\(3,\\)"):
            k.matvec(x, np.ones((3, 8), np.float32), np.ones(4, np.float32))
        with pytest.raises(ValueError, match="vecmat needs x \\(N, C\\) and w \\(C, O\\) with the same C"):
            k.vecmat(x, np.ones((7, 3), np.float32))
        with pytest.raises(TypeError, match="x must be float32"):
            k.vecmat(x.astype(np.float64), np.ones((8, 3), np.float32))
        with pytest.raises(ValueError, match="bias must have shape \\(3,\\) \\(the columns of w\\)"):
            k.vecmat(x, np.ones((8, 3), np.float32), np.ones(4, np.float32))


def test_non_contiguous_input_gives_the_same_answer(impls):
    r = rng("strided")
    big = f32(r.normal(size=(4, 6, 16)))
    x = big[:, ::2, :]                                           # (4, 3, 16), rows strided
    xt = big.transpose(1, 0, 2)                                  # (6, 4, 16): heads (6,), T = 4
    w = f32(r.normal(size=16))
    cos, sin = tables(4, 16)
    for k in impls:
        np.testing.assert_array_equal(k.rmsnorm_forward(x, w)[0], k.rmsnorm_forward(x.copy(), w)[0])
        np.testing.assert_array_equal(k.rope_forward(xt, cos, sin), k.rope_forward(xt.copy(), cos, sin))
        np.testing.assert_array_equal(k.swiglu_forward(x, x), k.swiglu_forward(x.copy(), x.copy()))
        np.testing.assert_array_equal(k.matvec(x[0], big[1, ::2]), k.matvec(x[0].copy(), big[1, ::2].copy()))
        np.testing.assert_array_equal(k.vecmat(x[0], big[1].T), k.vecmat(x[0].copy(), big[1].T.copy()))


def test_the_active_backend_exports_every_llama_kernel():
    import pythia.kernels as kernels
    for name in kernels.LLAMA_NAMES:
        impl = getattr(kernels, name)
        assert impl.__module__ in ("pythia.kernels.reference_llama", "pythia.kernels.llama_compiled"), name
        if kernels.BACKEND == "numpy":
            assert impl.__module__ == "pythia.kernels.reference_llama", name


def test_use_switches_the_llama_kernels_with_the_backend():
    import pythia.kernels as kernels
    before = kernels.BACKEND
    try:
        kernels.use("numpy")
        assert kernels.rmsnorm_forward is ref.rmsnorm_forward and kernels.LLAMA_FALLBACK_REASON is None
        try:
            kernels.use("cython")
        except RuntimeError:
            pytest.skip("the compiled kernels are not built")
        if kernels.LLAMA_FALLBACK_REASON is None:
            assert kernels.swiglu_backward.__module__ == "pythia.kernels.llama_compiled"
        else:
            assert "build them" in kernels.LLAMA_FALLBACK_REASON
    finally:
        kernels.use(before)


def test_set_pool_threads_caps_the_decode_pools_and_returns_the_previous_setting(compiled):
    import pythia.kernels as kernels
    from pythia import quant
    before = kernels.set_pool_threads(1)
    try:
        assert compiled._pool_threads(1 << 20) == 1
        if quant.BACKEND == "cython":
            assert quant.default_threads() == 1
        assert kernels.set_pool_threads(None) == 1
        assert compiled._pool_threads(1 << 20) == compiled._ext.max_threads()
        assert compiled._pool_threads(100) == 1                   # small work stays on the caller
    finally:
        kernels.set_pool_threads(before)


def test_the_baseline_isa_setting_reaches_the_few_row_products(compiled, monkeypatch):
    # PYTHIA_KERNELS_ISA=baseline asks every kernel for its baseline code, the run-time choice too
    monkeypatch.setenv("PYTHIA_KERNELS_ISA", "baseline")
    compiled.bind(compiled._ext)
    assert compiled._level() == 0
    monkeypatch.delenv("PYTHIA_KERNELS_ISA")
    compiled.bind(compiled._ext)
    assert compiled._level() == compiled._ext.FEW_LEVEL
