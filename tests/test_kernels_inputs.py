"""Both backends on extreme values, awkward layouts and bad arguments.

Runs on the NumPy reference and on every compiled build importable here. Extreme values are
judged against float64 math, layouts against the same call on a contiguous copy, and every
bad argument must raise TypeError/ValueError naming the argument (never crash or answer).
"""
from __future__ import annotations

import numpy as np
import pytest
from kernel_cases import FWD_RTOL, bound_build, close, compiled_builds, f32, rng

from pythia.kernels import reference

BACKENDS = ["numpy"] + compiled_builds()


@pytest.fixture(params=BACKENDS)
def k(request):
    """A kernel backend module: the reference, or pythia.kernels.compiled bound to one build."""
    if request.param == "numpy":
        yield reference
    else:
        with bound_build(request.param) as mod:
            yield mod


# ----------------------------------------------------------------------------- extreme values

def test_softmax_is_finite_and_exact_at_magnitude_1e4(k):
    x = f32([[1e4, -1e4, 0.0, 1e4 - 1.0], [-1e4, -1e4 + 2.0, -1e4, -1e4]])
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(-1, keepdims=True))
    close(k.softmax_forward(x), f32(e / e.sum(-1, keepdims=True)), FWD_RTOL)


def test_softmax_gives_zero_to_minus_inf_and_defines_a_fully_masked_row(k):
    x = f32([[0.0, -np.inf, 1.0, -np.inf], [-np.inf] * 4, [-np.inf, 3.0, -np.inf, -np.inf]])
    y = k.softmax_forward(x)
    e = np.exp([0.0, 1.0])
    close(y[0], f32([e[0] / e.sum(), 0, e[1] / e.sum(), 0]), FWD_RTOL)
    assert np.array_equal(y[1], np.zeros(4, np.float32))            # fully masked: defined as 0
    assert np.array_equal(y[2], f32([0, 1, 0, 0]))


def test_nan_in_gives_nan_out_in_that_row_only(k):
    x = f32(rng("nan").standard_normal((3, 40)))
    x[1, 7] = np.nan
    losses, probs = k.crossentropy_forward(x, np.zeros(3, np.int64))
    outputs = {
        "softmax": k.softmax_forward(x),
        "layernorm": k.layernorm_forward(x, np.ones(40, np.float32), np.zeros(40, np.float32))[0],
        "crossentropy probs": probs,
        "crossentropy losses": losses[:, None],
        # query row 1 of a (3, 40) attention sees keys 0..38, key 39 stays masked (0)
        "attention": k.attention_softmax_forward(x, 1.0)[:, :39],
    }
    for name, y in outputs.items():
        assert np.all(np.isnan(y[1])), name
        assert np.all(np.isfinite(y[[0, 2]])), name


def test_a_row_of_only_nan_is_nan_not_zero(k):
    x = f32([[np.nan, np.nan, np.nan], [0.0, 1.0, 2.0]])
    y = k.softmax_forward(x)
    assert np.all(np.isnan(y[0])) and np.all(np.isfinite(y[1]))
    losses, probs = k.crossentropy_forward(x, np.array([0, 1]))
    assert np.isnan(losses[0]) and np.isfinite(losses[1])


def test_gelu_saturates_cleanly_at_large_magnitude(k):
    x = f32([-1e4, -100.0, -20.0, 0.0, 20.0, 100.0, 1e4, np.nan])
    y = k.gelu_forward(x)
    np.testing.assert_array_equal(y[3:7], x[3:7])                   # gelu(x) = x for x >> 0, 0 at 0
    assert np.all(np.abs(y[:3]) < 1e-30)                           # gelu(x) -> 0 for x << 0
    d = k.gelu_backward(np.ones_like(x), x)
    np.testing.assert_array_equal(d[4:7], f32([1, 1, 1]))
    assert np.all(np.abs(d[:3]) < 1e-30)
    assert np.isnan(y[-1]) and np.isnan(d[-1])


def test_layernorm_of_a_constant_row_is_the_bias(k):
    x = np.full((2, 16), 1e4, np.float32)
    b = f32(np.arange(16))
    y, mean, rstd = k.layernorm_forward(x, np.ones(16, np.float32), b)
    np.testing.assert_array_equal(y, np.broadcast_to(b, (2, 16)))  # var 0: rstd = 1/sqrt(eps), xhat = 0
    np.testing.assert_array_equal(mean, f32([1e4, 1e4]))
    close(rstd, f32([1 / np.sqrt(1e-5)] * 2), FWD_RTOL)


def test_attention_softmax_is_finite_at_magnitude_1e4(k):
    s = f32(1e4 * rng("attn-big").standard_normal((2, 5, 5)))
    y = k.attention_softmax_forward(s, 1.0)
    assert np.all(np.isfinite(y))
    close(y.sum(-1), np.ones((2, 5), np.float32), FWD_RTOL)
    assert np.all(y[:, np.triu_indices(5, 1)[0], np.triu_indices(5, 1)[1]] == 0)


def test_crossentropy_loss_stays_finite_when_the_target_probability_underflows(k):
    # p[target] = exp(-1e4) underflows to 0 in float32, yet the loss is a plain 1e4
    z = f32([[0.0, -1e4, 5.0], [-200.0, 0.0, 0.0]])
    losses, probs = k.crossentropy_forward(z, np.array([1, 0]))
    close(losses, f32([1e4 + 5 + np.log1p(np.exp(-5.0)), 200 + np.log(2.0)]), FWD_RTOL)
    assert probs[0, 1] == 0.0


# ----------------------------------------------------------------------------- layouts

def test_non_contiguous_inputs_give_the_contiguous_answer(k):
    r = rng("layout")
    views = {                                                   # three (6, 20) non-contiguous views
        "strided": f32(r.standard_normal((6, 40)))[:, ::2],
        "transposed": f32(r.standard_normal((20, 6))).T,
        "fortran": np.asfortranarray(f32(r.standard_normal((6, 20)))),
    }
    w, b = f32(r.standard_normal(40))[::2], f32(r.standard_normal(20))
    t = (np.arange(12) * 3 % 20)[::2]                           # (6,) non-contiguous targets
    same = np.testing.assert_array_equal
    for name, v in views.items():
        assert not v.flags.c_contiguous
        c = np.ascontiguousarray(v)
        cw = w.copy()
        same(k.softmax_forward(v), k.softmax_forward(c), err_msg=name)
        same(k.softmax_backward(v, v), k.softmax_backward(c, c), err_msg=name)
        for a, e in zip(k.layernorm_forward(v, w, b), k.layernorm_forward(c, cw, b)):
            same(a, e, err_msg=name)
        _, m, s = k.layernorm_forward(c, cw, b)
        m2 = np.repeat(m, 2)[::2]                                # the same values, non-contiguous
        for a, e in zip(k.layernorm_backward(v, v, w, m2, s), k.layernorm_backward(c, c, cw, m, s)):
            same(a, e, err_msg=name)
        same(k.gelu_forward(v), k.gelu_forward(c), err_msg=name)
        same(k.gelu_backward(v, v), k.gelu_backward(c, c), err_msg=name)
        sq, csq = v[:, :6], np.ascontiguousarray(v[:, :6])      # (6, 6) causal attention
        same(k.attention_softmax_forward(sq, 0.5), k.attention_softmax_forward(csq, 0.5), err_msg=name)
        same(k.attention_softmax_backward(sq, sq, 0.5), k.attention_softmax_backward(csq, csq, 0.5), err_msg=name)
        for a, e in zip(k.crossentropy_forward(v, t), k.crossentropy_forward(c, t.copy())):
            same(a, e, err_msg=name)
        same(k.crossentropy_backward(v[:, 0], v, t), k.crossentropy_backward(c[:, 0].copy(), c, t.copy()), err_msg=name)


def test_read_only_inputs_work_and_are_not_modified(k):
    r = rng("readonly")
    x, dy = f32(r.standard_normal((4, 9))), f32(r.standard_normal((4, 9)))
    w, b = f32(r.standard_normal(9)), f32(r.standard_normal(9))
    t = np.array([0, 8, 2, 2])
    _, mean, rstd = k.layernorm_forward(x, w, b)
    probs = k.softmax_forward(x)
    frozen = [x, dy, w, b, t, mean, rstd, probs]
    before = [a.copy() for a in frozen]
    for a in frozen:
        a.flags.writeable = False
    k.softmax_forward(x)
    k.softmax_backward(dy, probs)
    k.layernorm_forward(x, w, b)
    k.layernorm_backward(dy, x, w, mean, rstd)
    k.gelu_forward(x)
    k.gelu_backward(dy, x)
    k.attention_softmax_forward(x[:, :4], 0.5)
    k.attention_softmax_backward(dy[:, :4], probs[:, :4], 0.5)
    k.crossentropy_forward(x, t)
    out = k.crossentropy_backward(mean, probs, t)
    assert out.flags.writeable
    for a, e in zip(frozen, before):
        np.testing.assert_array_equal(a, e)


# ----------------------------------------------------------------------------- bad arguments

X = np.ones((3, 4), np.float32)
W = np.ones(4, np.float32)
M = np.ones(3, np.float32)
T = np.zeros(3, np.int64)
S = np.ones((2, 4, 4), np.float32)

# (kernel, args, exception, the argument the message must name)
BAD = [
    ("softmax_forward", (X.astype(np.float64),), TypeError, "x"),
    ("softmax_forward", (X.astype(np.int32),), TypeError, "x"),
    ("softmax_forward", ([[1.0, 2.0]],), TypeError, "x"),
    ("softmax_forward", (np.float32(1.0),), TypeError, "x"),
    ("softmax_forward", (np.array(1.0, np.float32),), ValueError, "x"),
    ("softmax_forward", (np.ones((0, 4), np.float32),), ValueError, "x"),
    ("softmax_forward", (np.ones((3, 0), np.float32),), ValueError, "x"),
    ("softmax_backward", (X, X[:2]), ValueError, "dy"),
    ("softmax_backward", (X.astype(np.float16), X), TypeError, "dy"),
    ("softmax_backward", (X, None), TypeError, "y"),
    ("layernorm_forward", (X, W[:3], W), ValueError, "weight"),
    ("layernorm_forward", (X, W, np.ones(5, np.float32)), ValueError, "bias"),
    ("layernorm_forward", (X, W[None], W), ValueError, "weight"),
    ("layernorm_forward", (X, W.astype(np.float64), W), TypeError, "weight"),
    ("layernorm_forward", (X, W, W, -1.0), ValueError, "eps"),
    ("layernorm_forward", (X, W, W, float("nan")), ValueError, "eps"),
    ("layernorm_forward", (X, W, W, "small"), TypeError, "eps"),
    ("layernorm_forward", (np.array(1.0, np.float32), W[:1], W[:1]), ValueError, "x"),
    ("layernorm_backward", (X, X, W, M[:2], M), ValueError, "mean"),
    ("layernorm_backward", (X, X, W, M, np.ones((3, 1), np.float32)), ValueError, "rstd"),
    ("layernorm_backward", (X, X, W, M.astype(np.float64), M), TypeError, "mean"),
    ("layernorm_backward", (X[:2], X, W, M, M), ValueError, "dy"),
    ("layernorm_backward", (X, X, W[:2], M, M), ValueError, "weight"),
    ("gelu_forward", (X.astype(np.float64),), TypeError, "x"),
    ("gelu_forward", (np.ones(0, np.float32),), ValueError, "x"),
    ("gelu_backward", (X, X.T), ValueError, "dy"),
    ("gelu_backward", (X, X.astype(np.int64)), TypeError, "x"),
    ("attention_softmax_forward", (np.ones(4, np.float32), 1.0), ValueError, "scores"),
    ("attention_softmax_forward", (np.ones((5, 4), np.float32), 1.0), ValueError, "scores"),
    ("attention_softmax_forward", (S.astype(np.float64), 1.0), TypeError, "scores"),
    ("attention_softmax_forward", (S, 0.0), ValueError, "scale"),
    ("attention_softmax_forward", (S, float("inf")), ValueError, "scale"),
    ("attention_softmax_forward", (S, None), TypeError, "scale"),
    ("attention_softmax_backward", (S, S[:1], 1.0), ValueError, "dy"),
    ("attention_softmax_backward", (S, np.ones(4, np.float32), 1.0), ValueError, "y"),
    ("attention_softmax_backward", (S, S, -2.0), ValueError, "scale"),
    ("crossentropy_forward", (X, np.array([0, 4, 1])), ValueError, "targets"),
    ("crossentropy_forward", (X, np.array([0, -1, 1])), ValueError, "targets"),
    ("crossentropy_forward", (X, T[:2]), ValueError, "targets"),
    ("crossentropy_forward", (X, T.astype(np.float32)), TypeError, "targets"),
    ("crossentropy_forward", (X, [0, 1, 2]), TypeError, "targets"),
    ("crossentropy_forward", (X.astype(np.float64), T), TypeError, "logits"),
    ("crossentropy_forward", (np.array(1.0, np.float32), np.array(0)), ValueError, "logits"),
    ("crossentropy_backward", (M, X, np.array([0, 1, 9])), ValueError, "targets"),
    ("crossentropy_backward", (M[:2], X, T), ValueError, "dlosses"),
    ("crossentropy_backward", (M.astype(np.float64), X, T), TypeError, "dlosses"),
    ("crossentropy_backward", (M, X.astype(np.float64), T), TypeError, "probs"),
]


@pytest.mark.parametrize("kernel, args, exc, name", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_arguments_raise_naming_the_argument(k, kernel, args, exc, name):
    with pytest.raises(exc) as info:
        getattr(k, kernel)(*args)
    assert str(info.value).split()[0] == name, str(info.value)  # the message starts with the name


@pytest.mark.parametrize("name", ["_kernels", "_kernels_avx2"])
def test_extension_rechecks_buffers_it_is_handed(name):
    # the compiled routines never trust their caller: wrong sizes, dtypes or read-only outputs
    # are refused before any memory is touched
    if name not in compiled_builds():
        pytest.skip(f"pythia.{name} is not built or not runnable here")
    from pythia.kernels import _loader
    ext = _loader._import(name)
    x, y = np.ones((3, 4), np.float32), np.empty((3, 4), np.float32)
    with pytest.raises(ValueError):
        ext.softmax_forward(x, y, 4, 4, 1)                       # claims more rows than x has
    with pytest.raises(ValueError):
        ext.softmax_forward(x.astype(np.float64), y, 3, 4, 1)
    ro = np.empty((3, 4), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError):
        ext.softmax_forward(x, ro, 3, 4, 1)
    with pytest.raises(ValueError):
        ext.crossentropy_backward(np.ones(3, np.float32), x, np.array([0, 1, 4]), y, 3, 4, 1)  # class id 4 >= V
    with pytest.raises(TypeError):
        ext.gelu_forward(None, y, 12, 1)
