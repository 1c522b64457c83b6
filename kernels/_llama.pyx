# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled Llama-family kernels behind `pythia.kernels.llama_compiled` (which validates first).

RMSNorm, rotary embedding and the SwiGLU gate, forward and backward, each a `noexcept nogil`
routine for one row or block, wrapped in a loop over rows; and the products of a few rows with
a weight, stored (out, in) or (in, out), that decoding multiplies by. The caller passes the thread count
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
from libc.stdlib cimport calloc, free, malloc

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


# ----------------------------------------------------------------------------- few-row products
# Decoding multiplies one row (or, decoding a batch of sequences as the server does, a few rows)
# by each weight, so a step is bound by reading the weights: here each element of a weight is
# read from memory once and meets every row of x in registers. Two layouts:
#   matvec  y[n, o] = sum_c x[n, c] w[o, c] (+ b[o])   w (out, in): Hugging Face's projections,
#                                                        the token table as a tied head
#   vecmat  y[n, o] = sum_c x[n, c] w[c, o] (+ b[o])   w (in, out): GPT-2's Conv1D
# The vector code is written once as C macros over the vector width L and the row count NB
# (1..8, a constant so that the sums live in registers): L = 4 with the baseline flags, and 8
# for AVX2 and FMA, compiled through gcc's target attribute and chosen at run time by the CPU's
# flags (`level` 1; 0 is the baseline), so the baseline wheel runs it without a separate build.
# An AVX-512 variant was measured no faster: the products are bound by memory, not arithmetic.
# -ffp-contract is gcc's default here: a multiply-add may be fused.
# Work is split into tasks over the output units, run by the thread pool of kernels/_pool.h (the
# caller never waits for a thread that has not started a task, so a busy machine costs no more
# than one thread; workers spin 0.5 ms after a product, through a decode step's gaps). Each
# y[n, o] is the same sum whatever the thread count.
#
# The sums of up to FEW_GROUP = 4 rows of x share the registers; rows 5-8 are a second group
# that takes the same part of w right after the first, from cache (measured faster than eight
# rows' sums at once, which leave too few registers).
#
# matvec: the tasks are bands of MV_BAND rows of w; each row of w is read once, front to back
# (one sequential stream, which the hardware prefetcher follows: BLAS's sgemv on this layout
# walks four rows side by side and was measured at half the speed), its dot product with each
# row of x summed in vector accumulators, then across the vector.
#
# vecmat: from two rows BLAS runs a matrix product that first packs w into a copy, measured at a
# quarter of the bandwidth. Here the sums acc[n][CW columns] of all N rows stay in vector
# registers while VM_KB rows of w pass (the band's lines of the next VM_KB rows are prefetched
# meanwhile), then go back to y:
#     y[n, j:j+CW] += sum over c in the band of x[n, c] w[c, j:j+CW]
# Its columns are cut into 2 x threads contiguous ranges (tasks), so every row of w is read in
# long stretches. One row (a decode step) goes to vecmat_row instead: w's rows in VM1_BANDS
# contiguous bands, each streamed front to back into its own partial y in cache, the partials
# then added in band order; at GPT-2-small's shape it decoded 1.2x as fast as BLAS's sgemv on
# the one thread the thread rule gives a decode step.

cdef extern from "_pool.h":
    ctypedef void (*pp_fn)(const void* job, Py_ssize_t t0, Py_ssize_t t1) noexcept nogil
    void pythia_pool_run(pp_fn fn, const void* job, Py_ssize_t count, int threads) noexcept nogil

cdef extern from *:
    """
    #define FEW_MAX_ROWS 8               /* rows of x a call takes */
    #define FEW_GROUP 4                  /* rows of x whose sums share registers; more go in a second group */
    #define MV_BAND 16                   /* rows of w a matvec task: 16 x C floats in one stretch */
    #define VM_KB 8                      /* rows of w per vecmat band */
    typedef float pythia_v4 __attribute__((vector_size(16), aligned(4)));
    typedef float pythia_v8 __attribute__((vector_size(32), aligned(4)));
    /* one group's part of a product: NB <= FEW_GROUP rows of x (rows x, y of C and O floats),
       matvec's rows [o0, o1) of w (out, in), or vecmat's band [c0, c0 + kb) of w's rows (in, out)
       for y's columns [j0, j1) */
    typedef void (*pythia_mv_fn)(const float* x, const float* w, const float* b, float* y,
                                 Py_ssize_t C, Py_ssize_t O, Py_ssize_t o0, Py_ssize_t o1);
    typedef void (*pythia_vm_fn)(const float* x, const float* w, float* y, Py_ssize_t C, Py_ssize_t O,
                                 Py_ssize_t c0, Py_ssize_t kb, Py_ssize_t j0, Py_ssize_t j1);
    typedef struct { const float* x; const float* w; const float* b; float* y; Py_ssize_t N, C, O, task;
                     pythia_mv_fn mv[2]; pythia_vm_fn vm[2]; } pythia_few_job;
    /* matvec, rows [o0, o1) of w against NB rows of x: each row of w streamed once, its dot
       product with each row of x in U = 2 vector accumulators, folded in halves (a fixed order) */
    #define PYTHIA_MV(ATTR, V, L, NB) \
    ATTR static void pythia_mv_##L##_##NB(const float* x, const float* w, const float* b, float* y, \
                                          Py_ssize_t C, Py_ssize_t O, Py_ssize_t o0, Py_ssize_t o1) { \
        const Py_ssize_t cw = C / (2 * L) * (2 * L); \
        for (Py_ssize_t o = o0; o < o1; o++) { \
            const float* wo = w + o * C; \
            V acc[2][NB]; \
            for (int u = 0; u < 2; u++) for (int n = 0; n < NB; n++) acc[u][n] = (V){0}; \
            for (Py_ssize_t c = 0; c < cw; c += 2 * L) \
                for (int u = 0; u < 2; u++) { \
                    const V wv = *(const V*)(wo + c + u * L); \
                    for (int n = 0; n < NB; n++) acc[u][n] += *(const V*)(x + n * C + c + u * L) * wv; \
                } \
            for (int n = 0; n < NB; n++) { \
                const V v = acc[0][n] + acc[1][n]; \
                float t[L]; \
                memcpy(t, &v, sizeof t); \
                for (int h = L / 2; h >= 1; h /= 2) for (int k = 0; k < h; k++) t[k] += t[k + h]; \
                float s = t[0]; \
                for (Py_ssize_t c = cw; c < C; c++) s += x[n * C + c] * wo[c]; \
                y[n * O + o] = b ? s + b[o] : s; \
            } \
        } \
    }
    /* vecmat, one band of kb <= VM_KB rows of w for y's columns [j0, j1) (y holds the sums so far):
       CW columns' sums of NB rows in registers while the band's rows pass; the lines of the
       next band are prefetched; the columns past the last whole CW run one at a time */
    #define PYTHIA_VM(ATTR, V, L, NB, CW) \
    ATTR static void pythia_vm_##L##_##NB(const float* x, const float* w, float* y, Py_ssize_t C, \
                                          Py_ssize_t O, Py_ssize_t c0, Py_ssize_t kb, Py_ssize_t j0, \
                                          Py_ssize_t j1) { \
        const Py_ssize_t jw = j0 + (j1 - j0) / (CW) * (CW); \
        V xb[VM_KB][NB]; \
        for (Py_ssize_t c = 0; c < kb; c++) \
            for (int n = 0; n < NB; n++) xb[c][n] = x[n * C + c0 + c] + (V){0}; \
        for (Py_ssize_t j = j0; j < jw; j += (CW)) { \
            V acc[NB][(CW) / L]; \
            for (int n = 0; n < NB; n++) \
                for (int k = 0; k < (CW) / L; k++) acc[n][k] = *(const V*)(y + n * O + j + L * k); \
            if (c0 + 2 * VM_KB <= C) \
                for (int r = 0; r < VM_KB; r++) __builtin_prefetch(w + (c0 + VM_KB + r) * O + j); \
            for (Py_ssize_t c = 0; c < kb; c++) { \
                V wv[(CW) / L]; \
                for (int k = 0; k < (CW) / L; k++) wv[k] = *(const V*)(w + (c0 + c) * O + j + L * k); \
                for (int n = 0; n < NB; n++) \
                    for (int k = 0; k < (CW) / L; k++) acc[n][k] += xb[c][n] * wv[k]; \
            } \
            for (int n = 0; n < NB; n++) \
                for (int k = 0; k < (CW) / L; k++) *(V*)(y + n * O + j + L * k) = acc[n][k]; \
        } \
        for (Py_ssize_t j = jw; j < j1; j++) \
            for (int n = 0; n < NB; n++) { \
                float a = y[n * O + j]; \
                for (Py_ssize_t c = c0; c < c0 + kb; c++) a += x[n * C + c] * w[c * O + j]; \
                y[n * O + j] = a; \
            } \
    }
    /* every group size; vecmat's CW keeps its sums to 8 vectors, leaving registers for w and x */
    #define PYTHIA_FEW_ALL(ATTR, V, L) \
        PYTHIA_MV(ATTR, V, L, 1) PYTHIA_MV(ATTR, V, L, 2) PYTHIA_MV(ATTR, V, L, 3) PYTHIA_MV(ATTR, V, L, 4) \
        PYTHIA_VM(ATTR, V, L, 1, 4 * L) PYTHIA_VM(ATTR, V, L, 2, 4 * L) PYTHIA_VM(ATTR, V, L, 3, 2 * L) \
        PYTHIA_VM(ATTR, V, L, 4, 2 * L) \
        static const pythia_mv_fn pythia_mv_##L[FEW_GROUP + 1] = { NULL, \
            pythia_mv_##L##_1, pythia_mv_##L##_2, pythia_mv_##L##_3, pythia_mv_##L##_4 }; \
        static const pythia_vm_fn pythia_vm_##L[FEW_GROUP + 1] = { NULL, \
            pythia_vm_##L##_1, pythia_vm_##L##_2, pythia_vm_##L##_3, pythia_vm_##L##_4 };
    /* vecmat of one row over rows [0, rows) of w, into acc (O floats): one sequential stream of w,
       each row scaled into the sums (in L1 or L2) */
    #define PYTHIA_VM1(ATTR, L) \
    ATTR static void pythia_vm1_##L(const float* x, const float* w, float* acc, Py_ssize_t rows, Py_ssize_t O) { \
        for (Py_ssize_t k = 0; k < O; k++) acc[k] = 0.0f; \
        for (Py_ssize_t c = 0; c < rows; c++) { \
            const float a = x[c]; \
            const float* __restrict wc = w + c * O; \
            float* __restrict ac = acc; \
            for (Py_ssize_t k = 0; k < O; k++) ac[k] += a * wc[k]; \
        } \
    }
    PYTHIA_VM1(, 4)
    PYTHIA_FEW_ALL(, pythia_v4, 4)
    #if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    PYTHIA_VM1(__attribute__((target("avx2,fma"))), 8)
    PYTHIA_FEW_ALL(__attribute__((target("avx2,fma"))), pythia_v8, 8)
    /* the widest code the CPU runs: 1 AVX2 and FMA, 0 baseline */
    static int pythia_few_cpu_level(void) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    #else
    #define pythia_vm1_8 pythia_vm1_4
    static const pythia_mv_fn pythia_mv_8[FEW_GROUP + 1] = { NULL };
    static const pythia_vm_fn pythia_vm_8[FEW_GROUP + 1] = { NULL };
    static int pythia_few_cpu_level(void) { return 0; }
    #endif
    /* the functions of the first group (rows 0..3) and of the second (rows 4..N-1, or none) */
    static void pythia_few_pick(pythia_few_job* j, int level) {
        const Py_ssize_t n0 = j->N < FEW_GROUP ? j->N : FEW_GROUP, n1 = j->N - n0;
        j->mv[0] = (level ? pythia_mv_8 : pythia_mv_4)[n0];
        j->vm[0] = (level ? pythia_vm_8 : pythia_vm_4)[n0];
        j->mv[1] = n1 ? (level ? pythia_mv_8 : pythia_mv_4)[n1] : NULL;
        j->vm[1] = n1 ? (level ? pythia_vm_8 : pythia_vm_4)[n1] : NULL;
    }
    /* matvec's tasks: bands of MV_BAND rows of w, each through the first group, then (from cache)
       through the second */
    static void pythia_mv_tasks(const void* p, Py_ssize_t t0, Py_ssize_t t1) {
        const pythia_few_job* j = (const pythia_few_job*)p;
        for (Py_ssize_t t = t0; t < t1; t++) {
            const Py_ssize_t o0 = t * MV_BAND, o1 = o0 + MV_BAND < j->O ? o0 + MV_BAND : j->O;
            j->mv[0](j->x, j->w, j->b, j->y, j->C, j->O, o0, o1);
            if (j->mv[1])
                j->mv[1](j->x + FEW_GROUP * j->C, j->w, j->b, j->y + FEW_GROUP * j->O, j->C, j->O, o0, o1);
        }
    }
    /* vecmat's tasks: ranges of `task` columns, walked band by band, each band through the first
       group, then (from L1) through the second */
    static void pythia_vm_tasks(const void* p, Py_ssize_t t0, Py_ssize_t t1) {
        const pythia_few_job* j = (const pythia_few_job*)p;
        const Py_ssize_t j0 = t0 * j->task, j1 = t1 * j->task < j->O ? t1 * j->task : j->O;
        for (Py_ssize_t c0 = 0; c0 < j->C && j0 < j1; c0 += VM_KB) {
            const Py_ssize_t kb = c0 + VM_KB <= j->C ? VM_KB : j->C - c0;
            j->vm[0](j->x, j->w, j->y, j->C, j->O, c0, kb, j0, j1);
            if (j->vm[1])
                j->vm[1](j->x + FEW_GROUP * j->C, j->w, j->y + FEW_GROUP * j->O, j->C, j->O, c0, kb, j0, j1);
        }
    }
    /* vecmat of one row: VM1_BANDS bands of w's rows, each a contiguous stretch of memory summed
       into its own partial y (part, VM1_BANDS x O), added in band order by the caller */
    #define VM1_BANDS 8
    typedef struct { const float* x; const float* w; float* part; Py_ssize_t C, O; int level; } pythia_vm1_job;
    static void pythia_vm1_tasks(const void* p, Py_ssize_t t0, Py_ssize_t t1) {
        const pythia_vm1_job* j = (const pythia_vm1_job*)p;
        for (Py_ssize_t t = t0; t < t1; t++) {
            const Py_ssize_t c0 = t * j->C / VM1_BANDS, c1 = (t + 1) * j->C / VM1_BANDS;
            (j->level ? pythia_vm1_8 : pythia_vm1_4)(j->x + c0, j->w + c0 * j->O, j->part + t * j->O, c1 - c0, j->O);
        }
    }
    """
    enum: FEW_MAX_ROWS_C "FEW_MAX_ROWS"
    enum: VM1_BANDS
    ctypedef struct pythia_vm1_job:
        const float* x
        const float* w
        float* part
        Py_ssize_t C, O
        int level
    void pythia_vm1_tasks(const void* p, Py_ssize_t t0, Py_ssize_t t1) noexcept nogil
    enum: MV_BAND
    ctypedef struct pythia_few_job:
        const float* x
        const float* w
        const float* b
        float* y
        Py_ssize_t N, C, O, task
    int pythia_few_cpu_level() noexcept nogil
    void pythia_few_pick(pythia_few_job* j, int level) noexcept nogil
    void pythia_mv_tasks(const void* p, Py_ssize_t t0, Py_ssize_t t1) noexcept nogil
    void pythia_vm_tasks(const void* p, Py_ssize_t t0, Py_ssize_t t1) noexcept nogil

FEW_MAX_ROWS = FEW_MAX_ROWS_C            # rows of x matvec and vecmat take (callers split more)
FEW_LEVEL = pythia_few_cpu_level()       # the widest code this CPU runs: 1 AVX2 and FMA, 0 baseline


cdef int _few_job(pythia_few_job* job, str name, cnp.ndarray x, cnp.ndarray w, object b, cnp.ndarray y,
                  Py_ssize_t N, Py_ssize_t C, Py_ssize_t O, int level) except -1:
    # validate every argument and fill the job (pointers, sizes, the group functions)
    if N < 1 or N > FEW_MAX_ROWS_C or C < 1 or O < 1:
        raise ValueError(f"{name} takes 1 to {FEW_MAX_ROWS_C} rows and non-empty sizes, got N={N}, C={C}, O={O}")
    if level < 0 or level > FEW_LEVEL:
        raise ValueError(f"{name}: level {level} is not run by this CPU (0 to {FEW_LEVEL})")
    job.x = _in(x, N * C)
    job.w = _in(w, O * C)
    job.b = NULL if b is None else _in(<cnp.ndarray?>b, O)
    job.y = _out(y, N * O)
    job.N, job.C, job.O = N, C, O
    pythia_few_pick(job, level)
    return 0


def matvec(cnp.ndarray x not None, cnp.ndarray w not None, object b, cnp.ndarray y not None,
           Py_ssize_t N, Py_ssize_t C, Py_ssize_t O, int n_threads, int level):
    """y (N, O) = x (N, C) w^T + b, w (O, C), with the code of `level` (at most FEW_LEVEL)."""
    cdef pythia_few_job job
    _few_job(&job, "matvec", x, w, b, y, N, C, O, level)
    with nogil:
        pythia_pool_run(pythia_mv_tasks, &job, (O + MV_BAND - 1) // MV_BAND, n_threads)


def vecmat(cnp.ndarray x not None, cnp.ndarray w not None, object b, cnp.ndarray y not None,
           Py_ssize_t N, Py_ssize_t C, Py_ssize_t O, int n_threads, int level):
    """y (N, O) = x (N, C) w + b, w (C, O), with the code of `level` (at most FEW_LEVEL)."""
    cdef pythia_few_job job
    cdef Py_ssize_t nt = max(1, n_threads), n, o
    _few_job(&job, "vecmat", x, w, b, y, N, C, O, level)
    # 2 tasks a thread, each a contiguous range of columns, a multiple of 32 wide
    job.task = max(32, ((O + 2 * nt - 1) // (2 * nt) + 31) // 32 * 32)
    with nogil:
        for n in range(N):
            for o in range(O):
                job.y[n * O + o] = job.b[o] if job.b != NULL else 0.0
        pythia_pool_run(pythia_vm_tasks, &job, (O + job.task - 1) // job.task, n_threads)


def vecmat_row(cnp.ndarray x not None, cnp.ndarray w not None, object b, cnp.ndarray y not None,
               Py_ssize_t C, Py_ssize_t O, int n_threads, int level):
    """y (1, O) = x (1, C) w + b, w (C, O): the rows of w in VM1_BANDS contiguous bands, each
    summed into its own partial y, the partials then added in band order (+ b); the same sums
    whatever the thread count."""
    cdef pythia_vm1_job job
    cdef Py_ssize_t t, o
    cdef float acc
    cdef const float* pb
    cdef float* py
    if C < 1 or O < 1:
        raise ValueError(f"vecmat_row needs non-empty sizes, got C={C}, O={O}")
    if level < 0 or level > FEW_LEVEL:
        raise ValueError(f"vecmat_row: level {level} is not run by this CPU (0 to {FEW_LEVEL})")
    job.x = _in(x, C)
    job.w = _in(w, C * O)
    pb = NULL if b is None else _in(<cnp.ndarray?>b, O)
    py = _out(y, O)
    job.C, job.O, job.level = C, O, level
    job.part = <float*>malloc(VM1_BANDS * O * sizeof(float))
    if job.part == NULL:
        raise MemoryError("no memory for vecmat_row's partial sums")
    try:
        with nogil:
            pythia_pool_run(pythia_vm1_tasks, &job, VM1_BANDS, n_threads)
            for o in range(O):
                acc = job.part[o]
                for t in range(1, VM1_BANDS):
                    acc = acc + job.part[t * O + o]
                py[o] = acc + pb[o] if pb != NULL else acc
    finally:
        free(job.part)
