"""pythia.layers: attention (grouped-query included) against a naive float64 reference and finite
differences; the cached step against the full pass; RMSNorm and the gated SiLU against finite
differences.

The references are written here from the definitions (softmax over a -inf mask, repeated kv
heads), independent of the layer code. Float64 throughout, with the kernels routed to the
reference's dtype-preserving twins, so tolerances are 1e-10 (float64 rounding) for identities and
1e-6 relative for central differences (h = 1e-6).
"""
from __future__ import annotations

import numpy as np
import pytest

from pythia import kernels, layers
from pythia.kernels import reference as ref


@pytest.fixture
def f64(monkeypatch):
    monkeypatch.setattr(kernels, "attention_softmax_forward", ref._attention_softmax_forward)
    monkeypatch.setattr(kernels, "attention_softmax_backward", ref._attention_softmax_backward)


def naive_attention(q, k, v):
    """softmax(q k^T / sqrt(hs) + causal mask) v with every kv head repeated for its G query heads."""
    B, H, T, hs = q.shape
    G = H // k.shape[1]
    k, v = np.repeat(k, G, axis=1), np.repeat(v, G, axis=1)    # (B, H, T, hs)
    s = q @ k.swapaxes(-1, -2) / np.sqrt(hs)                    # (B, H, T, T)
    s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


def qkv(B, H, Hkv, T, hs, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((B, H, T, hs)), rng.standard_normal((B, Hkv, T, hs)),
            rng.standard_normal((B, Hkv, T, hs)))


def run_forward(q, k, v):
    y = np.empty(q.shape)
    probs = layers.attention_forward(y, q, k, v)
    return y, probs


@pytest.mark.parametrize("H, Hkv", [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize("split", [False, True])
def test_attention_forward_matches_the_naive_definition(f64, monkeypatch, H, Hkv, split):
    monkeypatch.setattr(layers, "SPLIT_MIN_T", 2 if split else 10**9)
    q, k, v = qkv(2, H, Hkv, 7, 3)
    y, probs = run_forward(q, k, v)
    assert len(probs) == (2 if split else 1)
    np.testing.assert_allclose(y, naive_attention(q, k, v), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("H, Hkv", [(4, 4), (4, 2), (6, 2)])
@pytest.mark.parametrize("split", [False, True])
def test_attention_backward_matches_central_differences(f64, monkeypatch, H, Hkv, split):
    monkeypatch.setattr(layers, "SPLIT_MIN_T", 2 if split else 10**9)
    q, k, v = qkv(1, H, Hkv, 5, 3, seed=1)
    w = np.random.default_rng(2).standard_normal(q.shape)      # loss = sum(w * y)
    y, probs = run_forward(q, k, v)
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    layers.attention_backward(dq, dk, dv, w, q, k, v, probs)
    h = 1e-6
    for a, da in ((q, dq), (k, dk), (v, dv)):
        num = np.empty_like(a)
        for i in np.ndindex(a.shape):
            keep = a[i]
            a[i] = keep + h
            up = np.sum(w * naive_attention(q, k, v))
            a[i] = keep - h
            down = np.sum(w * naive_attention(q, k, v))
            a[i] = keep
            num[i] = (up - down) / (2 * h)
        np.testing.assert_allclose(da, num, rtol=1e-6, atol=1e-8 * np.abs(num).max())


def test_attention_takes_strided_views_of_one_projection(f64):
    # GPT-2's layout: q, k, v are views into one (N, 3C) array, y a view into an (N, C) array
    B, T, H, hs = 2, 6, 2, 4
    C = H * hs
    qkv_rows = np.random.default_rng(3).standard_normal((B * T, 3 * C))
    q, k, v = qkv_rows.reshape(B, T, 3, H, hs).transpose(2, 0, 3, 1, 4)
    out = np.empty((B * T, C))
    layers.attention_forward(out.reshape(B, T, H, hs).transpose(0, 2, 1, 3), q, k, v)
    expect = naive_attention(q.copy(), k.copy(), v.copy()).transpose(0, 2, 1, 3).reshape(B * T, C)
    np.testing.assert_allclose(out, expect, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("H, Hkv", [(4, 4), (4, 2)])
def test_cached_steps_give_the_full_pass_rows(f64, H, Hkv):
    q, k, v = qkv(1, H, Hkv, 6, 3, seed=4)
    full = naive_attention(q, k, v)[0]                         # (H, T, hs)
    kc, vc = np.zeros((Hkv, 8, 3)), np.zeros((Hkv, 8, 3))
    first = layers.attention_step(q[0, :, :4], k[0, :, :4], v[0, :, :4], kc, vc, 0)  # a 4-token prompt
    np.testing.assert_allclose(first, full[:, :4], rtol=1e-10, atol=1e-12)
    for t in (4, 5):                                           # then one token at a time
        y = layers.attention_step(q[0, :, t:t + 1], k[0, :, t:t + 1], v[0, :, t:t + 1], kc, vc, t)
        np.testing.assert_allclose(y, full[:, t:t + 1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("H, Hkv", [(4, 4), (6, 2)])
def test_a_long_prompt_then_a_chunk_give_the_full_pass_rows(f64, H, Hkv):
    """A prompt of at least SPLIT_MIN_T positions at pos 0 (attention_forward's query blocks), then
    a chunk of several tokens at pos > 0 (the masked step against the cache)."""
    T0 = layers.SPLIT_MIN_T + 3
    q, k, v = qkv(1, H, Hkv, T0 + 5, 4, seed=6)
    full = naive_attention(q, k, v)[0]                         # (H, T, hs)
    kc, vc = np.zeros((Hkv, T0 + 8, 4)), np.zeros((Hkv, T0 + 8, 4))
    first = layers.attention_step(q[0, :, :T0], k[0, :, :T0], v[0, :, :T0], kc, vc, 0)
    np.testing.assert_allclose(first, full[:, :T0], rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(kc[:, :T0], k[0, :, :T0])   # the prompt's keys are cached too
    rest = layers.attention_step(q[0, :, T0:], k[0, :, T0:], v[0, :, T0:], kc, vc, T0)
    np.testing.assert_allclose(rest, full[:, T0:], rtol=1e-10, atol=1e-12)


def test_mismatched_heads_are_a_value_error():
    q, k, v = qkv(1, 3, 2, 4, 2)
    with pytest.raises(ValueError, match="multiple of Hkv"):
        run_forward(q, k, v)


def numeric_grad(f, a, h=1e-6):
    g = np.empty_like(a)
    for i in np.ndindex(a.shape):
        keep = a[i]
        a[i] = keep + h
        up = f()
        a[i] = keep - h
        down = f()
        a[i] = keep
        g[i] = (up - down) / (2 * h)
    return g


def test_rmsnorm_backward_matches_central_differences():
    rng = np.random.default_rng(5)
    x, w, dy = rng.standard_normal((3, 5)), rng.standard_normal(5), rng.standard_normal((3, 5))
    y, rstd = layers.rmsnorm_forward(x, w)
    np.testing.assert_allclose(y, x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * w, rtol=1e-12)
    dx, dw = layers.rmsnorm_backward(dy, x, w, rstd)
    loss = lambda: np.sum(dy * layers.rmsnorm_forward(x, w)[0])
    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(dw, numeric_grad(loss, w), rtol=1e-6, atol=1e-9)


def test_swiglu_backward_matches_central_differences():
    rng = np.random.default_rng(6)
    gate, up, dy = (rng.standard_normal((4, 3)) for _ in range(3))
    np.testing.assert_allclose(layers.swiglu_forward(gate, up), gate / (1 + np.exp(-gate)) * up, rtol=1e-12)
    dgate, dup = layers.swiglu_backward(dy, gate, up)
    loss = lambda: np.sum(dy * layers.swiglu_forward(gate, up))
    np.testing.assert_allclose(dgate, numeric_grad(loss, gate), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(dup, numeric_grad(loss, up), rtol=1e-6, atol=1e-9)


def test_linear_without_bias_and_embedding_scatter_add():
    rng = np.random.default_rng(7)
    x, w, dout = rng.standard_normal((5, 3)), rng.standard_normal((3, 4)), rng.standard_normal((5, 4))
    np.testing.assert_array_equal(layers.linear_forward(x, w), x @ w)
    dw = np.empty_like(w)
    dx = layers.linear_backward(dw, None, dout, x, w)
    np.testing.assert_allclose(dw, x.T @ dout, rtol=1e-12)
    np.testing.assert_allclose(dx, dout @ w.T, rtol=1e-12)
    dwte = np.ones((6, 4))
    idx = np.array([2, 0, 2, 5, 2])
    layers.embedding_backward(dwte, dout, idx)
    expect = np.ones((6, 4))
    np.add.at(expect, idx, dout)
    np.testing.assert_allclose(dwte, expect, rtol=1e-12)


@pytest.mark.parametrize("N", [1, 3, 8, 9, 40])
def test_few_row_products_route_by_rows_and_equal_the_float64_product(N):
    # up to 8 float32 rows take kernels.vecmat / kernels.matvec (one read of w), more take BLAS;
    # either way the product is x w + b to float32's rounding of a 96-term sum
    r = np.random.default_rng(N)
    x, w, b = (r.standard_normal(s).astype(np.float32) for s in ((N, 96), (96, 70), (70,)))
    expected = x.astype(np.float64) @ w + b
    np.testing.assert_allclose(layers.linear_forward(x, w, b), expected, rtol=1e-5, atol=1e-4)
    wo = np.ascontiguousarray(w.T)                                # the same weight stored (out, in)
    np.testing.assert_allclose(layers.linear_out_in(x, wo, b), expected, rtol=1e-5, atol=1e-4)
    # float64 (the finite-difference tests) stays float64, through BLAS
    assert layers.linear_forward(x.astype(np.float64), w.astype(np.float64)).dtype == np.float64
    assert layers.linear_out_in(x.astype(np.float64), wo.astype(np.float64)).dtype == np.float64
