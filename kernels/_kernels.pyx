# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled kernels behind `pythia.kernels.compiled` (which validates every argument first).

Each op is a `noexcept nogil` routine for one row (or a run of elements), and one loop,
`_run`, splits a kernel's rows among `n_threads` threads: the count the Python layer passes
to every call (as scikit-learn's `_loss` passes `n_threads`), used only when the work is
large enough to repay waking the threads. Nothing here times itself or keeps state between
calls, so a call's threads, and its result bits, follow from its arguments alone.
Arguments arrive as C-contiguous arrays plus their sizes, already checked by compiled.py,
outputs freshly allocated there (so no output overlaps an input, as `restrict` in
_kernels.h assumes); `_in`/`_out` re-check dtype, contiguity and size in a few nanoseconds (a
typed memoryview per argument cost ~0.5 us, which is most of a small kernel) and hand out
the raw pointer. N is the number of rows, C the row length, V the vocabulary; (Tq, Tk) an
attention matrix.

Speed without -ffast-math or -march=native: the inner loops are written so that gcc -O3
(with -fno-trapping-math, which changes no value) vectorises them for the target ISA. This
source is built twice by setup.py: for baseline x86-64 (SSE2) as pythia._kernels, and with
-mavx2 -mfma as pythia._kernels_avx2, which the loader picks on CPUs that have both.
- exp is our own range reduction + polynomial (`_exp`) instead of scalar libm `expf`, and
  tanh enters only through sigmoid(2u) = (1 + tanh(u)) / 2 = 1 / (1 + exp(-2u));
- sums use LANES independent partial results (`_sum`, `_dot`), because without -ffast-math
  the compiler may not reorder a single float accumulator; maxima are written with vector
  types (`pythia_max`), which gcc would otherwise leave scalar.
"""
cimport numpy as cnp
from cython.parallel cimport prange
from libc.math cimport sqrtf, logf, INFINITY, NAN
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset

cnp.import_array()

cdef extern from "_kernels.h":
    const char* PYTHIA_ISA
    int pythia_cpu_has_avx2_fma() noexcept nogil
    int pythia_default_threads() noexcept nogil
    int32_t pythia_bits(float) noexcept nogil
    float pythia_from_bits(int32_t) noexcept nogil
    const float GELU_C, GELU_2S, GELU_3C
    const float LOG2E, LN2_HI, LN2_LO, ROUND, EXP_LO, EXP_HI, EXP_OVER, P0, P1, P2, P3, P4, P5
    float pythia_max(const float* a, Py_ssize_t n) noexcept nogil
    void pythia_scaled(float* out, const float* a, float d, Py_ssize_t n) noexcept nogil
    void pythia_softmax_grad(float* dx, const float* dy, const float* y, float dot, float scale,
                             Py_ssize_t n) noexcept nogil
    void pythia_normalize(float* y, const float* x, const float* w, const float* b, float m, float r,
                          Py_ssize_t n) noexcept nogil
    void pythia_layernorm_grad_row(float* dx, float* dw, float* db, const float* dy, const float* x,
                                   const float* w, float m, float r, float sg, float sgx,
                                   Py_ssize_t n) noexcept nogil
    void pythia_add(float* acc, const float* a, Py_ssize_t n) noexcept nogil
    void pythia_adamw(float* p, const float* g, float* m, float* v, Py_ssize_t n, float gs, float b1,
                      float c1, float b2, float c2, float step, float eps, float decay) noexcept nogil

API_VERSION = 5  # must equal pythia.kernels.compiled.API_VERSION
ISA = PYTHIA_ISA.decode()  # "avx2" in the _kernels_avx2 build, "baseline" otherwise


def cpu_has_avx2_fma() -> bool:
    """True when this CPU (and OS) can run the AVX2/FMA build of these kernels."""
    return pythia_cpu_has_avx2_fma() != 0


def default_threads() -> int:
    """OpenMP's default team size (OMP_NUM_THREADS, else the usable cores); 1 in a serial build."""
    return pythia_default_threads()


# ----------------------------------------------------------------------------- threads
# A kernel's loop runs on several threads from PARALLEL_MIN units of work on: an element costs
# EXP_COST units in the kernels that exponentiate it and 1 in the others (one to three passes
# over a row in L1, or one streaming pass). A waiting OpenMP thread joins a loop in a few
# microseconds, and two threads beat one from ~16k elements of softmax (128 rows of 128:
# 12.5 -> 7.5 us), ~32k of LayerNorm (256 rows: 16 -> 10 us) and ~50k of a streaming pass
# (cross-entropy's gradient, 768 rows of 65: 10.7 -> 8.4 us).

cdef enum: PARALLEL_MIN = 32768
cdef enum: EXP_COST = 2           # so exp kernels go parallel from 16384 elements
cdef enum: LANES = 16             # partial sums per reduction (four SSE / two AVX registers)
cdef enum: LN_BLOCK = 128         # rows per partial dw, db sum in layernorm_backward


cdef struct Args:                 # one call's arrays, sizes and scalars (each kernel uses some)
    const float *x0, *x1, *x2, *x3, *x4      # inputs
    float *y0, *y1, *y2                      # outputs
    const int64_t* t
    Py_ssize_t N, C, Tq, Tk
    float f[8]

ctypedef void (*Part)(const Args* a, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil


cdef void _run(Part part, const Args* a, Py_ssize_t n, Py_ssize_t work, int n_threads) noexcept nogil:
    # items [0, n) of a kernel over `work` units, as nt contiguous equal shares, share k on
    # thread k (whole matrices of the causal triangle per thread when the count divides).
    # One thread runs outside OpenMP: a parallel region of one thread still sets up a team,
    # ~1 us a call (softmax backward on one row: 2.4 -> 1.6 us).
    cdef int k, nt = n_threads
    if work < PARALLEL_MIN or n < 2 or nt < 2:
        nt = 1
    elif nt > n:
        nt = <int>n
    if nt == 1:
        part(a, 0, n)
        return
    for k in prange(nt, num_threads=nt, schedule="static"):
        part(a, k * n // nt, (k + 1) * n // nt)


# ----------------------------------------------------------------------------- vector math

cdef inline float _exp_neg(float x) noexcept nogil:
    # exp(x) for float32, ~1 ulp, for x <= EXP_HI (as softmax's x - max <= 0) or NaN -> NaN;
    # x < EXP_LO (and -inf) -> 0
    cdef float xc, t, n, r, p
    xc = EXP_LO if x < EXP_LO else x               # written so that NaN passes through
    t = xc * LOG2E + ROUND
    n = t - ROUND                                  # round(x / ln2), exactly, as a float
    r = xc - n * LN2_HI
    r = r - n * LN2_LO                             # x - n ln2, |r| <= ln2/2
    p = ((((P0 * r + P1) * r + P2) * r + P3) * r + P4) * r + P5
    p = p * (r * r) + r + <float>1.0               # exp(r); <float>: a bare 1.0 is a C double
    # 2^n built in the exponent field; the low bits of t hold n + bits(ROUND)
    p = p * pythia_from_bits((pythia_bits(t) - pythia_bits(ROUND) + 127) << 23)
    return <float>0.0 if x < EXP_LO else p


cdef inline float _exp(float x) noexcept nogil:
    # exp(x) for any x: x > EXP_OVER -> inf (between EXP_HI and EXP_OVER, where exp is within
    # 1.5x of FLT_MAX, it gives exp(EXP_HI))
    cdef float p = _exp_neg(EXP_HI if x > EXP_HI else x)
    return INFINITY if x > EXP_OVER else p


cdef inline float _sigmoid(float z) noexcept nogil:
    # 1 / (1 + exp(-z)); exactly 0 once exp(-z) overflows to inf, 1 once it underflows to 0
    return <float>1.0 / (<float>1.0 + _exp(-z))


# Reductions keep LANES independent partial results: the main loop feeds lane k with the
# elements j = k (mod LANES), the n % LANES leftover elements each go to a lane of their own
# (independent adds, not a serial chain; a fixed lane index keeps acc in registers), and the
# lanes are folded pairwise (16 -> 8 -> 4 -> 2 -> 1).

cdef inline float _fold_sum(float* acc) noexcept nogil:
    cdef int k
    for k in range(8):
        acc[k] = acc[k] + acc[k + 8]
    for k in range(4):
        acc[k] = acc[k] + acc[k + 4]
    return (acc[0] + acc[2]) + (acc[1] + acc[3])


cdef inline float _sum(const float* a, Py_ssize_t n) noexcept nogil:
    # sum(a)
    cdef float acc[LANES]
    cdef Py_ssize_t j, k, n16 = n - n % LANES
    for k in range(LANES):
        acc[k] = 0.0
    for j in range(0, n16, 16):           # 16 == LANES (a range step must be a literal)
        for k in range(LANES):
            acc[k] = acc[k] + a[j + k]
    if n16 < n:                           # the n - n16 < LANES leftovers, one lane each
        for k in range(LANES):
            if n16 + k < n:
                acc[k] = acc[k] + a[n16 + k]
    return _fold_sum(acc)


cdef inline float _dot(const float* a, const float* b, Py_ssize_t n) noexcept nogil:
    # sum(a * b)
    cdef float acc[LANES]
    cdef Py_ssize_t j, k, n16 = n - n % LANES
    for k in range(LANES):
        acc[k] = 0.0
    for j in range(0, n16, 16):
        for k in range(LANES):
            acc[k] = acc[k] + a[j + k] * b[j + k]
    if n16 < n:                           # the n - n16 < LANES leftovers, one lane each
        for k in range(LANES):
            if n16 + k < n:
                acc[k] = acc[k] + a[n16 + k] * b[n16 + k]
    return _fold_sum(acc)


cdef inline float _sqdev(const float* a, float m, Py_ssize_t n) noexcept nogil:
    # sum((a - m)^2)
    cdef float acc[LANES]
    cdef Py_ssize_t j, k, n16 = n - n % LANES
    for k in range(LANES):
        acc[k] = 0.0
    for j in range(0, n16, 16):
        for k in range(LANES):
            acc[k] = acc[k] + (a[j + k] - m) * (a[j + k] - m)
    if n16 < n:                           # the n - n16 < LANES leftovers, one lane each
        for k in range(LANES):
            if n16 + k < n:
                acc[k] = acc[k] + (a[n16 + k] - m) * (a[n16 + k] - m)
    return _fold_sum(acc)


# ----------------------------------------------------------------------------- buffers

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


cdef const int64_t* _targets(cnp.ndarray a, Py_ssize_t n, Py_ssize_t V) except NULL:
    # class indices: int64, C-contiguous, n elements, each in [0, V) (they index the rows)
    cdef Py_ssize_t i
    cdef const int64_t* t
    cdef bint bad = False
    if cnp.PyArray_TYPE(a) != cnp.NPY_INT64 or not cnp.PyArray_IS_C_CONTIGUOUS(a) or cnp.PyArray_SIZE(a) != n:
        raise ValueError(f"targets must be a C-contiguous int64 array of {n} elements")
    t = <const int64_t*>cnp.PyArray_DATA(a)
    with nogil:
        for i in range(n):
            bad = bad | (t[i] < 0) | (t[i] >= V)
    if bad:
        raise ValueError(f"targets must lie in [0, {V})")
    return t


def targets_in_range(cnp.ndarray t not None, Py_ssize_t N, Py_ssize_t V) -> bool:
    """True when all N int64 targets lie in [0, V) (one pass in C, no temporaries)."""
    try:
        _targets(t, N, V)
    except ValueError:
        return False
    return True


# ----------------------------------------------------------------------------- softmax

cdef inline void _softmax_row(const float* x, float* y, Py_ssize_t C, float scale) noexcept nogil:
    # y = exp(scale x - max) / sum; an all -inf row gives y = 0 (defined, not NaN)
    cdef Py_ssize_t j
    cdef float m, inv
    m = pythia_max(x, C)
    if m == -INFINITY:                     # every entry -inf (y = 0) or NaN (y = NaN)
        for j in range(C):
            y[j] = 0.0 if x[j] == -INFINITY else NAN
        return
    m = m * scale
    for j in range(C):
        y[j] = _exp_neg(x[j] * scale - m)
    inv = <float>1.0 / _sum(y, C)
    for j in range(C):
        y[j] = y[j] * inv


cdef inline void _softmax_grad_row(const float* dy, const float* y, float* dx, Py_ssize_t C,
                                   float scale) noexcept nogil:
    # dx = scale * y * (dy - sum(dy * y))
    pythia_softmax_grad(dx, dy, y, _dot(dy, y, C), scale, C)


cdef void _softmax_rows(const Args* a, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef Py_ssize_t i, C = a.C
    for i in range(lo, hi):
        _softmax_row(a.x0 + i * C, a.y0 + i * C, C, 1.0)


cdef void _softmax_grad_rows(const Args* a, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef Py_ssize_t i, C = a.C
    for i in range(lo, hi):
        _softmax_grad_row(a.x0 + i * C, a.x1 + i * C, a.y0 + i * C, C, 1.0)


def softmax_forward(cnp.ndarray x not None, cnp.ndarray y not None, Py_ssize_t N, Py_ssize_t C,
                    int n_threads):
    cdef Args a
    a.x0, a.y0, a.C = _in(x, N * C), _out(y, N * C), C
    with nogil:
        _run(_softmax_rows, &a, N, EXP_COST * N * C, n_threads)


def softmax_backward(cnp.ndarray dy not None, cnp.ndarray y not None, cnp.ndarray dx not None,
                     Py_ssize_t N, Py_ssize_t C, int n_threads):
    cdef Args a
    a.x0, a.x1, a.y0, a.C = _in(dy, N * C), _in(y, N * C), _out(dx, N * C), C
    with nogil:
        _run(_softmax_grad_rows, &a, N, N * C, n_threads)


# ----------------------------------------------------------------------------- causal attention softmax
# row r of the N (Tq, Tk) matrices, flattened to N Tq rows, attends keys 0..off + r % Tq,
# off = Tk - Tq; only those are read and exponentiated, the rest of the row is written as 0

cdef void _attention_rows(const Args* a, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    # softmax over the L visible keys of each row of scores, scaled by f[0]; masked keys get 0
    cdef Py_ssize_t r, L, Tk = a.Tk, off = a.Tk - a.Tq
    for r in range(lo, hi):
        L = off + r % a.Tq + 1
        _softmax_row(a.x0 + r * Tk, a.y0 + r * Tk, L, a.f[0])
        if L < Tk:
            memset(a.y0 + r * Tk + L, 0, (Tk - L) * sizeof(float))


cdef void _attention_grad_rows(const Args* a, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    # dscores = scale * y * (dy - sum(dy * y)) over the visible keys rounded up to whole LANES
    # so that the rows vectorise (y is 0 past the visible keys, so those add nothing and get
    # dx = 0); the rest of the row gets dx = 0
    cdef Py_ssize_t r, L, Tk = a.Tk, off = a.Tk - a.Tq
    for r in range(lo, hi):
        L = min(Tk, (off + r % a.Tq + LANES) // LANES * LANES)
        _softmax_grad_row(a.x0 + r * Tk, a.x1 + r * Tk, a.y0 + r * Tk, L, a.f[0])
        if L < Tk:
            memset(a.y0 + r * Tk + L, 0, (Tk - L) * sizeof(float))


def attention_softmax_forward(cnp.ndarray s not None, cnp.ndarray y not None, Py_ssize_t N,
                              Py_ssize_t Tq, Py_ssize_t Tk, float scale, int n_threads):
    cdef Args a
    a.x0, a.y0, a.Tq, a.Tk, a.f[0] = _in(s, N * Tq * Tk), _out(y, N * Tq * Tk), Tq, Tk, scale
    with nogil:
        _run(_attention_rows, &a, N * Tq, EXP_COST * N * Tq * Tk, n_threads)


def attention_softmax_backward(cnp.ndarray dy not None, cnp.ndarray y not None, cnp.ndarray dx not None,
                               Py_ssize_t N, Py_ssize_t Tq, Py_ssize_t Tk, float scale, int n_threads):
    cdef Args a
    a.x0, a.x1, a.y0 = _in(dy, N * Tq * Tk), _in(y, N * Tq * Tk), _out(dx, N * Tq * Tk)
    a.Tq, a.Tk, a.f[0] = Tq, Tk, scale
    with nogil:
        _run(_attention_grad_rows, &a, N * Tq, N * Tq * Tk, n_threads)


# ----------------------------------------------------------------------------- layernorm

cdef void _layernorm_rows(const Args* a, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    # mean = sum(x)/C; var = sum((x - mean)^2)/C (biased, two passes over a row in L1);
    # y = (x - mean) rstd w + b, rstd = 1 / sqrt(var + eps), eps = f[0]
    cdef Py_ssize_t i, C = a.C
    cdef float m, r
    for i in range(lo, hi):
        m = _sum(a.x0 + i * C, C) / C
        r = <float>1.0 / sqrtf(_sqdev(a.x0 + i * C, m, C) / C + a.f[0])
        pythia_normalize(a.y0 + i * C, a.x0 + i * C, a.x1, a.x2, m, r, C)
        a.y1[i] = m
        a.y2[i] = r


def layernorm_forward(cnp.ndarray x not None, cnp.ndarray w not None, cnp.ndarray b not None,
                      cnp.ndarray y not None, cnp.ndarray mean not None, cnp.ndarray rstd not None,
                      Py_ssize_t N, Py_ssize_t C, float eps, int n_threads):
    cdef Args a
    a.x0, a.x1, a.x2 = _in(x, N * C), _in(w, C), _in(b, C)
    a.y0, a.y1, a.y2, a.C, a.f[0] = _out(y, N * C), _out(mean, N), _out(rstd, N), C, eps
    with nogil:
        _run(_layernorm_rows, &a, N, N * C, n_threads)


cdef inline float _dot3(const float* a, const float* b, const float* c, float m, Py_ssize_t n) noexcept nogil:
    # sum(a b (c - m))
    cdef float acc[LANES]
    cdef Py_ssize_t j, k, n16 = n - n % LANES
    for k in range(LANES):
        acc[k] = 0.0
    for j in range(0, n16, 16):
        for k in range(LANES):
            acc[k] = acc[k] + a[j + k] * b[j + k] * (c[j + k] - m)
    if n16 < n:                           # the n - n16 < LANES leftovers, one lane each
        for k in range(LANES):
            if n16 + k < n:
                acc[k] = acc[k] + a[n16 + k] * b[n16 + k] * (c[n16 + k] - m)
    return _fold_sum(acc)


cdef void _layernorm_grad_blocks(const Args* a, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    # blocks [lo, hi) of LN_BLOCK rows. For each row, with xhat = (x - mean) rstd and g = dy w
    # (the gradient wrt xhat): dx = rstd (g - mean(g) - xhat mean(g xhat)); block k sums its
    # rows' dw += dy xhat and db += dy into its own pair in y1 (no sharing between threads).
    # Pointers are copied to locals: a store through a float* may alias *a for the compiler.
    cdef Py_ssize_t k, i, C = a.C, N = a.N
    cdef const float *dy = a.x0, *x = a.x1, *w = a.x2, *mean = a.x3, *rstd = a.x4
    cdef float *dx = a.y0, *sums = a.y1
    cdef float m, r, sg, sgx
    for k in range(lo, hi):
        for i in range(k * LN_BLOCK, min(N, (k + 1) * LN_BLOCK)):
            m, r = mean[i], rstd[i]
            sg = _dot(dy + i * C, w, C) / C                            # mean(g)
            sgx = _dot3(dy + i * C, w, x + i * C, m, C) * r / C         # mean(g xhat)
            pythia_layernorm_grad_row(dx + i * C, sums + 2 * C * k, sums + 2 * C * k + C,
                                      dy + i * C, x + i * C, w, m, r, sg, sgx, C)


def layernorm_backward(cnp.ndarray dy not None, cnp.ndarray x not None, cnp.ndarray w not None,
                       cnp.ndarray mean not None, cnp.ndarray rstd not None, cnp.ndarray dx not None,
                       cnp.ndarray dw not None, cnp.ndarray db not None, Py_ssize_t N, Py_ssize_t C,
                       int n_threads):
    # dw, db are sums over the rows: each block of LN_BLOCK rows sums into its own buffer and
    # the buffers are added in block order, so the bits do not depend on the thread count
    cdef Args a
    a.x0, a.x1, a.x2, a.x3, a.x4 = _in(dy, N * C), _in(x, N * C), _in(w, C), _in(mean, N), _in(rstd, N)
    a.y0, a.N, a.C = _out(dx, N * C), N, C
    cdef float* pdw = _out(dw, C)
    cdef float* pdb = _out(db, C)
    cdef Py_ssize_t k, nb = (N + LN_BLOCK - 1) // LN_BLOCK
    a.y1 = <float*>calloc(nb * 2 * C, sizeof(float))             # per block: dw (C) then db (C)
    if a.y1 == NULL:
        raise MemoryError("layernorm_backward: no memory for the per-block sums")
    with nogil:
        _run(_layernorm_grad_blocks, &a, nb, N * C, n_threads)
        memcpy(pdw, a.y1, C * sizeof(float))
        memcpy(pdb, a.y1 + C, C * sizeof(float))
        for k in range(1, nb):
            pythia_add(pdw, a.y1 + 2 * C * k, C)
            pythia_add(pdb, a.y1 + 2 * C * k + C, C)
        free(a.y1)


# ----------------------------------------------------------------------------- GELU (tanh)
# 0.5 (1 + tanh(u)) = sigmoid(2u), so gelu(x) = x sigmoid(2u), u = s (x + c x^3), s = sqrt(2/pi)

cdef void _gelu_part(const Args* a, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef const float* x = a.x0          # locals: a store through y may alias *a for the compiler
    cdef float* y = a.y0
    cdef Py_ssize_t k
    cdef float v
    for k in range(lo, hi):
        v = x[k]
        y[k] = v * _sigmoid(GELU_2S * (v + GELU_C * v * v * v))


cdef void _gelu_grad_part(const Args* a, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    # gelu'(x) = 0.5 (1 + t) + 0.5 x (1 - t^2) s (1 + 3 c x^2),  t = tanh(u)
    #          = q + 2 s x q (1 - q) (1 + 3 c x^2),              q = sigmoid(2u) = (1 + t) / 2
    cdef const float *dy = a.x0, *x = a.x1
    cdef float* dx = a.y0
    cdef Py_ssize_t k
    cdef float v, q
    for k in range(lo, hi):
        v = x[k]
        q = _sigmoid(GELU_2S * (v + GELU_C * v * v * v))
        dx[k] = dy[k] * (q + GELU_2S * v * q * (<float>1.0 - q) * (<float>1.0 + GELU_3C * v * v))


def gelu_forward(cnp.ndarray x not None, cnp.ndarray y not None, Py_ssize_t n, int n_threads):
    cdef Args a
    a.x0, a.y0 = _in(x, n), _out(y, n)
    with nogil:
        _run(_gelu_part, &a, n, EXP_COST * n, n_threads)


def gelu_backward(cnp.ndarray dy not None, cnp.ndarray x not None, cnp.ndarray dx not None, Py_ssize_t n,
                  int n_threads):
    cdef Args a
    a.x0, a.x1, a.y0 = _in(dy, n), _in(x, n), _out(dx, n)
    with nogil:
        _run(_gelu_grad_part, &a, n, EXP_COST * n, n_threads)


# ----------------------------------------------------------------------------- softmax + cross-entropy

cdef void _crossentropy_rows(const Args* a, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    # p = softmax(z); loss = logsumexp(z) - z[t] = log(sum exp(z - max)) + max - z[t]
    # (not -log p[t], which is inf once p[t] underflows although the loss is finite)
    cdef Py_ssize_t i, j, V = a.C
    cdef const float* z
    cdef float* p
    cdef float m, s
    for i in range(lo, hi):
        z, p = a.x0 + i * V, a.y1 + i * V
        m = pythia_max(z, V)
        if m == -INFINITY:                  # every logit -inf (or NaN): no defined loss
            _softmax_row(z, p, V, 1.0)
            a.y0[i] = NAN
            continue
        for j in range(V):
            p[j] = _exp_neg(z[j] - m)
        s = _sum(p, V)
        for j in range(V):
            p[j] = p[j] * (<float>1.0 / s)
        a.y0[i] = logf(s) + m - z[a.t[i]]


def crossentropy_forward(cnp.ndarray z not None, cnp.ndarray t not None, cnp.ndarray loss not None,
                         cnp.ndarray p not None, Py_ssize_t N, Py_ssize_t V, int n_threads):
    cdef Args a
    a.x0, a.t, a.y0, a.y1, a.C = _in(z, N * V), _targets(t, N, V), _out(loss, N), _out(p, N * V), V
    with nogil:
        _run(_crossentropy_rows, &a, N, EXP_COST * N * V, n_threads)


cdef void _scaled_part(const Args* a, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    # dz = d p over elements [lo, hi), d = f[0]
    pythia_scaled(a.y0 + lo, a.x1 + lo, a.f[0], hi - lo)


cdef void _crossentropy_grad_rows(const Args* a, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    # dz = dloss (p - onehot(t)), row by row
    cdef Py_ssize_t i, V = a.C
    for i in range(lo, hi):
        pythia_scaled(a.y0 + i * V, a.x1 + i * V, a.x0[i], V)
        a.y0[i * V + a.t[i]] = a.y0[i * V + a.t[i]] - a.x0[i]


def crossentropy_backward(cnp.ndarray dloss not None, cnp.ndarray p not None, cnp.ndarray t not None,
                          cnp.ndarray dz not None, Py_ssize_t N, Py_ssize_t V, int n_threads):
    # dz = dloss * (p - onehot(t)). A mean loss gives every row the same dloss d; then dz = d p
    # is one flat scaled copy (no per-row loop overhead on rows of 65), followed by the N
    # subtractions at the targets: the same operations per element as the row path, so the
    # same bits.
    cdef Args a
    a.x0, a.x1, a.t, a.y0, a.C = _in(dloss, N), _in(p, N * V), _targets(t, N, V), _out(dz, N * V), V
    cdef Py_ssize_t i
    cdef bint uniform = True
    with nogil:
        for i in range(1, N):                  # bitwise equal, so NaN and -0.0 rows count as they are
            if pythia_bits(a.x0[i]) != pythia_bits(a.x0[0]):
                uniform = False
                break
        if not uniform:
            _run(_crossentropy_grad_rows, &a, N, N * V, n_threads)
        else:
            a.f[0] = a.x0[0]
            _run(_scaled_part, &a, N * V, N * V, n_threads)
            for i in range(N):
                a.y0[i * V + a.t[i]] = a.y0[i * V + a.t[i]] - a.f[0]


# ----------------------------------------------------------------------------- AdamW

cdef void _adamw_part(const Args* a, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    pythia_adamw(a.y0 + lo, a.x0 + lo, a.y1 + lo, a.y2 + lo, hi - lo,
                 a.f[0], a.f[1], a.f[2], a.f[3], a.f[4], a.f[5], a.f[6], a.f[7])


def adamw_update(cnp.ndarray p not None, cnp.ndarray g not None, cnp.ndarray m not None,
                 cnp.ndarray v not None, Py_ssize_t n, float gs, float b1, float c1, float b2,
                 float c2, float step, float eps, float decay, int n_threads):
    # g' = gs g; m = b1 m + c1 g'; v = b2 v + c2 g'^2; p = decay p - step m / (sqrt(v) + eps),
    # in place (p y0, g x0, m y1, v y2)
    cdef Args a
    a.y0, a.x0, a.y1, a.y2 = _out(p, n), _in(g, n), _out(m, n), _out(v, n)
    a.f = [gs, b1, c1, b2, c2, step, eps, decay]
    with nogil:
        _run(_adamw_part, &a, n, n, n_threads)
