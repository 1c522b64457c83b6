"""adamw_update: the fused AdamW kernel against its NumPy twin and the formula in float64.

Tolerances: the twins agree to 2e-6 relative on p, m and v after five steps (float32; the
AVX2 build fuses multiply-adds, the reference rounds each product), and both agree with the
same steps done in float64 to 1e-5 relative; each also allows an absolute 1e-6 of the array's
largest entry, for entries of m that cancel to near zero. Bad arguments raise the same error in
both backends, and in-place arguments are never silently copied.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from pythia.kernels import _loader, reference

compiled, _why = _loader.load_compiled()
BACKENDS = [pytest.param(reference, id="numpy"),
            pytest.param(compiled, id="cython", marks=pytest.mark.skipif(compiled is None, reason=str(_why)))]
HYPER = dict(lr=3e-3, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1)


def state(n: int, seed: int = 0):
    r = np.random.default_rng(seed)
    p = r.standard_normal(n).astype(np.float32)
    m = (0.01 * r.standard_normal(n)).astype(np.float32)
    v = (1e-4 * r.random(n)).astype(np.float32)
    return p, m, v


def grads(n: int, step: int):
    return np.random.default_rng(100 + step).standard_normal(n).astype(np.float32)


def float64_steps(p, m, v, steps, lr, beta1, beta2, eps, weight_decay, grad_scale):
    p, m, v = (a.astype(np.float64) for a in (p, m, v))
    for t in range(1, steps + 1):
        g = grads(p.size, t).astype(np.float64) * grad_scale
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat, v_hat = m / (1 - beta1 ** t), v / (1 - beta2 ** t)
        p = p * (1 - lr * weight_decay) - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p, m, v


@pytest.mark.parametrize("n", [1, 7, 33, 4096, 4097, 200_003])   # one block, partial blocks, threaded
@pytest.mark.parametrize("grad_scale, weight_decay", [(1.0, 0.1), (0.25, 0.0)])
def test_backends_agree_over_five_steps(n, grad_scale, weight_decay):
    if compiled is None:
        pytest.skip(str(_why))
    runs = []
    for impl in (compiled, reference):
        p, m, v = state(n)
        for t in range(1, 6):
            impl.adamw_update(p, grads(n, t), m, v, t=t, grad_scale=grad_scale,
                              **{**HYPER, "weight_decay": weight_decay})
        runs.append((p, m, v))
    for a, b, name in zip(runs[0], runs[1], "pmv"):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-6 * np.abs(b).max(), err_msg=name)


@pytest.mark.parametrize("impl", BACKENDS)
def test_matches_the_formula_in_float64(impl):
    n = 1000
    p, m, v = state(n, 1)
    want = float64_steps(p, m, v, 5, grad_scale=0.5, **HYPER)
    for t in range(1, 6):
        impl.adamw_update(p, grads(n, t), m, v, t=t, grad_scale=0.5, **HYPER)
    for got, exp, name in zip((p, m, v), want, "pmv"):
        np.testing.assert_allclose(got, exp, rtol=1e-5, atol=1e-6 * np.abs(exp).max(), err_msg=name)


@pytest.mark.parametrize("impl", BACKENDS)
def test_updates_in_place_and_leaves_the_gradient_alone(impl):
    p, m, v = state(64)
    g = grads(64, 1)
    ids, g0, p0 = [id(a) for a in (p, m, v)], g.copy(), p.copy()
    assert impl.adamw_update(p, g, m, v, t=1, **HYPER) is None
    assert [id(a) for a in (p, m, v)] == ids
    np.testing.assert_array_equal(g, g0)
    assert not np.array_equal(p, p0)


def _bad_cases():
    p, m, v = state(16)
    g = grads(16, 1)
    ro = p.copy()
    ro.flags.writeable = False
    yield "float64 p", (p.astype(np.float64), g, m, v), {}, TypeError, "p must be float32"
    yield "list g", (p, list(g), m, v), {}, TypeError, "g must be a numpy.ndarray"
    yield "2-d m", (p, g, m.reshape(4, 4), v), {}, ValueError, "m must be a 1-d C-contiguous"
    yield "strided v", (p, g, m, np.zeros(32, np.float32)[::2]), {}, ValueError, "v must be a 1-d C-contiguous"
    yield "short v", (p, g, m, v[:8]), {}, ValueError, "v has 8 elements but p has 16"
    yield "read-only p", (ro, g, m, v), {}, ValueError, "p is read-only"
    yield "m is v", (p, g, m, m), {}, ValueError, "m and v overlap"
    yield "t = 0", (p, g, m, v), {"t": 0}, ValueError, "t (the 1-based step count)"
    yield "beta2 = 1", (p, g, m, v), {"beta2": 1.0}, ValueError, "beta1 and beta2 must lie in [0, 1)"
    yield "lr nan", (p, g, m, v), {"lr": math.nan}, ValueError, "lr must be finite"
    yield "eps 0", (p, g, m, v), {"eps": 0.0}, ValueError, "eps and grad_scale must be > 0"
    yield "lr text", (p, g, m, v), {"lr": "fast"}, TypeError, "lr must be a number"


@pytest.mark.parametrize("impl", BACKENDS)
@pytest.mark.parametrize("case", list(_bad_cases()), ids=lambda c: c[0])
def test_bad_arguments_are_refused_before_anything_changes(impl, case):
    _, args, over, err, msg = case
    before = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    with pytest.raises(err, match=msg.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        impl.adamw_update(*args, **{**HYPER, "t": 1, **over})
    for a, b in zip(args, before):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
