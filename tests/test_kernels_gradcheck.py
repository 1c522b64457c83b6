"""Every reference backward equals central finite differences of its forward, in float64.

The private twins in `pythia.kernels.reference` keep the input dtype, so each is run in
float64: for a random projection G, L(x) = sum(G * forward(x)) and the backward given
dy = G must equal (L(x + h e_i) - L(x - h e_i)) / 2h for every input entry i. With h = 1e-6
the difference quotient is accurate to ~1e-9; the stated tolerance is 1e-6 relative
(plus 1e-8 absolute for entries that are 0 by symmetry).
"""
from __future__ import annotations

import numpy as np
import pytest
from kernel_cases import rng

from pythia.kernels import reference as ref

H = 1e-6
RTOL, ATOL = 1e-6, 1e-8


def numeric_grad(loss, x: np.ndarray) -> np.ndarray:
    """Central differences of the scalar function `loss` with respect to every entry of x."""
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + H
        up = loss()
        flat[i] = old - H
        down = loss()
        flat[i] = old
        gflat[i] = (up - down) / (2 * H)
    return g


@pytest.mark.parametrize("shape", [(1,), (6,), (3, 5), (2, 2, 4)])
def test_softmax_backward_is_the_gradient(shape):
    r = rng("fd-softmax", shape)
    x, G = r.standard_normal(shape), r.standard_normal(shape)
    analytic = ref._softmax_backward(G, ref._softmax_forward(x))
    numeric = numeric_grad(lambda: np.sum(G * ref._softmax_forward(x)), x)
    np.testing.assert_allclose(analytic, numeric, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("shape", [(1, 1), (5,), (3, 6), (2, 2, 5)])
def test_layernorm_backward_is_the_gradient(shape):
    r = rng("fd-layernorm", shape)
    C = shape[-1]
    x, G = r.standard_normal(shape), r.standard_normal(shape)
    w, b = 1 + 0.5 * r.standard_normal(C), r.standard_normal(C)
    eps = 1e-5
    _, mean, rstd = ref._layernorm_forward(x, w, b, eps)
    dx, dw, db = ref._layernorm_backward(G, x, w, mean, rstd)

    def loss():
        return np.sum(G * ref._layernorm_forward(x, w, b, eps)[0])

    for name, analytic, wrt in (("dx", dx, x), ("dweight", dw, w), ("dbias", db, b)):
        # dx for C = 1 is 0 up to eps-sized terms; rstd = 1/sqrt(eps) makes those ~1e-7
        atol = 1e-6 if C == 1 else ATOL
        np.testing.assert_allclose(analytic, numeric_grad(loss, wrt), rtol=RTOL, atol=atol, err_msg=name)


def test_gelu_backward_is_the_derivative():
    # element-wise, so every x gets its own difference quotient at once
    x = np.linspace(-6, 6, 1201)
    G = rng("fd-gelu").standard_normal(x.shape)
    numeric = G * (ref._gelu_forward(x + H) - ref._gelu_forward(x - H)) / (2 * H)
    np.testing.assert_allclose(ref._gelu_backward(G, x), numeric, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("shape", [(1, 1), (4, 4), (3, 6), (2, 3, 5)])
@pytest.mark.parametrize("scale", [0.3, 1.0])
def test_attention_softmax_backward_is_the_gradient(shape, scale):
    r = rng("fd-attention", shape, scale)
    s, G = r.standard_normal(shape), r.standard_normal(shape)
    analytic = ref._attention_softmax_backward(G, ref._attention_softmax_forward(s, scale), scale)
    numeric = numeric_grad(lambda: np.sum(G * ref._attention_softmax_forward(s, scale)), s)
    np.testing.assert_allclose(analytic, numeric, rtol=RTOL, atol=ATOL)
    Tq, Tk = shape[-2:]
    masked = ~ref._causal_mask(Tq, Tk)
    assert np.all(analytic[..., masked] == 0)  # masked scores get exactly no gradient


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 2, 4)])
def test_crossentropy_backward_is_the_gradient(shape):
    r = rng("fd-crossentropy", shape)
    z = r.standard_normal(shape)
    t = r.integers(0, shape[-1], shape[:-1])
    dl = r.standard_normal(shape[:-1])
    _, probs = ref._crossentropy_forward(z, t)
    analytic = ref._crossentropy_backward(dl, probs, t)
    numeric = numeric_grad(lambda: np.sum(dl * ref._crossentropy_forward(z, t)[0]), z)
    np.testing.assert_allclose(analytic, numeric, rtol=RTOL, atol=ATOL)


def test_finite_differences_catch_a_wrong_gradient():
    # the check has teeth: a softmax gradient missing its "- sum(dy y)" term fails it
    r = rng("fd-negative")
    x, G = r.standard_normal((2, 5)), r.standard_normal((2, 5))
    wrong = ref._softmax_forward(x) * G
    numeric = numeric_grad(lambda: np.sum(G * ref._softmax_forward(x)), x)
    assert not np.allclose(wrong, numeric, rtol=RTOL, atol=ATOL)
