# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Q8_0 kernels behind `pythia.quant.compiled` (which validates every argument first).

The specification is pythia/quant/reference.py: rows quantized per block of QK = 32 with
d = amax / 127, q = rint(x / d); y[n, o] = sum over blocks b, in order, of
s_b * (xd[n, b] * wd[o, b]) with s_b the exact int32 dot product of the two blocks; + bias.
setup.py builds this file with -ffp-contract=off, so no fused multiply-add changes the
float32 rounding the reference does step by step: results equal the reference bit for bit.
N rows of x, O output units (rows of the weight), C inputs, nb = C / QK blocks.

Speed: activations are quantized once per call into int16 (values in [-127, 127]). Baseline
build: the block dot product multiplies them by int8 weights widened to int16 and sums in
int32, the pattern gcc -O3 turns into pmaddwd (SSE2), four weight rows at a time. AVX2 build:
eight weight rows at a time, one per float lane, with llama.cpp's vpsignb + vpmaddubsw +
vpmaddwd on 32 int8 pairs, a vphaddd tree for the eight block sums, and a prefetch of the next
eight rows (a decode step streams every weight from memory once). The loop over output rows
runs on `threads` OpenMP threads (static shares of whole tiles of rows).
"""
cimport numpy as cnp
from cython.parallel cimport prange
from libc.math cimport NAN
from libc.stdint cimport int8_t, int16_t, int32_t, uint32_t

cnp.import_array()

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #if defined(__AVX2__)
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
    #define QK 32
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
    #if defined(__AVX2__)
    #include <immintrin.h>
    /* y[r] = sum_b s_rb (ad_b wd_rb) for R = 8 weight rows w + r C at once, one row per float
       lane, each lane's sum in block order as in the reference (separate multiply and add: the
       same float32 steps). Per block: the activation block is loaded once; each row's 32
       products are summed into 8 int32 partials; a tree of vphaddd turns the 8 rows' partials
       into one vector of their 8 exact block sums. */
    #define PYTHIA_R 8
    static inline void pythia_rows_dot(const int16_t* __restrict a, const float* __restrict ad,
                                       const int8_t* __restrict w, const float* __restrict wd,
                                       Py_ssize_t C, Py_ssize_t nb, float* __restrict y) {
        __m256 acc = _mm256_setzero_ps();
        const __m256i ones = _mm256_set1_epi16(1);
        for (Py_ssize_t b = 0; b < nb; b++) {
            const __m256i a0 = _mm256_loadu_si256((const __m256i*)(a + b * QK));
            const __m256i a1 = _mm256_loadu_si256((const __m256i*)(a + b * QK + 16));
            if (!(b & 1)) {                      /* the next tile's rows, a 64-byte line ahead of use */
                for (int r = 0; r < 8; r++) _mm_prefetch((const char*)(w + (8 + r) * C + b * QK), _MM_HINT_T0);
            }
            /* the block as 32 int8 (packs interleaves 64-bit quarters: put them back in order) */
            const __m256i a8 = _mm256_permute4x64_epi64(_mm256_packs_epi16(a0, a1), 0xD8);
            const __m256i ua = _mm256_abs_epi8(a8);
            __m256i p[8];
            for (int r = 0; r < 8; r++) {
                /* a w = |a| (w sign(a)): vpmaddubsw multiplies unsigned |a| by signed w sign(a) and
                   adds pairs into int16 (|sum| <= 2 * 127 * 127, no saturation); vpmaddwd by 1
                   adds pairs of those into the 8 int32 partials */
                __m256i sw = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i*)(w + r * C + b * QK)), a8);
                p[r] = _mm256_madd_epi16(_mm256_maddubs_epi16(ua, sw), ones);
            }
            __m256i h0 = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
            __m256i h1 = _mm256_hadd_epi32(_mm256_hadd_epi32(p[4], p[5]), _mm256_hadd_epi32(p[6], p[7]));
            /* h0: rows 0-3's sums of their partials' low 128 bits, then of their high 128 bits;
               h1 likewise for rows 4-7; adding the halves gives rows 0-7's block sums in order */
            __m256i s = _mm256_add_epi32(_mm256_permute2x128_si256(h0, h1, 0x20),
                                         _mm256_permute2x128_si256(h0, h1, 0x31));
            /* ad_b wd_rb for the 8 rows (8 scalar loads: cheaper than vgatherdps on Zen 3) */
            __m256 scale = _mm256_mul_ps(_mm256_set1_ps(ad[b]), _mm256_setr_ps(
                wd[b], wd[nb + b], wd[2 * nb + b], wd[3 * nb + b], wd[4 * nb + b], wd[5 * nb + b], wd[6 * nb + b],
                wd[7 * nb + b]));
            acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(s), scale));
        }
        _mm256_storeu_ps(y, acc);
    }
    #else
    /* y[r] = sum_b s_rb (ad_b wd_rb) for R = 4 weight rows w + r C at once, each row's sum in
       block order as in the reference: the four chains of float adds overlap (one chain waits
       ~4 cycles an add), and the activation block is loaded once for four rows */
    #define PYTHIA_R 4
    static inline void pythia_rows_dot(const int16_t* __restrict a, const float* __restrict ad,
                                       const int8_t* __restrict w, const float* __restrict wd,
                                       Py_ssize_t C, Py_ssize_t nb, float* __restrict y) {
        float acc[PYTHIA_R] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (Py_ssize_t b = 0; b < nb; b++) {
            int32_t s[PYTHIA_R];
            for (int r = 0; r < PYTHIA_R; r++) s[r] = pythia_dot32(a + b * QK, w + r * C + b * QK);
            for (int r = 0; r < PYTHIA_R; r++) acc[r] = acc[r] + (float)s[r] * (ad[b] * wd[r * nb + b]);
        }
        for (int r = 0; r < PYTHIA_R; r++) y[r] = acc[r];
    }
    #endif
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
    const char* PYTHIA_Q_ISA
    int32_t pythia_dot32(const int16_t* a, const int8_t* w) noexcept nogil
    enum: PYTHIA_R
    void pythia_rows_dot(const int16_t* a, const float* ad, const int8_t* w, const float* wd,
                         Py_ssize_t C, Py_ssize_t nb, float* y) noexcept nogil
    int pythia_quantize_row(const float* x, int16_t* q, float* d, Py_ssize_t C) noexcept nogil

cdef enum: QK_ = 32

API_VERSION = 1  # must equal pythia.quant.compiled.API_VERSION
ISA = PYTHIA_Q_ISA.decode()


def cpu_has_avx2() -> bool:
    """True when this CPU (and OS) can run the -mavx2 build of these kernels."""
    return pythia_q_cpu_has_avx2() != 0


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


cdef inline float _row_dot(const int16_t* xq, const float* xd, const int8_t* wq, const float* wd,
                           Py_ssize_t nb) noexcept nogil:
    # sum_b s_b (xd_b wd_b), in block order
    cdef float acc = 0.0
    cdef Py_ssize_t b
    for b in range(nb):
        acc = acc + <float>pythia_dot32(xq + b * QK_, wq + b * QK_) * (xd[b] * wd[b])
    return acc


def q8_matmul(cnp.ndarray xq not None, cnp.ndarray xd not None, cnp.ndarray bad not None,
              cnp.ndarray q not None, cnp.ndarray wd not None, object bias, cnp.ndarray y not None,
              Py_ssize_t N, Py_ssize_t O, Py_ssize_t C, int threads):
    """y (N, O) = quantized x (xq (N, C) int16, xd (N, C/QK)) times W^T (q (O, C), wd (O, C/QK)) + bias;
    rows with bad[n] set become NaN. Output rows o are shared among `threads` threads."""
    cdef Py_ssize_t nb = C // QK_
    cdef const int16_t* pxq = <const int16_t*>_buf(xq, cnp.NPY_INT16, N * C, False)
    cdef const float* pxd = <const float*>_buf(xd, cnp.NPY_FLOAT32, N * nb, False)
    cdef const unsigned char* pbad = <const unsigned char*>_buf(bad, cnp.NPY_UINT8, N, False)
    cdef const int8_t* pq = <const int8_t*>_buf(q, cnp.NPY_INT8, O * C, False)
    cdef const float* pwd = <const float*>_buf(wd, cnp.NPY_FLOAT32, O * nb, False)
    cdef const float* pbias = NULL
    cdef float* py = <float*>_buf(y, cnp.NPY_FLOAT32, N * O, True)
    cdef Py_ssize_t o, n
    if bias is not None:
        pbias = <const float*>_buf(bias, cnp.NPY_FLOAT32, O, False)
    if threads < 1:
        raise ValueError("threads must be >= 1")
    cdef Py_ssize_t tiles = O // PYTHIA_R
    cdef Py_ssize_t t, r
    # whole tiles of PYTHIA_R weight rows, then the last O % PYTHIA_R rows one by one
    for t in prange(tiles + O % PYTHIA_R, nogil=True, schedule="static", num_threads=threads):
        for n in range(N):
            if t < tiles:
                o = t * PYTHIA_R
                pythia_rows_dot(pxq + n * C, pxd + n * nb, pq + o * C, pwd + o * nb, C, nb, py + n * O + o)
                for r in range(PYTHIA_R):
                    py[n * O + o + r] = _finish(py[n * O + o + r], pbias, o + r, pbad[n])
            else:
                o = tiles * PYTHIA_R + (t - tiles)
                py[n * O + o] = _finish(_row_dot(pxq + n * C, pxd + n * nb, pq + o * C, pwd + o * nb, nb),
                                        pbias, o, pbad[n])


cdef inline float _finish(float acc, const float* bias, Py_ssize_t o, unsigned char bad) noexcept nogil:
    # the row's sum plus its bias; NaN for a row of x that held NaN or inf
    if bad:
        return NAN
    return acc + bias[o] if bias != NULL else acc


def q8_block_sums(cnp.ndarray xq not None, cnp.ndarray q not None, cnp.ndarray s not None,
                  Py_ssize_t N, Py_ssize_t O, Py_ssize_t C):
    """s (N, O, C/QK) int32: the kernel's block dot products, for tests."""
    cdef Py_ssize_t nb = C // QK_
    cdef const int16_t* pxq = <const int16_t*>_buf(xq, cnp.NPY_INT16, N * C, False)
    cdef const int8_t* pq = <const int8_t*>_buf(q, cnp.NPY_INT8, O * C, False)
    cdef int32_t* ps = <int32_t*>_buf(s, cnp.NPY_INT32, N * O * nb, True)
    cdef Py_ssize_t n, o, b
    with nogil:
        for n in range(N):
            for o in range(O):
                for b in range(nb):
                    ps[(n * O + o) * nb + b] = pythia_dot32(pxq + n * C + b * QK_, pq + o * C + b * QK_)
