# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Q8_0 kernels behind `pythia.quant.compiled` (which validates every argument first).

The specification is pythia/quant/reference.py: rows quantized per block of QK = 32 with
d = amax / 127, q = rint(x / d); y[n, o] = the sum over blocks b of s_b * (xd[n, b] * wd[o, b])
with s_b the exact int32 dot product of the two blocks, summed in 8 lanes (block b into lane
b mod 8, in order) folded in halves; + bias.
setup.py builds this file with -ffp-contract=off, so no fused multiply-add changes the
float32 rounding the reference does step by step: results equal the reference bit for bit.
N rows of x, O output units (rows of the weight), C inputs, nb = C / QK blocks.

Speed: a decode step streams every weight from memory once, so the loop is laid out for the
memory system: each thread takes one contiguous share of the weight rows and walks it front to
back (rows are contiguous, so that is one sequential stream), and prefetches PYTHIA_PF bytes
ahead of where it reads. Measured here, that order and the prefetch doubled the bytes per
second drawn from DRAM against eight rows read side by side; the arithmetic, ~1 ns a block,
was not the limit. Activations are quantized once per call, kept as int16 for the baseline
build and as int8 with their magnitudes as uint8 for the SIMD builds.

Block dot products: baseline build, int16 activations times int8 weights widened to int16,
summed in int32 (gcc -O3 turns it into pmaddwd). AVX2 build: llama.cpp's trick a w = |a|
(w sign(a)) with vpsignb, then vpmaddubsw + vpmaddwd; VNNI build (AVX-512 VNNI), vpdpbusd in
place of the last two. Eight blocks of one row are reduced together (a vphaddd tree turns
their eight vectors of partial sums into one vector of eight exact block sums), scaled as one
vector and added to the row's eight running sums as one vector. Output rows are shared among
`threads` threads (kernels/_pool.h: the caller and pool workers claim chunks of tiles of
PYTHIA_T rows; a tile stays in L1 while it meets every row of x).
"""
cimport numpy as cnp
from libc.stdint cimport int8_t, int16_t, int32_t, uint8_t, uint32_t
from libc.stdlib cimport free, malloc

cnp.import_array()

cdef extern from *:
    """
    #include <math.h>
    #include <stdint.h>
    #include <string.h>
    #if defined(__AVX512VNNI__) && defined(__AVX512VL__) && defined(__AVX2__)
    #define PYTHIA_Q_ISA "avx512vnni"
    #elif defined(__AVX2__)
    #define PYTHIA_Q_ISA "avx2"
    #else
    #define PYTHIA_Q_ISA "baseline"
    #endif
    #ifdef _OPENMP
    #include <omp.h>
    static int pythia_q_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int pythia_q_max_threads(void) { return 1; }
    #endif
    static int pythia_q_cpu_has_avx2(void) {
    #if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    #else
        return 0;
    #endif
    }
    /* the VNNI build's needs: AVX2 and FMA, and AVX-512 F, BW, VL and VNNI (the OS saving the
       AVX-512 registers is part of what __builtin_cpu_supports reports) */
    static int pythia_q_cpu_has_avx512vnni(void) {
    #if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
        __builtin_cpu_init();
        return pythia_q_cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
            && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    #else
        return 0;
    #endif
    }
    #define QK 32
    #define PYTHIA_T 8           /* weight rows per tile: 8 x C bytes stay in L1 for all N rows of x */
    #define PYTHIA_PF 2048       /* prefetch distance in bytes: measured best of 512..4096 here */
    static const float Q_TINY = 1.17549435e-38f;   /* FLT_MIN: smaller scales flush to 0 */
    static const float Q_ROUND = 12582912.0f;      /* 1.5 * 2^23: (v + R) - R = rint(v), |v| < 2^22 */
    /* sum_k a[k] w[k] over one block: activations a held as int16 (values in [-127, 127]),
       weights w int8 widened to int16, products summed in int32 (|sum| <= 32 * 127 * 127).
       gcc -O3 turns it into pmaddwd (SSE2) / vpmovsxbw + vpmaddwd (AVX2). With both operands
       int8, gcc proves each product fits int16 and emits pmullw + widening adds instead. */
    static inline int32_t pythia_dot32(const int16_t* __restrict a, const int8_t* __restrict w) {
        int32_t s = 0;
        for (int k = 0; k < QK; k++) s += a[k] * (int16_t)w[k];
        return s;
    }
    /* the 8 running sums folded in halves: ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)) */
    static inline float pythia_fold8(const float* l) {
        const float h0 = l[0] + l[4], h1 = l[1] + l[5], h2 = l[2] + l[6], h3 = l[3] + l[7];
        return (h0 + h2) + (h1 + h3);
    }
    #if defined(__AVX2__)
    #include <immintrin.h>
    #define PYTHIA_SIMD 1
    /* 8 int32 partial sums of one block: a w = |a| (w sign(a)), so the unsigned-by-signed
       multiplies take |a| (uint8) and w with a's sign (int8; w = -128 never occurs) */
    static inline __m256i pythia_block8(const int8_t* a8, const uint8_t* ua, const int8_t* w) {
        const __m256i sw = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i*)w),
                                            _mm256_loadu_si256((const __m256i*)a8));
        const __m256i u = _mm256_loadu_si256((const __m256i*)ua);
    #if defined(__AVX512VNNI__) && defined(__AVX512VL__)
        /* vpdpbusd: 4 adjacent u8 x s8 products summed into each int32 lane */
        return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, sw);
    #else
        /* vpmaddubsw adds product pairs into int16 (|sum| <= 2 * 127 * 127: no saturation),
           vpmaddwd by 1 adds pairs of those into int32 */
        return _mm256_madd_epi16(_mm256_maddubs_epi16(u, sw), _mm256_set1_epi16(1));
    #endif
    }
    /* the exact int32 sums of 8 consecutive blocks b..b+7 of one row, as one vector in order */
    static inline __m256i pythia_sums8(const int8_t* a8, const uint8_t* ua, const int8_t* w) {
        __m256i p[8];
        for (int k = 0; k < 8; k++) p[k] = pythia_block8(a8 + k * QK, ua + k * QK, w + k * QK);
        __m256i h0 = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
        __m256i h1 = _mm256_hadd_epi32(_mm256_hadd_epi32(p[4], p[5]), _mm256_hadd_epi32(p[6], p[7]));
        /* h0: blocks 0-3's sums of their partials' low 128 bits, then of their high 128 bits;
           h1 likewise for blocks 4-7; adding the halves gives blocks 0-7's sums in order */
        return _mm256_add_epi32(_mm256_permute2x128_si256(h0, h1, 0x20), _mm256_permute2x128_si256(h0, h1, 0x31));
    }
    static inline int32_t pythia_sum1(const int8_t* a8, const uint8_t* ua, const int8_t* w) {
        const __m256i p = pythia_block8(a8, ua, w);
        __m128i q = _mm_add_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1));
        q = _mm_add_epi32(q, _mm_shuffle_epi32(q, 0x4E));
        q = _mm_add_epi32(q, _mm_shuffle_epi32(q, 0xB1));
        return _mm_cvtsi128_si32(q);
    }
    /* sum_b s_b (ad_b wd_b) over one row as reference.py orders it: block b's term into lane
       b mod 8 (eight blocks' terms formed and added as one vector), then the lanes folded */
    static inline float pythia_row_dot(const int16_t* a16, const int8_t* a8, const uint8_t* ua,
                                       const float* ad, const int8_t* w, const float* wd, Py_ssize_t nb) {
        __m256 acc = _mm256_setzero_ps();
        Py_ssize_t b = 0;
        for (; b + 8 <= nb; b += 8) {
            for (int k = 0; k < 8; k += 2) _mm_prefetch((const char*)(w + (b + k) * QK + PYTHIA_PF), _MM_HINT_T0);
            _mm_prefetch((const char*)(wd + b + PYTHIA_PF / QK), _MM_HINT_T0);
            const __m256i s = pythia_sums8(a8 + b * QK, ua + b * QK, w + b * QK);
            acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(s),
                                                   _mm256_mul_ps(_mm256_loadu_ps(ad + b), _mm256_loadu_ps(wd + b))));
        }
        float lane[8];
        _mm256_storeu_ps(lane, acc);
        for (; b < nb; b++)
            lane[b & 7] = lane[b & 7] + (float)pythia_sum1(a8 + b * QK, ua + b * QK, w + b * QK) * (ad[b] * wd[b]);
        return pythia_fold8(lane);
    }
    static inline int32_t pythia_block_sum(const int16_t* a16, const int8_t* a8, const uint8_t* ua,
                                           const int8_t* w) {
        return pythia_sum1(a8, ua, w);
    }
    #else
    #define PYTHIA_SIMD 0
    static inline float pythia_row_dot(const int16_t* a16, const int8_t* a8, const uint8_t* ua,
                                       const float* ad, const int8_t* w, const float* wd, Py_ssize_t nb) {
        float lane[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        for (Py_ssize_t b = 0; b < nb; b++) {
    #if defined(__GNUC__)
            if (!(b & 1)) __builtin_prefetch(w + b * QK + PYTHIA_PF);
    #endif
            lane[b & 7] = lane[b & 7] + (float)pythia_dot32(a16 + b * QK, w + b * QK) * (ad[b] * wd[b]);
        }
        return pythia_fold8(lane);
    }
    static inline int32_t pythia_block_sum(const int16_t* a16, const int8_t* a8, const uint8_t* ua,
                                           const int8_t* w) {
        return pythia_dot32(a16, w);
    }
    #endif
    /* the SIMD builds' activations: a8 = a as int8, ua = |a| as uint8 (a in [-127, 127]) */
    static void pythia_q_acts(const int16_t* __restrict a, int8_t* __restrict a8, uint8_t* __restrict ua,
                              Py_ssize_t n) {
        for (Py_ssize_t i = 0; i < n; i++) {
            a8[i] = (int8_t)a[i];
            ua[i] = (uint8_t)(a[i] < 0 ? -a[i] : a[i]);
        }
    }
    #include "_pool.h"
    /* one product's arguments, for the pool: rows of x n < N, output units o < O */
    typedef struct {
        const int16_t* xq; const int8_t* a8; const uint8_t* ua; const float* xd; const unsigned char* bad;
        const int8_t* q; const float* wd; const float* bias; float* y;
        Py_ssize_t N, O, C, nb;
    } pythia_q_job;
    /* y for tiles [t0, t1) of PYTHIA_T weight rows: each tile against every row of x (it stays
       in L1 meanwhile); + bias; NaN for a row of x that held NaN or inf */
    static void pythia_q_tiles(const void* p, Py_ssize_t t0, Py_ssize_t t1) {
        const pythia_q_job* j = (const pythia_q_job*)p;
        const Py_ssize_t C = j->C, nb = j->nb, O = j->O;
        for (Py_ssize_t t = t0; t < t1; t++) {
            const Py_ssize_t lo = t * PYTHIA_T, hi = lo + PYTHIA_T < O ? lo + PYTHIA_T : O;
            for (Py_ssize_t n = 0; n < j->N; n++) {
                for (Py_ssize_t o = lo; o < hi; o++) {
                    const float acc = pythia_row_dot(j->xq + n * C, j->a8 + n * C, j->ua + n * C, j->xd + n * nb,
                                                     j->q + o * C, j->wd + o * nb, nb);
                    j->y[n * O + o] = j->bad[n] ? NAN : (j->bias ? acc + j->bias[o] : acc);
                }
            }
        }
    }
    /* one row of C floats -> C int8 and C/QK scales; returns 1 if the row holds NaN or inf.
       |x| compared as the integer bits with the sign cleared: same order as the floats for
       finite values, and NaN/inf are the bit patterns >= 0x7f800000 */
    static int pythia_quantize_row(const float* __restrict x, int16_t* __restrict q,
                                   float* __restrict d, Py_ssize_t C) {
        uint32_t worst = 0;
        for (Py_ssize_t b = 0; b < C / QK; b++) {
            const float* xb = x + b * QK;
            uint32_t m = 0;
            for (int k = 0; k < QK; k++) {
                uint32_t u; memcpy(&u, xb + k, 4); u &= 0x7fffffffu;
                m = u > m ? u : m;
            }
            worst = m > worst ? m : worst;
            float amax; memcpy(&amax, &m, 4);
            float db = amax / 127.0f;
            if (!(db >= Q_TINY) || m >= 0x7f800000u) db = 0.0f;
            d[b] = db;
            float dd = db > 0.0f ? db : 1.0f;
            for (int k = 0; k < QK; k++) {
                float v = (xb[k] / dd + Q_ROUND) - Q_ROUND;
                v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
                q[b * QK + k] = db > 0.0f ? (int16_t)v : 0;
            }
        }
        if (worst < 0x7f800000u) return 0;
        /* a row with NaN or inf is stored as zeros, as the reference stores it */
        memset(q, 0, (size_t)C * sizeof(int16_t));
        memset(d, 0, (size_t)(C / QK) * sizeof(float));
        return 1;
    }
    """
    int pythia_q_max_threads() noexcept nogil
    int pythia_q_cpu_has_avx2() noexcept nogil
    int pythia_q_cpu_has_avx512vnni() noexcept nogil
    const char* PYTHIA_Q_ISA
    enum: PYTHIA_T
    float pythia_row_dot(const int16_t* a16, const int8_t* a8, const uint8_t* ua, const float* ad,
                         const int8_t* w, const float* wd, Py_ssize_t nb) noexcept nogil
    int32_t pythia_block_sum(const int16_t* a16, const int8_t* a8, const uint8_t* ua,
                             const int8_t* w) noexcept nogil
    void pythia_q_acts(const int16_t* a, int8_t* a8, uint8_t* ua, Py_ssize_t n) noexcept nogil
    ctypedef struct pythia_q_job:
        const int16_t* xq
        const int8_t* a8
        const uint8_t* ua
        const float* xd
        const unsigned char* bad
        const int8_t* q
        const float* wd
        const float* bias
        float* y
        Py_ssize_t N, O, C, nb
    ctypedef void (*pp_fn)(const void* job, Py_ssize_t t0, Py_ssize_t t1) noexcept nogil
    void pythia_q_tiles(const void* p, Py_ssize_t t0, Py_ssize_t t1) noexcept nogil
    void pythia_pool_run(pp_fn fn, const void* job, Py_ssize_t count, int threads) noexcept nogil
    int pythia_quantize_row(const float* x, int16_t* q, float* d, Py_ssize_t C) noexcept nogil

cdef enum: QK_ = 32

API_VERSION = 2  # must equal pythia.quant.compiled.API_VERSION
ISA = PYTHIA_Q_ISA.decode()


def cpu_has_avx2() -> bool:
    """True when this CPU (and OS) can run the -mavx2 build of these kernels."""
    return pythia_q_cpu_has_avx2() != 0


def cpu_has_avx512vnni() -> bool:
    """True when this CPU (and OS) can run the AVX-512 VNNI build of these kernels."""
    return pythia_q_cpu_has_avx512vnni() != 0


def max_threads() -> int:
    """OpenMP's thread limit for the calling thread (1 in a serial build)."""
    return pythia_q_max_threads()


cdef void* _buf(cnp.ndarray a, int typenum, Py_ssize_t n, bint out) except NULL:
    # the data pointer of a C-contiguous array of n elements of `typenum` (writeable if `out`)
    if cnp.PyArray_TYPE(a) != typenum or not cnp.PyArray_IS_C_CONTIGUOUS(a) or cnp.PyArray_SIZE(a) != n:
        raise ValueError(f"kernel argument must be a C-contiguous array of {n} elements of type {typenum}")
    if out and not cnp.PyArray_ISWRITEABLE(a):
        raise ValueError("kernel output must be writeable")
    return cnp.PyArray_DATA(a)


def quantize_rows(cnp.ndarray x not None, cnp.ndarray q not None, cnp.ndarray d not None,
                  cnp.ndarray bad not None, Py_ssize_t N, Py_ssize_t C):
    """x (N, C) float32 -> q (N, C) int16 (values in [-127, 127]), d (N, C/QK) float32,
    bad (N,) uint8 (the row held NaN or inf, and is stored as zeros)."""
    cdef const float* px = <const float*>_buf(x, cnp.NPY_FLOAT32, N * C, False)
    cdef int16_t* pq = <int16_t*>_buf(q, cnp.NPY_INT16, N * C, True)
    cdef float* pd = <float*>_buf(d, cnp.NPY_FLOAT32, N * (C // QK_), True)
    cdef unsigned char* pb = <unsigned char*>_buf(bad, cnp.NPY_UINT8, N, True)
    cdef Py_ssize_t n
    with nogil:
        for n in range(N):
            pb[n] = pythia_quantize_row(px + n * C, pq + n * C, pd + n * (C // QK_), C)


cdef class _Scratch:
    """Quantized activations of N rows of C: xq (N C int16), xd (N C / QK), bad (N), and the SIMD
    builds' copies a8 (int8) and ua (|a| as uint8)."""
    cdef int16_t* xq
    cdef float* xd
    cdef unsigned char* bad
    cdef int8_t* a8
    cdef uint8_t* ua

    def __cinit__(self, Py_ssize_t N, Py_ssize_t C):
        cdef Py_ssize_t n = N * C if N * C > 0 else 1
        self.xq = <int16_t*>malloc(n * sizeof(int16_t))
        self.xd = <float*>malloc((n // QK_ + 1) * sizeof(float))
        self.bad = <unsigned char*>malloc(N + 1)
        self.a8 = <int8_t*>malloc(n)
        self.ua = <uint8_t*>malloc(n)
        if not (self.xq and self.xd and self.bad and self.a8 and self.ua):
            raise MemoryError("no memory for the quantized activations")

    def __dealloc__(self):
        free(self.xq)
        free(self.xd)
        free(self.bad)
        free(self.a8)
        free(self.ua)


def q8_linear(cnp.ndarray x not None, cnp.ndarray q not None, cnp.ndarray wd not None, object bias,
              cnp.ndarray y not None, Py_ssize_t N, Py_ssize_t O, Py_ssize_t C, int threads):
    """y (N, O) = x (N, C) float32 times W^T (q (O, C), wd (O, C/QK)) + bias: x is quantized here
    (as quantize_rows does), then multiplied; rows of x holding NaN or inf become NaN. Output
    rows o are shared among `threads` threads."""
    if N < 1 or O < 1 or C < QK_ or C % QK_:
        raise ValueError(f"q8_linear needs N, O >= 1 and C a positive multiple of {QK_}, got N={N}, O={O}, C={C}")
    if threads < 1:
        raise ValueError("threads must be >= 1")
    cdef Py_ssize_t nb = C // QK_, n
    cdef const float* px = <const float*>_buf(x, cnp.NPY_FLOAT32, N * C, False)
    cdef const int8_t* pq = <const int8_t*>_buf(q, cnp.NPY_INT8, O * C, False)
    cdef const float* pwd = <const float*>_buf(wd, cnp.NPY_FLOAT32, O * nb, False)
    cdef const float* pbias = NULL
    cdef float* py = <float*>_buf(y, cnp.NPY_FLOAT32, N * O, True)
    if bias is not None:
        pbias = <const float*>_buf(bias, cnp.NPY_FLOAT32, O, False)
    cdef _Scratch sc = _Scratch(N, C)
    cdef pythia_q_job job
    job.xq, job.a8, job.ua, job.xd, job.bad = sc.xq, sc.a8, sc.ua, sc.xd, sc.bad
    job.q, job.wd, job.bias, job.y = pq, pwd, pbias, py
    job.N, job.O, job.C, job.nb = N, O, C, nb
    with nogil:
        for n in range(N):
            sc.bad[n] = pythia_quantize_row(px + n * C, sc.xq + n * C, sc.xd + n * nb, C)
        pythia_q_acts(sc.xq, sc.a8, sc.ua, N * C)
        pythia_pool_run(pythia_q_tiles, &job, (O + PYTHIA_T - 1) // PYTHIA_T, threads)


def q8_block_sums(cnp.ndarray xq not None, cnp.ndarray q not None, cnp.ndarray s not None,
                  Py_ssize_t N, Py_ssize_t O, Py_ssize_t C):
    """s (N, O, C/QK) int32: the kernel's block dot products (the same code as q8_linear's), for tests."""
    cdef Py_ssize_t nb = C // QK_
    cdef const int16_t* pxq = <const int16_t*>_buf(xq, cnp.NPY_INT16, N * C, False)
    cdef const int8_t* pq = <const int8_t*>_buf(q, cnp.NPY_INT8, O * C, False)
    cdef int32_t* ps = <int32_t*>_buf(s, cnp.NPY_INT32, N * O * nb, True)
    cdef _Scratch acts = _Scratch(N, C)
    cdef Py_ssize_t n, o, b
    with nogil:
        pythia_q_acts(pxq, acts.a8, acts.ua, N * C)
        for n in range(N):
            for o in range(O):
                for b in range(nb):
                    ps[(n * O + o) * nb + b] = pythia_block_sum(pxq + n * C + b * QK_, acts.a8 + n * C + b * QK_,
                                                                acts.ua + n * C + b * QK_, pq + o * C + b * QK_)
