# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled kernels behind `pythia.kernels.compiled` (which validates every argument first).

Each op is a `noexcept nogil` routine for one row, wrapped in a loop over rows that runs on
several threads (OpenMP prange) only when the work is large enough to repay waking them,
and not for a while after a thread arrived late (see "threads that do not fight").
Arguments arrive as C-contiguous arrays plus their sizes, already checked by compiled.py,
outputs freshly allocated there (so no output overlaps an input, as `restrict` below assumes);
`_in`/`_out` re-check dtype, contiguity and size in a few nanoseconds (a typed memoryview per
argument cost ~0.5 us, which is most of a small kernel) and hand out the raw pointer.
N is the number of rows, C the row length, V the vocabulary; (Tq, Tk) an attention matrix.

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
from libc.string cimport memset

cnp.import_array()

cdef extern from *:
    """
    #include <string.h>
    #include <stdint.h>
    #if defined(__AVX2__) && defined(__FMA__)
    #define PYTHIA_ISA "avx2"
    #else
    #define PYTHIA_ISA "baseline"
    #endif
    /* may this CPU run the -mavx2 -mfma build? (gcc/clang check the OS saves the ymm state too) */
    static int pythia_cpu_has_avx2_fma(void) {
    #if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    #else
        return 0;
    #endif
    }
    #ifdef _OPENMP
    #include <omp.h>
    static int pythia_max_threads(void) { return omp_get_max_threads(); }
    static void pythia_set_threads(int n) { omp_set_num_threads(n); }
    static double pythia_now(void) { return omp_get_wtime(); }
    #else
    static int pythia_max_threads(void) { return 1; }
    static void pythia_set_threads(int n) { (void)n; }
    static double pythia_now(void) { return 0.0; }
    #endif
    /* bit casts between float and int32 (memcpy is the defined way; it compiles to nothing) */
    static inline int32_t pythia_bits(float f) { int32_t i; memcpy(&i, &f, 4); return i; }
    static inline float pythia_from_bits(int32_t i) { float f; memcpy(&f, &i, 4); return f; }
    /* constants live here, not as Cython module globals: gcc must see them as compile-time
       constants, or it reloads them (they might alias the output) and will not vectorise */
    static const float GELU_C = 0.044715f;
    static const float GELU_2S = 1.5957691216057308f;  /* 2 sqrt(2/pi) */
    static const float GELU_3C = 0.134145f;             /* 3 * 0.044715 */
    static const float LOG2E = 1.44269504088896341f;
    static const float LN2_HI = 0.693359375f;
    static const float LN2_LO = -2.12194440e-4f;
    static const float ROUND = 12582912.0f;
    static const float EXP_LO = -87.33654475f;
    static const float EXP_HI = 88.37f;        /* 127.49 ln2: 2^n stays finite */
    static const float EXP_OVER = 88.72283935546875f;  /* ln(FLT_MAX): above it exp is inf */
    static const float P0 = 1.9875691500e-4f, P1 = 1.3981999507e-3f, P2 = 8.3334519073e-3f;
    static const float P3 = 4.1665795894e-2f, P4 = 1.6666665459e-1f, P5 = 5.0000001201e-1f;
    /* max(a[0..n)) skipping NaN entries (-inf for n = 0). gcc will not vectorise a max over a
       float array without -ffast-math (it keeps 16 scalar maxss), so the 16 lanes are written
       with GCC/clang vector types: two 8-wide vectors with AVX, four 4-wide with SSE2. Per lane
       m = a > m ? a : m, so a NaN never replaces m; max is exact, so the lane order changes
       nothing. Measured on 768 rows of 128: 6 us with AVX2 instead of 27 us. */
    #if defined(__GNUC__) || defined(__clang__)
    #ifdef __AVX__
    #define PYTHIA_VW 8
    #else
    #define PYTHIA_VW 4
    #endif
    typedef float pythia_vf __attribute__((vector_size(PYTHIA_VW * 4)));
    typedef int32_t pythia_vi __attribute__((vector_size(PYTHIA_VW * 4)));
    #define PYTHIA_NV (16 / PYTHIA_VW)
    static inline pythia_vf pythia_vmax(pythia_vf a, pythia_vf m) {
        pythia_vi k = a > m;                               /* all ones where a > m, else 0 */
        return (pythia_vf)((k & (pythia_vi)a) | (~k & (pythia_vi)m));
    }
    #endif
    static inline float pythia_max(const float* a, Py_ssize_t n) {
        Py_ssize_t j = 0;
        float r = -INFINITY;
    #if defined(__GNUC__) || defined(__clang__)
        if (n >= 16) {
            pythia_vf m[PYTHIA_NV], x, zero = {0};
            for (int i = 0; i < PYTHIA_NV; i++) m[i] = zero - INFINITY;   /* every lane -inf */
            for (; j + 16 <= n; j += 16)
                for (int i = 0; i < PYTHIA_NV; i++) {
                    memcpy(&x, a + j + i * PYTHIA_VW, sizeof x);   /* unaligned load */
                    m[i] = pythia_vmax(x, m[i]);
                }
            for (int i = 1; i < PYTHIA_NV; i++) m[0] = pythia_vmax(m[i], m[0]);
            for (int l = 0; l < PYTHIA_VW; l++) r = m[0][l] > r ? m[0][l] : r;
        }
    #endif
        for (; j < n; j++) r = a[j] > r ? a[j] : r;
        return r;
    }
    /* Element-wise loops over one row whose pointers never overlap, said with restrict (which
       Cython cannot spell): without it gcc versions each loop with a run-time overlap check and
       a scalar fallback, which on rows of 65-128 floats cost 1.5x (cross-entropy backward at
       config M: 10.6 us -> 6.7 us). */
    #define PYTHIA_RESTRICT __restrict
    static inline void pythia_scaled(float* PYTHIA_RESTRICT out, const float* PYTHIA_RESTRICT a,
                                     float d, Py_ssize_t n) {
        for (Py_ssize_t j = 0; j < n; j++) out[j] = d * a[j];                  /* out = d a */
    }
    static inline void pythia_softmax_grad(float* PYTHIA_RESTRICT dx, const float* PYTHIA_RESTRICT dy,
                                           const float* PYTHIA_RESTRICT y, float dot, float scale,
                                           Py_ssize_t n) {
        for (Py_ssize_t j = 0; j < n; j++) dx[j] = scale * y[j] * (dy[j] - dot);
    }
    static inline void pythia_normalize(float* PYTHIA_RESTRICT y, const float* PYTHIA_RESTRICT x,
                                        const float* PYTHIA_RESTRICT w, const float* PYTHIA_RESTRICT b,
                                        float m, float r, Py_ssize_t n) {
        for (Py_ssize_t j = 0; j < n; j++) y[j] = (x[j] - m) * r * w[j] + b[j];
    }
    /* LayerNorm backward for one row, given its mean m, rstd r, sg = mean(g) and
       sgx = mean(g xhat), g = dy w, xhat = (x - m) r: dx = r (g - sg - xhat sgx),
       and the row's share of dw += dy xhat, db += dy */
    static inline void pythia_layernorm_grad_row(float* PYTHIA_RESTRICT dx, float* PYTHIA_RESTRICT dw,
                                                 float* PYTHIA_RESTRICT db, const float* PYTHIA_RESTRICT dy,
                                                 const float* PYTHIA_RESTRICT x, const float* PYTHIA_RESTRICT w,
                                                 float m, float r, float sg, float sgx, Py_ssize_t n) {
        for (Py_ssize_t j = 0; j < n; j++) {
            float xhat = (x[j] - m) * r;
            dx[j] = r * (dy[j] * w[j] - sg - xhat * sgx);
            dw[j] += dy[j] * xhat;
            db[j] += dy[j];
        }
    }
    /* AdamW on n elements, see adamw_update; sqrtf vectorises because setup.py passes
       -fno-math-errno (sqrt of a negative is NaN either way; only errno is no longer set) */
    static inline void pythia_adamw(float* PYTHIA_RESTRICT p, const float* PYTHIA_RESTRICT g,
                                    float* PYTHIA_RESTRICT m, float* PYTHIA_RESTRICT v, Py_ssize_t n,
                                    float gs, float b1, float c1, float b2, float c2, float step,
                                    float eps, float decay) {
        for (Py_ssize_t j = 0; j < n; j++) {
            float gj = gs * g[j];
            m[j] = b1 * m[j] + c1 * gj;
            v[j] = b2 * v[j] + c2 * (gj * gj);
            p[j] = decay * p[j] - step * (m[j] / (sqrtf(v[j]) + eps));
        }
    }
    """
    int pythia_max_threads() noexcept nogil
    void pythia_set_threads(int n) noexcept nogil
    double pythia_now() noexcept nogil          # seconds, monotonic (0 in a serial build)
    int pythia_cpu_has_avx2_fma() noexcept nogil
    const char* PYTHIA_ISA
    int32_t pythia_bits(float) noexcept nogil
    float pythia_from_bits(int32_t) noexcept nogil
    # GELU: s = sqrt(2/pi), c = 0.044715 (GPT-2's tanh approximation)
    const float GELU_C, GELU_2S, GELU_3C  # GELU_2S = 2s, GELU_3C = 3c
    # exp(x) = 2^n exp(r), n = round(x log2(e)), r = x - n ln2 with ln2 split in two (Cody-Waite)
    # so that n*LN2_HI is exact; exp(r) on |r| <= ln2/2 by Cephes' expf polynomial (~1 ulp);
    # ROUND = 1.5 * 2^23: adding then subtracting it rounds a float to the nearest integer.
    # EXP_LO = ln(2^-126): below it we return 0 (no subnormal results); EXP_HI keeps 2^n
    # finite; above EXP_OVER = ln(FLT_MAX) the result is inf, as for libm's expf.
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
    void pythia_adamw(float* p, const float* g, float* m, float* v, Py_ssize_t n, float gs, float b1,
                      float c1, float b2, float c2, float step, float eps, float decay) noexcept nogil

API_VERSION = 4  # must equal pythia.kernels.compiled.API_VERSION
ISA = PYTHIA_ISA.decode()  # "avx2" in the _kernels_avx2 build, "baseline" otherwise


def cpu_has_avx2_fma() -> bool:
    """True when this CPU (and OS) can run the AVX2/FMA build of these kernels."""
    return pythia_cpu_has_avx2_fma() != 0


def max_threads() -> int:
    """Threads a large kernel uses (OpenMP's limit; 1 in a serial build)."""
    return pythia_max_threads()


def set_thread_limit(int n) -> int:
    """Threads for the parallel loops the calling thread starts from now on (OpenMP keeps this
    limit per thread, so other threads keep theirs); returns the previous limit."""
    cdef int before = pythia_max_threads()
    pythia_set_threads(n if n > 1 else 1)
    return before


# A loop runs on several threads from PARALLEL_MIN units of work on: an element costs EXP_COST
# units in the kernels that exponentiate it, ROW_COST in the row kernels that pass over each
# row two or three times (LayerNorm, the softmax gradients), and 1 in the single streaming passes
# (cross-entropy's gradient, AdamW). An idle OpenMP thread spins ~30 us before it sleeps
# (GOMP_SPINCOUNT, set by the loader); found spinning, it joins a loop in a few microseconds,
# and two threads beat one from ~16k elements of softmax (128 rows of 128: 12.5 -> 7.5 us),
# ~32k of LayerNorm (256 rows: 16 -> 10 us) and ~50k of a streaming pass (cross-entropy's
# gradient, 768 rows of 65: 10.7 -> 8.4 us). A sleeping thread takes ~10-20 us to wake; loops
# it makes slower than one thread would have been fall back to one (see below). When threads
# slept at once (OMP_WAIT_POLICY=passive) the threshold was 4x higher.
cdef enum: PARALLEL_MIN = 32768
cdef enum: EXP_COST = 2           # so exp kernels go parallel from 16384 elements
cdef enum: ROW_COST = 1           # like a streaming pass: from 32768 elements
cdef enum: LANES = 16             # partial sums per reduction (four SSE / two AVX registers)
cdef enum: BLOCK = 4096           # elements per parallel work item of the element-wise kernels


# ----------------------------------------------------------------------------- threads that do not fight
# A parallel loop ends when its slowest thread does. On 2 cores shared with other busy
# processes (or BLAS threads) the helper thread may start late, by tens of microseconds or by
# a whole time slice, and a 20 us kernel then takes longer on two threads than on one. So
# every parallel loop times itself: the calling thread notes when it finished its own share
# (`_stamp`); if the loop as a whole took more than LATE_FACTOR times that share plus
# LATE_SLACK, two threads did no better than one would have (`_gate_close`), and loops of
# that size (a power-of-two bucket of the element count) run on one thread for a while
# (BACKOFF_MIN, doubling on each repeat up to BACKOFF_MAX) before threads are tried again.
# Static shares are equal (attention: whole matrices of the causal triangle per thread when
# N is even), so a loop on time passes; an uneven split counts as late, and runs serial.
# A loop that stays on one thread runs outside OpenMP altogether: entering a parallel region
# with if(0) still set up a team of one, ~1 us a call (softmax backward on one row: 2.4 ->
# 1.6 us; cross-entropy backward at config M on one thread: 12.9 -> 9.4 us).
# The first parallel loop after such a serial spell is not judged: its helper thread slept
# through the spell and takes 20-100 us to wake (measured after 1-10 ms idle), so it would
# always look late, and one hiccup would keep loops of that size serial for good. The loop
# after it, with the thread awake, decides. Nor is a size's first loop judged (the very first
# one also starts OpenMP's threads).

cdef double LATE_FACTOR = 2.0     # one thread would have taken ~2x the calling thread's share
cdef double LATE_SLACK = 2e-5     # allowance for waking a sleeping thread (~10 us)
cdef double BACKOFF_MIN = 0.05, BACKOFF_MAX = 2.0  # seconds on one thread after a late loop
cdef enum: BUCKETS = 64
cdef double _serial_until[BUCKETS]
cdef double _backoff[BUCKETS]
cdef bint _rewarm[BUCKETS]        # the bucket's next parallel loop only wakes the thread
cdef Py_ssize_t _n_parallel = 0, _n_late = 0
for _b in range(BUCKETS):
    _serial_until[_b] = 0.0
    _backoff[_b] = BACKOFF_MIN
    _rewarm[_b] = True            # the very first loop also starts the thread team (~100 us)


cdef struct Gate:
    bint par            # run this loop on several threads
    bint judge          # and afterwards judge whether it was late
    int bucket          # floor(log2(work))
    Py_ssize_t mid      # the last iteration the calling thread (thread 0) runs
    double t0, t_mid    # loop start, and when the calling thread finished its share


cdef inline Gate _gate(Py_ssize_t work, Py_ssize_t count) noexcept nogil:
    # open a loop of `count` iterations over `work` elements, iterations split in equal
    # contiguous blocks (schedule="static")
    cdef Gate g
    cdef int nt = pythia_max_threads()
    cdef Py_ssize_t w = work
    g.bucket = 0
    while w > 1:
        w = w >> 1
        g.bucket += 1
    g.par = work >= PARALLEL_MIN and nt > 1 and count > 1 and pythia_now() >= _serial_until[g.bucket]
    g.judge = not _rewarm[g.bucket]
    g.mid = (count + nt - 1) // nt - 1 if g.par else -1
    g.t0 = pythia_now() if g.par else 0.0
    g.t_mid = 0.0
    return g


cdef inline void _stamp(Gate* g, Py_ssize_t i) noexcept nogil:
    if i == g.mid:
        g.t_mid = pythia_now()


cdef void _gate_close(Gate* g) noexcept:
    # after a parallel loop (GIL held): was it slower than one thread would have been?
    global _n_parallel, _n_late
    cdef double t_end
    cdef int b = g.bucket
    if not g.par:
        return
    t_end = pythia_now()
    _n_parallel += 1
    if not g.judge:
        _rewarm[b] = False
    elif g.t_mid > 0 and t_end - g.t0 > LATE_FACTOR * (g.t_mid - g.t0) + LATE_SLACK:
        _n_late += 1
        _serial_until[b] = t_end + _backoff[b]
        _backoff[b] = min(2 * _backoff[b], BACKOFF_MAX)
        _rewarm[b] = True
    else:
        _backoff[b] = BACKOFF_MIN


# units of work per element, by kernel family (for threading_stats and tests)
WORK_UNITS = {"parallel_min": PARALLEL_MIN, "exp": EXP_COST, "rows": ROW_COST, "single_pass": 1}


def threading_stats(work: int = PARALLEL_MIN) -> dict:
    """Parallel loops run, loops a late thread made slower than one thread, the seconds loops
    over `work` units (elements times WORK_UNITS) will still run on one thread, and whether
    the next parallel one will be judged (not when it follows a serial spell)."""
    cdef Gate g = _gate(work, 2)
    return {"threads": pythia_max_threads(), "parallel_loops": _n_parallel, "late_loops": _n_late,
            "serial_for_s": max(0.0, _serial_until[g.bucket] - pythia_now()),
            "judge_next": bool(g.judge)}


def _as_if_late(work: int, seconds: float) -> None:
    """For tests: treat the last loop over `work` units as late, with a serial spell of `seconds`."""
    cdef Gate g = _gate(work, 2)
    _serial_until[g.bucket] = pythia_now() + seconds
    _rewarm[g.bucket] = True


# ----------------------------------------------------------------------------- vector math

cdef inline float _exp(float x) noexcept nogil:
    # exp(x) for float32, ~1 ulp; NaN -> NaN, x < EXP_LO (and -inf) -> 0, x > EXP_OVER -> inf
    # (between EXP_HI and EXP_OVER, where exp is within 1.5x of FLT_MAX, it gives exp(EXP_HI))
    cdef float xc, t, n, r, p
    xc = EXP_LO if x < EXP_LO else x               # written so that NaN passes through
    xc = EXP_HI if xc > EXP_HI else xc
    t = xc * LOG2E + ROUND
    n = t - ROUND                                  # round(x / ln2), exactly, as a float
    r = xc - n * LN2_HI
    r = r - n * LN2_LO                             # x - n ln2, |r| <= ln2/2
    p = ((((P0 * r + P1) * r + P2) * r + P3) * r + P4) * r + P5
    p = p * (r * r) + r + <float>1.0               # exp(r); <float>: a bare 1.0 is a C double
    # 2^n built in the exponent field; the low bits of t hold n + bits(ROUND)
    p = p * pythia_from_bits((pythia_bits(t) - pythia_bits(ROUND) + 127) << 23)
    if x > EXP_OVER:
        p = INFINITY
    return <float>0.0 if x < EXP_LO else p


cdef inline float _exp_neg(float x) noexcept nogil:
    # _exp for x <= 0 (or NaN), as in softmax's exp(x - max): no overflow handling needed
    cdef float xc, t, n, r, p
    xc = EXP_LO if x < EXP_LO else x
    t = xc * LOG2E + ROUND
    n = t - ROUND
    r = xc - n * LN2_HI
    r = r - n * LN2_LO
    p = ((((P0 * r + P1) * r + P2) * r + P3) * r + P4) * r + P5
    p = p * (r * r) + r + <float>1.0
    p = p * pythia_from_bits((pythia_bits(t) - pythia_bits(ROUND) + 127) << 23)
    return <float>0.0 if x < EXP_LO else p


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


cdef inline float _max(const float* a, Py_ssize_t n) noexcept nogil:
    # max(a); NaN entries are skipped here (they still poison the sum that follows)
    return pythia_max(a, n)


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
    m = _max(x, C)
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


def softmax_forward(cnp.ndarray x not None, cnp.ndarray y not None, Py_ssize_t N, Py_ssize_t C):
    cdef const float* px = _in(x, N * C)
    cdef float* py = _out(y, N * C)
    cdef Py_ssize_t i
    cdef Gate g = _gate(EXP_COST * N * C, N)
    if not g.par:
        with nogil:
            for i in range(N):
                _softmax_row(px + i * C, py + i * C, C, 1.0)
        return
    for i in prange(N, nogil=True, schedule="static"):
        _softmax_row(px + i * C, py + i * C, C, 1.0)
        _stamp(&g, i)
    _gate_close(&g)


def softmax_backward(cnp.ndarray dy not None, cnp.ndarray y not None, cnp.ndarray dx not None,
                     Py_ssize_t N, Py_ssize_t C):
    cdef const float* pdy = _in(dy, N * C)
    cdef const float* py = _in(y, N * C)
    cdef float* pdx = _out(dx, N * C)
    cdef Py_ssize_t i
    cdef Gate g = _gate(ROW_COST * N * C, N)
    if not g.par:
        with nogil:
            for i in range(N):
                _softmax_grad_row(pdy + i * C, py + i * C, pdx + i * C, C, 1.0)
        return
    for i in prange(N, nogil=True, schedule="static"):
        _softmax_grad_row(pdy + i * C, py + i * C, pdx + i * C, C, 1.0)
        _stamp(&g, i)
    _gate_close(&g)


# ----------------------------------------------------------------------------- causal attention softmax

cdef inline void _attention_row(const float* s, float* y, Py_ssize_t L, Py_ssize_t Tk,
                                float scale) noexcept nogil:
    # softmax over the L visible keys of one row of scores; the Tk - L masked ones get 0
    _softmax_row(s, y, L, scale)
    if L < Tk:
        memset(y + L, 0, (Tk - L) * sizeof(float))


cdef inline void _attention_grad_row(const float* dy, const float* y, float* dx, Py_ssize_t visible,
                                     Py_ssize_t Tk, float scale) noexcept nogil:
    # the softmax gradient over the visible keys rounded up to whole LANES (y is 0 past the
    # visible keys, so those add nothing and get dx = 0); the rest of the row gets dx = 0
    cdef Py_ssize_t L = min(Tk, (visible + LANES - 1) // LANES * LANES)
    _softmax_grad_row(dy, y, dx, L, scale)
    if L < Tk:
        memset(dx + L, 0, (Tk - L) * sizeof(float))


def attention_softmax_forward(cnp.ndarray s not None, cnp.ndarray y not None, Py_ssize_t N,
                              Py_ssize_t Tq, Py_ssize_t Tk, float scale):
    # row i of each of the N (Tq, Tk) matrices attends keys 0..off+i, off = Tk - Tq; only those
    # L = off+i+1 entries are read and exponentiated, the rest of the row is written as 0
    cdef const float* ps = _in(s, N * Tq * Tk)
    cdef float* py = _out(y, N * Tq * Tk)
    cdef Py_ssize_t r, off = Tk - Tq
    cdef Gate g = _gate(EXP_COST * N * Tq * Tk, N * Tq)
    if not g.par:
        with nogil:
            for r in range(N * Tq):
                _attention_row(ps + r * Tk, py + r * Tk, off + r % Tq + 1, Tk, scale)
        return
    for r in prange(N * Tq, nogil=True, schedule="static"):
        _attention_row(ps + r * Tk, py + r * Tk, off + r % Tq + 1, Tk, scale)
        _stamp(&g, r)
    _gate_close(&g)


def attention_softmax_backward(cnp.ndarray dy not None, cnp.ndarray y not None, cnp.ndarray dx not None,
                               Py_ssize_t N, Py_ssize_t Tq, Py_ssize_t Tk, float scale):
    # dscores = scale * y * (dy - sum(dy * y)) over the visible keys; masked entries get 0
    cdef const float* pdy = _in(dy, N * Tq * Tk)
    cdef const float* py = _in(y, N * Tq * Tk)
    cdef float* pdx = _out(dx, N * Tq * Tk)
    # row r sees off + r % Tq + 1 keys; _attention_grad_row rounds that up to whole LANES so
    # that its rows vectorise
    cdef Py_ssize_t r, off = Tk - Tq
    cdef Gate g = _gate(ROW_COST * N * Tq * Tk, N * Tq)
    if not g.par:
        with nogil:
            for r in range(N * Tq):
                _attention_grad_row(pdy + r * Tk, py + r * Tk, pdx + r * Tk, off + r % Tq + 1, Tk, scale)
        return
    for r in prange(N * Tq, nogil=True, schedule="static"):
        _attention_grad_row(pdy + r * Tk, py + r * Tk, pdx + r * Tk, off + r % Tq + 1, Tk, scale)
        _stamp(&g, r)
    _gate_close(&g)


# ----------------------------------------------------------------------------- layernorm

cdef inline void _layernorm_row(const float* x, const float* w, const float* b, float* y,
                                float* mean, float* rstd, Py_ssize_t C, float eps) noexcept nogil:
    # mean = sum(x)/C; var = sum((x - mean)^2)/C (biased, two passes over a row in L1);
    # y = (x - mean) rstd w + b
    cdef float m = _sum(x, C) / C
    cdef float r = <float>1.0 / sqrtf(_sqdev(x, m, C) / C + eps)
    pythia_normalize(y, x, w, b, m, r, C)
    mean[0] = m
    rstd[0] = r


def layernorm_forward(cnp.ndarray x not None, cnp.ndarray w not None, cnp.ndarray b not None,
                      cnp.ndarray y not None, cnp.ndarray mean not None, cnp.ndarray rstd not None,
                      Py_ssize_t N, Py_ssize_t C, float eps):
    cdef const float* px = _in(x, N * C)
    cdef const float* pw = _in(w, C)
    cdef const float* pb = _in(b, C)
    cdef float* py = _out(y, N * C)
    cdef float* pm = _out(mean, N)
    cdef float* pr = _out(rstd, N)
    cdef Py_ssize_t i
    cdef Gate g = _gate(ROW_COST * N * C, N)
    if not g.par:
        with nogil:
            for i in range(N):
                _layernorm_row(px + i * C, pw, pb, py + i * C, pm + i, pr + i, C, eps)
        return
    for i in prange(N, nogil=True, schedule="static"):
        _layernorm_row(px + i * C, pw, pb, py + i * C, pm + i, pr + i, C, eps)
        _stamp(&g, i)
    _gate_close(&g)


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


cdef inline void _layernorm_grad_rows(const float* dy, const float* x, const float* w,
                                      const float* mean, const float* rstd, float* dx,
                                      float* dw, float* db, Py_ssize_t N, Py_ssize_t C) noexcept nogil:
    # for each of N rows, with xhat = (x - mean) rstd and g = dy w (the gradient wrt xhat):
    # dx = rstd (g - mean(g) - xhat mean(g xhat)); dw += dy xhat, db += dy (this block's sums).
    cdef Py_ssize_t i
    cdef float r, m, sg, sgx
    for i in range(N):
        r = rstd[i]
        m = mean[i]
        sg = _dot(dy, w, C) / C                          # mean(g)
        sgx = _dot3(dy, w, x, m, C) * r / C              # mean(g xhat)
        pythia_layernorm_grad_row(dx, dw, db, dy, x, w, m, r, sg, sgx, C)
        dy += C
        x += C
        dx += C


def layernorm_backward(cnp.ndarray dy not None, cnp.ndarray x not None, cnp.ndarray w not None,
                       cnp.ndarray mean not None, cnp.ndarray rstd not None, cnp.ndarray dx not None,
                       cnp.ndarray dw not None, cnp.ndarray db not None, Py_ssize_t N, Py_ssize_t C):
    # the rows are split into one block per thread; each block sums dw, db into its own buffer
    # (no sharing, no atomics) and the buffers are added at the end, in block order
    cdef const float* pdy = _in(dy, N * C)
    cdef const float* px = _in(x, N * C)
    cdef const float* pw = _in(w, C)
    cdef const float* pm = _in(mean, N)
    cdef const float* pr = _in(rstd, N)
    cdef float* pdx = _out(dx, N * C)
    cdef float* pdw = _out(dw, C)
    cdef float* pdb = _out(db, C)
    cdef Py_ssize_t t, j, lo, hi
    cdef Gate g = _gate(ROW_COST * N * C, min(N, <Py_ssize_t>pythia_max_threads()))
    cdef int nt = pythia_max_threads() if g.par else 1
    if nt > N:
        nt = <int>N
    g.mid = 0                                                  # block 0 is the calling thread's
    cdef float* buf = <float*>calloc(nt * 2 * C, sizeof(float))   # per block: dw (C) then db (C)
    if buf == NULL:
        raise MemoryError("layernorm_backward: no memory for the per-thread buffers")
    if nt == 1:
        with nogil:
            _layernorm_grad_rows(pdy, px, pw, pm, pr, pdx, buf, buf + C, N, C)
    else:
        for t in prange(nt, nogil=True, schedule="static", num_threads=nt):
            lo = t * N // nt
            hi = (t + 1) * N // nt
            _layernorm_grad_rows(pdy + lo * C, px + lo * C, pw, pm + lo, pr + lo, pdx + lo * C,
                                 buf + 2 * C * t, buf + 2 * C * t + C, hi - lo, C)
            _stamp(&g, t)
        _gate_close(&g)
    with nogil:
        for j in range(C):
            pdw[j] = buf[j]
            pdb[j] = buf[C + j]
        for t in range(1, nt):
            for j in range(C):
                pdw[j] = pdw[j] + buf[2 * C * t + j]
                pdb[j] = pdb[j] + buf[2 * C * t + C + j]
        free(buf)


# ----------------------------------------------------------------------------- GELU (tanh)
# 0.5 (1 + tanh(u)) = sigmoid(2u), so gelu(x) = x sigmoid(2u), u = s (x + c x^3), s = sqrt(2/pi)

cdef inline void _gelu_block(const float* x, float* y, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t k
    cdef float v
    for k in range(n):
        v = x[k]
        y[k] = v * _sigmoid(GELU_2S * (v + GELU_C * v * v * v))


cdef inline void _gelu_grad_block(const float* dy, const float* x, float* dx, Py_ssize_t n) noexcept nogil:
    # gelu'(x) = 0.5 (1 + t) + 0.5 x (1 - t^2) s (1 + 3 c x^2),  t = tanh(u)
    #          = q + 2 s x q (1 - q) (1 + 3 c x^2),              q = sigmoid(2u) = (1 + t) / 2
    cdef Py_ssize_t k
    cdef float v, q
    for k in range(n):
        v = x[k]
        q = _sigmoid(GELU_2S * (v + GELU_C * v * v * v))
        dx[k] = dy[k] * (q + GELU_2S * v * q * (<float>1.0 - q) * (<float>1.0 + GELU_3C * v * v))


def gelu_forward(cnp.ndarray x not None, cnp.ndarray y not None, Py_ssize_t n):
    # n elements in blocks of BLOCK, the blocks shared among the threads
    cdef const float* px = _in(x, n)
    cdef float* py = _out(y, n)
    cdef Py_ssize_t b, lo, nb = (n + BLOCK - 1) // BLOCK
    cdef Gate g = _gate(EXP_COST * n, nb)
    if not g.par:
        with nogil:
            _gelu_block(px, py, n)
        return
    for b in prange(nb, nogil=True, schedule="static"):
        lo = b * BLOCK
        _gelu_block(px + lo, py + lo, min(<Py_ssize_t>BLOCK, n - lo))
        _stamp(&g, b)
    _gate_close(&g)


def gelu_backward(cnp.ndarray dy not None, cnp.ndarray x not None, cnp.ndarray dx not None, Py_ssize_t n):
    cdef const float* pdy = _in(dy, n)
    cdef const float* px = _in(x, n)
    cdef float* pdx = _out(dx, n)
    cdef Py_ssize_t b, lo, nb = (n + BLOCK - 1) // BLOCK
    cdef Gate g = _gate(EXP_COST * n, nb)
    if not g.par:
        with nogil:
            _gelu_grad_block(pdy, px, pdx, n)
        return
    for b in prange(nb, nogil=True, schedule="static"):
        lo = b * BLOCK
        _gelu_grad_block(pdy + lo, px + lo, pdx + lo, min(<Py_ssize_t>BLOCK, n - lo))
        _stamp(&g, b)
    _gate_close(&g)


# ----------------------------------------------------------------------------- softmax + cross-entropy

cdef inline float _crossentropy_row(const float* z, int64_t t, float* p, Py_ssize_t V) noexcept nogil:
    # p = softmax(z); loss = logsumexp(z) - z[t] = log(sum exp(z - max)) + max - z[t]
    # (not -log p[t], which is inf once p[t] underflows although the loss is finite)
    cdef Py_ssize_t j
    cdef float m, s
    m = _max(z, V)
    if m == -INFINITY:                      # every logit -inf (or NaN): no defined loss
        _softmax_row(z, p, V, 1.0)
        return NAN
    for j in range(V):
        p[j] = _exp_neg(z[j] - m)
    s = _sum(p, V)
    for j in range(V):
        p[j] = p[j] * (<float>1.0 / s)
    return logf(s) + m - z[t]


def crossentropy_forward(cnp.ndarray z not None, cnp.ndarray t not None, cnp.ndarray loss not None,
                         cnp.ndarray p not None, Py_ssize_t N, Py_ssize_t V):
    cdef const float* pz = _in(z, N * V)
    cdef const int64_t* pt = _targets(t, N, V)
    cdef float* pl = _out(loss, N)
    cdef float* pp = _out(p, N * V)
    cdef Py_ssize_t i
    cdef Gate g = _gate(EXP_COST * N * V, N)
    if not g.par:
        with nogil:
            for i in range(N):
                pl[i] = _crossentropy_row(pz + i * V, pt[i], pp + i * V, V)
        return
    for i in prange(N, nogil=True, schedule="static"):
        pl[i] = _crossentropy_row(pz + i * V, pt[i], pp + i * V, V)
        _stamp(&g, i)
    _gate_close(&g)


cdef inline void _crossentropy_grad_row(float* dz, const float* p, float d, int64_t t,
                                        Py_ssize_t V) noexcept nogil:
    # dz = d (p - onehot(t)) for one row
    pythia_scaled(dz, p, d, V)
    dz[t] = dz[t] - d


def crossentropy_backward(cnp.ndarray dloss not None, cnp.ndarray p not None, cnp.ndarray t not None,
                          cnp.ndarray dz not None, Py_ssize_t N, Py_ssize_t V):
    # dz = dloss * (p - onehot(t)). A mean loss gives every row the same dloss; then dz = d p is
    # one flat scaled copy in blocks of BLOCK (no per-row loop overhead on rows of 65: 11.6 ->
    # ~5 us at config M, a copy of the bytes takes 6), followed by the N subtractions at the
    # targets. The same operations per element as the row path, so the same bits.
    cdef const float* pdl = _in(dloss, N)
    cdef const float* pp = _in(p, N * V)
    cdef const int64_t* pt = _targets(t, N, V)
    cdef float* pdz = _out(dz, N * V)
    cdef Py_ssize_t i, b, lo, n = N * V, nb = (N * V + BLOCK - 1) // BLOCK
    cdef float d
    cdef bint uniform = True
    cdef Gate g
    with nogil:
        for i in range(1, N):                  # bitwise equal, so NaN and -0.0 rows count as they are
            if pythia_bits(pdl[i]) != pythia_bits(pdl[0]):
                uniform = False
                break
    if uniform:
        d = pdl[0]
        g = _gate(n, nb)
        if not g.par:
            with nogil:
                pythia_scaled(pdz, pp, d, n)
        else:
            for b in prange(nb, nogil=True, schedule="static"):
                lo = b * BLOCK
                pythia_scaled(pdz + lo, pp + lo, d, min(<Py_ssize_t>BLOCK, n - lo))
                _stamp(&g, b)
            _gate_close(&g)
        with nogil:
            for i in range(N):
                pdz[i * V + pt[i]] = pdz[i * V + pt[i]] - d
        return
    g = _gate(n, N)
    if not g.par:
        with nogil:
            for i in range(N):
                _crossentropy_grad_row(pdz + i * V, pp + i * V, pdl[i], pt[i], V)
        return
    for i in prange(N, nogil=True, schedule="static"):
        _crossentropy_grad_row(pdz + i * V, pp + i * V, pdl[i], pt[i], V)
        _stamp(&g, i)
    _gate_close(&g)


# ----------------------------------------------------------------------------- AdamW

def adamw_update(cnp.ndarray p not None, cnp.ndarray g not None, cnp.ndarray m not None,
                 cnp.ndarray v not None, Py_ssize_t n, float gs, float b1, float c1, float b2,
                 float c2, float step, float eps, float decay):
    # g' = gs g; m = b1 m + c1 g'; v = b2 v + c2 g'^2; p = decay p - step m / (sqrt(v) + eps),
    # in place, in blocks of BLOCK elements shared among the threads
    cdef float* pp = _out(p, n)
    cdef const float* pg = _in(g, n)
    cdef float* pm = _out(m, n)
    cdef float* pv = _out(v, n)
    cdef Py_ssize_t b, lo, nb = (n + BLOCK - 1) // BLOCK
    cdef Gate gt = _gate(n, nb)                    # one streaming pass: threads from PARALLEL_MIN elements
    if not gt.par:
        with nogil:
            pythia_adamw(pp, pg, pm, pv, n, gs, b1, c1, b2, c2, step, eps, decay)
        return
    for b in prange(nb, nogil=True, schedule="static"):
        lo = b * BLOCK
        pythia_adamw(pp + lo, pg + lo, pm + lo, pv + lo, min(<Py_ssize_t>BLOCK, n - lo),
                     gs, b1, c1, b2, c2, step, eps, decay)
        _stamp(&gt, b)
    _gate_close(&gt)
