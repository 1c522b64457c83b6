# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled kernels behind `pythia.kernels.compiled` (which validates every argument first).

Each op is a `noexcept nogil` routine for one row, wrapped in a loop over rows that runs in
parallel (OpenMP prange) only when the work is large enough to repay the thread start-up.
Arguments arrive as C-contiguous float32 memoryviews: `const` ones are inputs, the rest outputs.
N is the number of rows, C the row length.
"""
from cython.parallel cimport prange
from libc.math cimport expf, sqrtf, tanhf, logf, INFINITY

API_VERSION = 1  # must equal pythia.kernels.compiled.API_VERSION

cdef float GELU_S = 0.7978845608028654   # sqrt(2/pi)
cdef float GELU_C = 0.044715
cdef Py_ssize_t PARALLEL_MIN = 32768      # elements below which threads cost more than they save


cdef inline int _threads(Py_ssize_t work) noexcept nogil:
    return 2 if work >= PARALLEL_MIN else 1


# ----------------------------------------------------------------------------- softmax

cdef inline void _softmax_row(const float* x, float* y, Py_ssize_t C, float scale) noexcept nogil:
    # y = exp(s*x - max) / sum; an all -inf row gives y = 0
    cdef Py_ssize_t j
    cdef float m = -INFINITY, s = 0.0, inv
    for j in range(C):
        if x[j] > m:
            m = x[j]
    if m == -INFINITY:
        for j in range(C):
            y[j] = 0.0
        return
    m = m * scale
    for j in range(C):
        y[j] = expf(x[j] * scale - m)
        s = s + y[j]
    inv = 1.0 / s
    for j in range(C):
        y[j] = y[j] * inv


cdef inline void _softmax_grad_row(const float* dy, const float* y, float* dx, Py_ssize_t C, float scale) noexcept nogil:
    # dx = scale * y * (dy - sum(dy * y))
    cdef Py_ssize_t j
    cdef float dot = 0.0
    for j in range(C):
        dot = dot + dy[j] * y[j]
    for j in range(C):
        dx[j] = scale * y[j] * (dy[j] - dot)


def softmax_forward(const float[:, ::1] x, float[:, ::1] y):
    cdef Py_ssize_t i, N = x.shape[0], C = x.shape[1]
    for i in prange(N, nogil=True, schedule="static", num_threads=_threads(N * C)):
        _softmax_row(&x[i, 0], &y[i, 0], C, 1.0)


def softmax_backward(const float[:, ::1] dy, const float[:, ::1] y, float[:, ::1] dx):
    cdef Py_ssize_t i, N = y.shape[0], C = y.shape[1]
    for i in prange(N, nogil=True, schedule="static", num_threads=_threads(N * C)):
        _softmax_grad_row(&dy[i, 0], &y[i, 0], &dx[i, 0], C, 1.0)


# ----------------------------------------------------------------------------- causal attention softmax

def attention_softmax_forward(const float[:, :, ::1] s, float[:, :, ::1] y, float scale):
    # row i of each (Tq, Tk) matrix attends keys 0..off+i, off = Tk - Tq; the rest is 0
    cdef Py_ssize_t r, n, i, j, L, N = s.shape[0], Tq = s.shape[1], Tk = s.shape[2], off = Tk - Tq
    for r in prange(N * Tq, nogil=True, schedule="static", num_threads=_threads(N * Tq * Tk)):
        n = r // Tq
        i = r % Tq
        L = off + i + 1
        _softmax_row(&s[n, i, 0], &y[n, i, 0], L, scale)
        for j in range(L, Tk):
            y[n, i, j] = 0.0


def attention_softmax_backward(const float[:, :, ::1] dy, const float[:, :, ::1] y, float[:, :, ::1] dx, float scale):
    cdef Py_ssize_t r, n, i, j, L, N = y.shape[0], Tq = y.shape[1], Tk = y.shape[2], off = Tk - Tq
    for r in prange(N * Tq, nogil=True, schedule="static", num_threads=_threads(N * Tq * Tk)):
        n = r // Tq
        i = r % Tq
        L = off + i + 1
        _softmax_grad_row(&dy[n, i, 0], &y[n, i, 0], &dx[n, i, 0], L, scale)
        for j in range(L, Tk):
            dx[n, i, j] = 0.0


# ----------------------------------------------------------------------------- layernorm

def layernorm_forward(const float[:, ::1] x, const float[::1] w, const float[::1] b,
                      float[:, ::1] y, float[::1] mean, float[::1] rstd, float eps):
    cdef Py_ssize_t i, j, N = x.shape[0], C = x.shape[1]
    cdef float m, v, r, d
    for i in prange(N, nogil=True, schedule="static", num_threads=_threads(N * C)):
        m = 0.0
        for j in range(C):
            m = m + x[i, j]
        m = m / C
        v = 0.0
        for j in range(C):
            d = x[i, j] - m
            v = v + d * d
        r = 1.0 / sqrtf(v / C + eps)
        for j in range(C):
            y[i, j] = (x[i, j] - m) * r * w[j] + b[j]
        mean[i] = m
        rstd[i] = r


def layernorm_backward(const float[:, ::1] dy, const float[:, ::1] x, const float[::1] w,
                       const float[::1] mean, const float[::1] rstd,
                       float[:, ::1] dx, float[::1] dw, float[::1] db):
    # dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  g = dy * w;  dw = sum dy*xhat, db = sum dy
    cdef Py_ssize_t i, j, N = x.shape[0], C = x.shape[1]
    cdef float xhat, g, sg, sgx, r
    for j in range(C):
        dw[j] = 0.0
        db[j] = 0.0
    with nogil:
        for i in range(N):
            r = rstd[i]
            sg = 0.0
            sgx = 0.0
            for j in range(C):
                xhat = (x[i, j] - mean[i]) * r
                g = dy[i, j] * w[j]
                sg = sg + g
                sgx = sgx + g * xhat
                dw[j] += dy[i, j] * xhat
                db[j] += dy[i, j]
            sg = sg / C
            sgx = sgx / C
            for j in range(C):
                xhat = (x[i, j] - mean[i]) * r
                dx[i, j] = r * (dy[i, j] * w[j] - sg - xhat * sgx)


# ----------------------------------------------------------------------------- GELU (tanh)

def gelu_forward(const float[::1] x, float[::1] y):
    # y = 0.5 x (1 + tanh(s (x + c x^3)))
    cdef Py_ssize_t k, n = x.shape[0]
    cdef float v
    for k in prange(n, nogil=True, schedule="static", num_threads=_threads(n)):
        v = x[k]
        y[k] = 0.5 * v * (1.0 + tanhf(GELU_S * (v + GELU_C * v * v * v)))


def gelu_backward(const float[::1] dy, const float[::1] x, float[::1] dx):
    # gelu'(x) = 0.5 (1 + t) + 0.5 x (1 - t^2) s (1 + 3 c x^2)
    cdef Py_ssize_t k, n = x.shape[0]
    cdef float v, t
    for k in prange(n, nogil=True, schedule="static", num_threads=_threads(n)):
        v = x[k]
        t = tanhf(GELU_S * (v + GELU_C * v * v * v))
        dx[k] = dy[k] * (0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * GELU_S * (1.0 + 3.0 * GELU_C * v * v))


# ----------------------------------------------------------------------------- softmax + cross-entropy

def crossentropy_forward(const float[:, ::1] z, const long long[::1] t, float[::1] loss, float[:, ::1] p):
    # p = softmax(z); loss = -log p[t]
    cdef Py_ssize_t i, N = z.shape[0], V = z.shape[1]
    for i in prange(N, nogil=True, schedule="static", num_threads=_threads(N * V)):
        _softmax_row(&z[i, 0], &p[i, 0], V, 1.0)
        loss[i] = -logf(p[i, t[i]]) if p[i, t[i]] > 0 else INFINITY


def crossentropy_backward(const float[::1] dloss, const float[:, ::1] p, const long long[::1] t, float[:, ::1] dz):
    # dz = dloss * (p - onehot(t))
    cdef Py_ssize_t i, j, N = p.shape[0], V = p.shape[1]
    for i in prange(N, nogil=True, schedule="static", num_threads=_threads(N * V)):
        for j in range(V):
            dz[i, j] = dloss[i] * p[i, j]
        dz[i, t[i]] = dz[i, t[i]] - dloss[i]
