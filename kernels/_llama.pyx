# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled Llama-family kernels behind `pythia.kernels.llama_compiled` (which validates first).

RMSNorm, rotary embedding and the SwiGLU gate, forward and backward, each a `noexcept nogil`
routine for one row or block, wrapped in a loop over rows; and the product of a few rows with a
weight stored (out, in), Hugging Face's layout, that decoding multiplies by. The caller passes the thread count
(`n_threads`, 1 for small work): nothing here times itself, so a result never depends on how
busy the machine was. Arguments arrive as C-contiguous float32 arrays plus their sizes, checked
in Python; `_in`/`_out` re-check dtype, contiguity and element count before handing out a
pointer. Outputs are fresh arrays, so no output overlaps an input.
N rows, C row length, T positions, hs head size (even; h = hs / 2 its half), n elements, O a
weight's rows (its outputs).
"""
cimport numpy as cnp
from cython.parallel cimport prange
from libc.math cimport sqrtf
from libc.stdlib cimport calloc, free

cnp.import_array()

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int pythia_llama_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int pythia_llama_max_threads(void) { return 1; }
    #endif
    """
    int pythia_llama_max_threads() noexcept nogil

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    static inline int32_t pythia_llama_bits(float f) { int32_t i; memcpy(&i, &f, 4); return i; }
    static inline float pythia_llama_from_bits(int32_t i) { float f; memcpy(&f, &i, 4); return f; }
    /* compile-time constants (as C, not Cython globals) so that gcc vectorises the loops */
    static const float LL_LOG2E = 1.44269504088896341f;
    static const float LL_LN2_HI = 0.693359375f, LL_LN2_LO = -2.12194440e-4f;
    static const float LL_ROUND = 12582912.0f, LL_EXP_LO = -87.33654475f;
    static const float LL_P0 = 1.9875691500e-4f, LL_P1 = 1.3981999507e-3f, LL_P2 = 8.3334519073e-3f;
    static const float LL_P3 = 4.1665795894e-2f, LL_P4 = 1.6666665459e-1f, LL_P5 = 5.0000001201e-1f;
    """
    int pythia_llama_bits(float) noexcept nogil
    float pythia_llama_from_bits(int) noexcept nogil
    # exp(x) = 2^n exp(r), n = round(x log2 e), r = x - n ln2 (ln2 in two parts, Cody-Waite), exp(r)
    # by Cephes' expf polynomial (~1 ulp); ROUND = 1.5 * 2^23 rounds a float to an integer; below
    # EXP_LO = ln(2^-126) the result is 0. The same as `_exp_neg` in _kernels.pyx.
    const float LL_LOG2E, LL_LN2_HI, LL_LN2_LO, LL_ROUND, LL_EXP_LO, LL_P0, LL_P1, LL_P2, LL_P3, LL_P4, LL_P5

API_VERSION = 2  # must equal pythia.kernels.llama_compiled.API_VERSION
cdef enum: BLOCK = 4096           # elements per parallel work item of the element-wise kernels


def max_threads() -> int:
    """OpenMP's thread limit for the calling thread (1 in a serial build)."""
    return pythia_llama_max_threads()


cdef const float* _in(cnp.ndarray a, Py_ssize_t n) except NULL:
    # an input: float32, C-contiguous, n elements
    if cnp.PyArray_TYPE(a) != cnp.NPY_FLOAT32 or not cnp.PyArray_IS_C_CONTIGUOUS(a) or cnp.PyArray_SIZE(a) != n:
        raise ValueError(f"kernel input must be a C-contiguous float32 array of {n} elements")
    return <const float*>cnp.PyArray_DATA(a)


cdef float* _out(cnp.ndarray a, Py_ssize_t n) except NULL:
    # an output: as _in, and writeable
    if not cnp.PyArray_ISWRITEABLE(a):
        raise ValueError("kernel output must be writeable")
    return <float*>_in(a, n)


# ----------------------------------------------------------------------------- RMSNorm
# Sums keep LANES independent partial results (lane k takes the elements j = k mod LANES, folded
# pairwise at the end): without -ffast-math the compiler may not reorder one float accumulator,
# so a single running sum would stay scalar.

cdef enum: LANES = 16


cdef inline float _dot3(const float* a, const float* b, const float* c, Py_ssize_t n) noexcept nogil:
    # sum(a b c); pass c = NULL for sum(a b)
    cdef float acc[LANES]
    cdef Py_ssize_t j, k
    for k in range(LANES):
        acc[k] = 0.0
    j = 0
    if c == NULL:
        while j + LANES <= n:
            for k in range(LANES):
                acc[k] = acc[k] + a[j + k] * b[j + k]
            j = j + LANES
        for k in range(n - j):
            acc[k] = acc[k] + a[j + k] * b[j + k]
    else:
        while j + LANES <= n:
            for k in range(LANES):
                acc[k] = acc[k] + a[j + k] * b[j + k] * c[j + k]
            j = j + LANES
        for k in range(n - j):
            acc[k] = acc[k] + a[j + k] * b[j + k] * c[j + k]
    for k in range(8):
        acc[k] = acc[k] + acc[k + 8]
    for k in range(4):
        acc[k] = acc[k] + acc[k + 4]
    return (acc[0] + acc[2]) + (acc[1] + acc[3])


cdef inline void _rmsnorm_row(const float* x, const float* w, float* y, float* rstd, Py_ssize_t C,
                              float eps) noexcept nogil:
    # rstd = 1 / sqrt(mean(x^2) + eps); y = x rstd w
    cdef Py_ssize_t j
    cdef float r = <float>1.0 / sqrtf(_dot3(x, x, NULL, C) / C + eps)
    for j in range(C):
        y[j] = x[j] * r * w[j]
    rstd[0] = r


cdef inline void _rmsnorm_grad_rows(const float* dy, const float* x, const float* w, const float* rstd,
                                    float* dx, float* dw, Py_ssize_t N, Py_ssize_t C) noexcept nogil:
    # per row, xhat = x rstd, g = dy w: dx = rstd (g - xhat mean(g xhat)); dw += dy xhat
    cdef Py_ssize_t i, j
    cdef float r, sgx
    for i in range(N):
        r = rstd[i]
        sgx = _dot3(dy, w, x, C) * r / C                    # mean(g xhat)
        for j in range(C):
            dx[j] = r * (dy[j] * w[j] - x[j] * r * sgx)
            dw[j] = dw[j] + dy[j] * x[j] * r
        dy += C
        x += C
        dx += C


def rmsnorm_forward(cnp.ndarray x not None, cnp.ndarray w not None, cnp.ndarray y not None,
                    cnp.ndarray rstd not None, Py_ssize_t N, Py_ssize_t C, float eps, int n_threads):
    cdef const float* px = _in(x, N * C)
    cdef const float* pw = _in(w, C)
    cdef float* py = _out(y, N * C)
    cdef float* pr = _out(rstd, N)
    cdef Py_ssize_t i
    if n_threads <= 1:
        with nogil:
            for i in range(N):
                _rmsnorm_row(px + i * C, pw, py + i * C, pr + i, C, eps)
        return
    for i in prange(N, nogil=True, schedule="static", num_threads=n_threads):
        _rmsnorm_row(px + i * C, pw, py + i * C, pr + i, C, eps)


def rmsnorm_backward(cnp.ndarray dy not None, cnp.ndarray x not None, cnp.ndarray w not None,
                     cnp.ndarray rstd not None, cnp.ndarray dx not None, cnp.ndarray dw not None,
                     Py_ssize_t N, Py_ssize_t C, int n_threads):
    # rows split into one block per thread; each block sums dw into its own buffer (no sharing,
    # no atomics), and the buffers are added at the end in block order, so the sum's order is
    # fixed by n_threads alone
    cdef const float* pdy = _in(dy, N * C)
    cdef const float* px = _in(x, N * C)
    cdef const float* pw = _in(w, C)
    cdef const float* pr = _in(rstd, N)
    cdef float* pdx = _out(dx, N * C)
    cdef float* pdw = _out(dw, C)
    cdef Py_ssize_t t, j, lo, hi
    cdef int nt = n_threads if n_threads > 1 else 1
    if nt > N:
        nt = <int>N
    cdef float* buf = <float*>calloc(nt * C, sizeof(float))    # per block: its dw (C)
    if buf == NULL:
        raise MemoryError("rmsnorm_backward: no memory for the per-thread buffers")
    if nt == 1:
        with nogil:
            _rmsnorm_grad_rows(pdy, px, pw, pr, pdx, buf, N, C)
    else:
        for t in prange(nt, nogil=True, schedule="static", num_threads=nt):
            lo = t * N // nt
            hi = (t + 1) * N // nt
            _rmsnorm_grad_rows(pdy + lo * C, px + lo * C, pw, pr + lo, pdx + lo * C, buf + C * t, hi - lo, C)
    with nogil:
        for j in range(C):
            pdw[j] = buf[j]
        for t in range(1, nt):
            for j in range(C):
                pdw[j] = pdw[j] + buf[C * t + j]
        free(buf)


# ----------------------------------------------------------------------------- rotary embedding
# Rows of hs channels; row r sits at position r % T. With c = cos[t], s = sin[t] and the halves
# x1 = x[:h], x2 = x[h:]:  y1 = x1 c1 - x2 s1,  y2 = x2 c2 + x1 s2  (y = x cos + rotate_half(x) sin);
# the backward is the transposed rotation: dx1 = dy1 c1 + dy2 s2,  dx2 = dy2 c2 - dy1 s1.

cdef inline void _rope_row(const float* x, const float* c, const float* s, float* y, Py_ssize_t h,
                           int sign) noexcept nogil:
    # sign +1: the rotation (forward); -1: its transpose (backward), i.e. the angle negated
    cdef Py_ssize_t j
    cdef float sg = <float>sign
    for j in range(h):
        y[j] = x[j] * c[j] - sg * x[j + h] * s[j]
        y[j + h] = x[j + h] * c[j + h] + sg * x[j] * s[j + h]


def rope_apply(cnp.ndarray x not None, cnp.ndarray cos not None, cnp.ndarray sin not None,
               cnp.ndarray y not None, Py_ssize_t N, Py_ssize_t T, Py_ssize_t hs, int sign, int n_threads):
    cdef const float* px = _in(x, N * hs)
    cdef const float* pc = _in(cos, T * hs)
    cdef const float* ps = _in(sin, T * hs)
    cdef float* py = _out(y, N * hs)
    cdef Py_ssize_t r, h = hs // 2
    if sign != 1 and sign != -1:
        raise ValueError("sign must be 1 (forward) or -1 (backward)")
    if T < 1 or N % T or hs % 2:
        raise ValueError("rope_apply needs N a multiple of T >= 1 and an even hs")
    if n_threads <= 1:
        with nogil:
            for r in range(N):
                _rope_row(px + r * hs, pc + (r % T) * hs, ps + (r % T) * hs, py + r * hs, h, sign)
        return
    for r in prange(N, nogil=True, schedule="static", num_threads=n_threads):
        _rope_row(px + r * hs, pc + (r % T) * hs, ps + (r % T) * hs, py + r * hs, h, sign)


# ----------------------------------------------------------------------------- SwiGLU
# y = silu(g) u = g sigmoid(g) u;  dg = dy u (s + g s (1 - s)), du = dy g s,  s = sigmoid(g)

cdef inline float _exp_neg(float x) noexcept nogil:
    # exp(x) for x <= 0 (or NaN), written without calls or branches so that gcc vectorises the
    # loops around it (libm's expf stays scalar: 3x slower on the MLP's (N, F) arrays)
    cdef float xc, t, n, r, p
    xc = LL_EXP_LO if x < LL_EXP_LO else x
    t = xc * LL_LOG2E + LL_ROUND
    n = t - LL_ROUND                                   # round(x / ln2), exactly
    r = xc - n * LL_LN2_HI
    r = r - n * LL_LN2_LO                              # x - n ln2, |r| <= ln2/2
    p = ((((LL_P0 * r + LL_P1) * r + LL_P2) * r + LL_P3) * r + LL_P4) * r + LL_P5
    p = p * (r * r) + r + <float>1.0                   # exp(r)
    p = p * pythia_llama_from_bits((pythia_llama_bits(t) - pythia_llama_bits(LL_ROUND) + 127) << 23)  # * 2^n
    return <float>0.0 if x < LL_EXP_LO else p


cdef inline float _sigmoid(float z) noexcept nogil:
    # 1 / (1 + exp(-z)) from e = exp(-|z|) <= 1, so nothing overflows for any z:
    # z >= 0: 1 / (1 + e);  z < 0: e / (1 + e)
    cdef float e = _exp_neg(-z if z >= 0 else z)
    return (<float>1.0 if z >= 0 else e) / (<float>1.0 + e)


cdef inline void _swiglu_block(const float* g, const float* u, float* y, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(n):
        y[k] = g[k] * _sigmoid(g[k]) * u[k]


cdef inline void _swiglu_grad_block(const float* dy, const float* g, const float* u, float* dg, float* du,
                                    Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t k
    cdef float s, silu
    for k in range(n):
        s = _sigmoid(g[k])
        silu = g[k] * s
        dg[k] = dy[k] * u[k] * (s + silu * (<float>1.0 - s))
        du[k] = dy[k] * silu


def swiglu_forward(cnp.ndarray g not None, cnp.ndarray u not None, cnp.ndarray y not None,
                   Py_ssize_t n, int n_threads):
    cdef const float* pg = _in(g, n)
    cdef const float* pu = _in(u, n)
    cdef float* py = _out(y, n)
    cdef Py_ssize_t b, lo, nb = (n + BLOCK - 1) // BLOCK
    if n_threads <= 1:
        with nogil:
            _swiglu_block(pg, pu, py, n)
        return
    for b in prange(nb, nogil=True, schedule="static", num_threads=n_threads):
        lo = b * BLOCK
        _swiglu_block(pg + lo, pu + lo, py + lo, min(<Py_ssize_t>BLOCK, n - lo))


def swiglu_backward(cnp.ndarray dy not None, cnp.ndarray g not None, cnp.ndarray u not None,
                    cnp.ndarray dg not None, cnp.ndarray du not None, Py_ssize_t n, int n_threads):
    cdef const float* pdy = _in(dy, n)
    cdef const float* pg = _in(g, n)
    cdef const float* pu = _in(u, n)
    cdef float* pdg = _out(dg, n)
    cdef float* pdu = _out(du, n)
    cdef Py_ssize_t b, lo, nb = (n + BLOCK - 1) // BLOCK
    if n_threads <= 1:
        with nogil:
            _swiglu_grad_block(pdy, pg, pu, pdg, pdu, n)
        return
    for b in prange(nb, nogil=True, schedule="static", num_threads=n_threads):
        lo = b * BLOCK
        _swiglu_grad_block(pdy + lo, pg + lo, pu + lo, pdg + lo, pdu + lo, min(<Py_ssize_t>BLOCK, n - lo))


# ----------------------------------------------------------------------------- x W^T for a few rows
# y[n, o] = sum_c x[n, c] w[o, c] (+ b[o]). Decoding multiplies one row by each weight, so the
# product is bound by reading w: each row of w is read once, in memory order (one sequential
# stream, which the hardware prefetcher follows), and dotted with every row of x (a few rows,
# held in L1). BLAS's sgemv on this layout walks four rows side by side, four short streams,
# and was measured at about half the speed. A thread takes a contiguous band of w's rows, so
# every y[n, o] is the same sum whatever the thread count.

cdef inline void _matvec_band(const float* x, const float* w, const float* b, float* y, Py_ssize_t N,
                              Py_ssize_t C, Py_ssize_t O, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef Py_ssize_t o, n
    cdef float bias = 0.0
    for o in range(lo, hi):
        if b != NULL:
            bias = b[o]
        for n in range(N):
            y[n * O + o] = _dot3(w + o * C, x + n * C, NULL, C) + bias


def matvec(cnp.ndarray x not None, cnp.ndarray w not None, object b, cnp.ndarray y not None,
           Py_ssize_t N, Py_ssize_t C, Py_ssize_t O, int n_threads):
    cdef const float* px = _in(x, N * C)
    cdef const float* pw = _in(w, O * C)
    cdef const float* pb = NULL if b is None else _in(<cnp.ndarray?>b, O)
    cdef float* py = _out(y, N * O)
    cdef Py_ssize_t t
    cdef int nt = n_threads if n_threads > 1 else 1
    if nt > O:
        nt = <int>O
    if nt == 1:
        with nogil:
            _matvec_band(px, pw, pb, py, N, C, O, 0, O)
        return
    for t in prange(nt, nogil=True, schedule="static", num_threads=nt):
        _matvec_band(px, pw, pb, py, N, C, O, t * O // nt, (t + 1) * O // nt)
