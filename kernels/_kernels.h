/* C helpers of _kernels.pyx: what Cython cannot say (restrict, vector types, compile-time
   float constants, bit casts, the CPU check). Included after Python.h, so Py_ssize_t exists.

   Constants live here, not as Cython module globals: gcc must see them as compile-time
   constants, or it reloads them (they might alias an output) and will not vectorise. */
#ifndef PYTHIA_KERNELS_H
#define PYTHIA_KERNELS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

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

/* OpenMP's default team size (OMP_NUM_THREADS, else the cores this process may run on);
   1 in a serial build. Read once, as the default of the Python layer's thread count. */
#ifdef _OPENMP
#include <omp.h>
static int pythia_default_threads(void) { return omp_get_max_threads(); }
#else
static int pythia_default_threads(void) { return 1; }
#endif

/* bit casts between float and int32 (memcpy is the defined way; it compiles to nothing) */
static inline int32_t pythia_bits(float f) { int32_t i; memcpy(&i, &f, 4); return i; }
static inline float pythia_from_bits(int32_t i) { float f; memcpy(&f, &i, 4); return f; }

/* GELU (GPT-2's tanh form): s = sqrt(2/pi), c = 0.044715 */
static const float GELU_C = 0.044715f;
static const float GELU_2S = 1.5957691216057308f;  /* 2 s */
static const float GELU_3C = 0.134145f;             /* 3 c */
/* exp(x) = 2^n exp(r), n = round(x log2 e), r = x - n ln2 with ln2 split in two (Cody-Waite)
   so that n LN2_HI is exact; exp(r) on |r| <= ln2/2 by Cephes' expf polynomial (~1 ulp).
   ROUND = 1.5 * 2^23: adding then subtracting it rounds a float to the nearest integer.
   EXP_LO = ln(2^-126): below it exp gives 0 (no subnormal results); EXP_HI = 127.49 ln2 keeps
   2^n finite; above EXP_OVER = ln(FLT_MAX) the result is inf, as for libm's expf. */
static const float LOG2E = 1.44269504088896341f;
static const float LN2_HI = 0.693359375f;
static const float LN2_LO = -2.12194440e-4f;
static const float ROUND = 12582912.0f;
static const float EXP_LO = -87.33654475f;
static const float EXP_HI = 88.37f;
static const float EXP_OVER = 88.72283935546875f;
static const float P0 = 1.9875691500e-4f, P1 = 1.3981999507e-3f, P2 = 8.3334519073e-3f;
static const float P3 = 4.1665795894e-2f, P4 = 1.6666665459e-1f, P5 = 5.0000001201e-1f;

/* max(a[0..n)) skipping NaN entries (-inf for n = 0). gcc will not vectorise a max over a
   float array without -ffast-math (it keeps 16 scalar maxss), so the 16 lanes are written with
   GCC/clang vector types: two 8-wide vectors with AVX, four 4-wide with SSE2. Per lane
   m = a > m ? a : m, so a NaN never replaces m; max is exact, so the lane order changes
   nothing. */
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
    pythia_vi k = a > m;                                   /* all ones where a > m, else 0 */
    return (pythia_vf)((k & (pythia_vi)a) | (~k & (pythia_vi)m));
}
#endif

static inline float pythia_max(const float* a, Py_ssize_t n) {
    Py_ssize_t j = 0;
    float r = -INFINITY;
#if defined(__GNUC__) || defined(__clang__)
    if (n >= 16) {
        pythia_vf m[PYTHIA_NV], x, zero = {0};
        for (int i = 0; i < PYTHIA_NV; i++) m[i] = zero - INFINITY;       /* every lane -inf */
        for (; j + 16 <= n; j += 16)
            for (int i = 0; i < PYTHIA_NV; i++) {
                memcpy(&x, a + j + i * PYTHIA_VW, sizeof x);              /* unaligned load */
                m[i] = pythia_vmax(x, m[i]);
            }
        for (int i = 1; i < PYTHIA_NV; i++) m[0] = pythia_vmax(m[i], m[0]);
        for (int l = 0; l < PYTHIA_VW; l++) r = m[0][l] > r ? m[0][l] : r;
    }
#endif
    for (; j < n; j++) r = a[j] > r ? a[j] : r;
    return r;
}

/* Element-wise loops whose pointers never overlap, said with restrict (which Cython cannot
   spell): without it gcc versions each loop with a run-time overlap check and a scalar
   fallback, which on rows of 65-128 floats cost 1.5x. */
#define PYTHIA_RESTRICT __restrict

/* out = d a */
static inline void pythia_scaled(float* PYTHIA_RESTRICT out, const float* PYTHIA_RESTRICT a,
                                 float d, Py_ssize_t n) {
    for (Py_ssize_t j = 0; j < n; j++) out[j] = d * a[j];
}

/* dx = scale y (dy - dot) */
static inline void pythia_softmax_grad(float* PYTHIA_RESTRICT dx, const float* PYTHIA_RESTRICT dy,
                                       const float* PYTHIA_RESTRICT y, float dot, float scale,
                                       Py_ssize_t n) {
    for (Py_ssize_t j = 0; j < n; j++) dx[j] = scale * y[j] * (dy[j] - dot);
}

/* y = (x - m) r w + b */
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

/* acc += a, n elements */
static inline void pythia_add(float* PYTHIA_RESTRICT acc, const float* PYTHIA_RESTRICT a, Py_ssize_t n) {
    for (Py_ssize_t j = 0; j < n; j++) acc[j] += a[j];
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

#endif
