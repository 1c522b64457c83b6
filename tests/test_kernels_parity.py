"""Compiled kernels agree with the NumPy reference (the specification) over many shapes.

Every compiled build importable here (baseline and, on AVX2/FMA CPUs, the AVX2 build) is
compared against `pythia.kernels.reference`, whichever backend PYTHIA_KERNELS selects for the
rest of the suite. Tolerances: see tests/kernel_cases.py (1e-5 forward, 1e-4 backward,
relative to each element plus the same fraction of the output's largest element).
"""
from __future__ import annotations

import numpy as np
import pytest
from kernel_cases import (ATTN_SHAPES, BWD_RTOL, CE_SHAPES, FWD_RTOL, ROW_SHAPES, bound_build, close,
                          compiled_builds, f32, rng)

from pythia.kernels import reference as ref

BUILDS = compiled_builds()


@pytest.fixture(params=BUILDS or ["not built"])
def cy(request):
    """pythia.kernels.compiled bound to one build; skipped only when no build exists."""
    if not BUILDS:
        pytest.skip("compiled kernels are not built (pip install -e . builds them)")
    with bound_build(request.param) as mod:
        yield mod


@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_softmax_matches_reference(cy, shape):
    r = rng("softmax", shape)
    x = f32(3 * r.standard_normal(shape))
    y = cy.softmax_forward(x)
    close(y, ref.softmax_forward(x), FWD_RTOL, "y")
    dy = f32(r.standard_normal(shape))
    close(cy.softmax_backward(dy, y), ref.softmax_backward(dy, y), BWD_RTOL, "dx")


@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_layernorm_matches_reference(cy, shape):
    r = rng("layernorm", shape)
    C = shape[-1]
    x = f32(2 * r.standard_normal(shape) + 0.5)
    w, b = f32(1 + 0.3 * r.standard_normal(C)), f32(0.3 * r.standard_normal(C))
    y, mean, rstd = cy.layernorm_forward(x, w, b)
    ey, emean, erstd = ref.layernorm_forward(x, w, b)
    close(y, ey, FWD_RTOL, "y")
    close(mean, emean, FWD_RTOL, "mean")
    close(rstd, erstd, FWD_RTOL, "rstd")
    dy = f32(r.standard_normal(shape))
    g_scale = float(np.max(rstd) * np.max(np.abs(dy * w)))             # size of rstd * dy * w
    for name, a, e in zip(("dx", "dweight", "dbias"), cy.layernorm_backward(dy, x, w, mean, rstd),
                          ref.layernorm_backward(dy, x, w, mean, rstd)):
        close(a, e, BWD_RTOL, name, scale=g_scale if name == "dx" else 0.0)


@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_gelu_matches_reference(cy, shape):
    r = rng("gelu", shape)
    x = f32(3 * r.standard_normal(shape))
    close(cy.gelu_forward(x), ref.gelu_forward(x), FWD_RTOL, "y")
    dy = f32(r.standard_normal(shape))
    close(cy.gelu_backward(dy, x), ref.gelu_backward(dy, x), BWD_RTOL, "dx")


def test_gelu_matches_reference_over_its_whole_range(cy):
    # every regime of the tanh approximation and of our exp: saturated, transition, near 0
    x = f32(np.linspace(-12, 12, 100_003))
    close(cy.gelu_forward(x), ref.gelu_forward(x), FWD_RTOL, "y")
    dy = np.ones_like(x)
    close(cy.gelu_backward(dy, x), ref.gelu_backward(dy, x), BWD_RTOL, "dx")


@pytest.mark.parametrize("shape", ATTN_SHAPES)
@pytest.mark.parametrize("scale", [0.125, 1.0])
def test_attention_softmax_matches_reference(cy, shape, scale):
    r = rng("attention", shape, scale)
    s = f32(3 * r.standard_normal(shape))
    y = cy.attention_softmax_forward(s, scale)
    close(y, ref.attention_softmax_forward(s, scale), FWD_RTOL, "probs")
    dy = f32(r.standard_normal(shape))
    close(cy.attention_softmax_backward(dy, y, scale), ref.attention_softmax_backward(dy, y, scale),
          BWD_RTOL, "dscores")


@pytest.mark.parametrize("shape", CE_SHAPES)
def test_crossentropy_matches_reference(cy, shape):
    r = rng("crossentropy", shape)
    z = f32(2 * r.standard_normal(shape))
    t = r.integers(0, shape[-1], shape[:-1])
    losses, probs = cy.crossentropy_forward(z, t)
    elosses, eprobs = ref.crossentropy_forward(z, t)
    close(losses, elosses, FWD_RTOL, "losses")
    close(probs, eprobs, FWD_RTOL, "probs")
    dl = f32(r.standard_normal(shape[:-1]))
    close(cy.crossentropy_backward(dl, probs, t), ref.crossentropy_backward(dl, probs, t), BWD_RTOL, "dlogits")


@pytest.mark.parametrize("shape", CE_SHAPES)
@pytest.mark.parametrize("dloss", [0.125, -0.0, float("nan")], ids=["mean", "minus-zero", "nan"])
def test_crossentropy_backward_with_one_dloss_for_every_row(cy, shape, dloss):
    # a mean loss gives every row the same dloss, which the compiled kernel takes as one flat
    # scaled copy; it must give the reference's answer, and a row whose dloss differs (the last
    # one here) must get its own
    r = rng("crossentropy-uniform", shape)
    t = r.integers(0, shape[-1], shape[:-1])
    _, probs = ref.crossentropy_forward(f32(2 * r.standard_normal(shape)), t)
    dl = np.full(shape[:-1], dloss, np.float32)
    close(cy.crossentropy_backward(dl, probs, t), ref.crossentropy_backward(dl, probs, t), BWD_RTOL, "dlogits")
    if dl.size > 1 and dloss == dloss:
        dl.reshape(-1)[-1] = 2 * dloss + 1
        close(cy.crossentropy_backward(dl, probs, t), ref.crossentropy_backward(dl, probs, t), BWD_RTOL, "dlogits")


def test_crossentropy_accepts_any_integer_targets(cy):
    z = f32(rng("ce-int").standard_normal((6, 9)))
    t = np.array([0, 8, 3, 3, 1, 7])
    for dtype in (np.int8, np.uint8, np.int32, np.int64, np.uint64):
        close(cy.crossentropy_forward(z, t.astype(dtype))[0], ref.crossentropy_forward(z, t)[0], FWD_RTOL, str(dtype))


def test_compiled_exp_is_accurate_across_the_float32_range(cy):
    # softmax of [x, 0] is [sigmoid(x), sigmoid(-x)], which puts exp(-|x|) in the output:
    # check it against float64 for x from 0 to past the float32 underflow (~ -103)
    x = np.linspace(0, 110, 40_001)
    pairs = f32(np.stack([-x, np.zeros_like(x)], axis=-1))             # (n, 2)
    y = cy.softmax_forward(pairs)[:, 0]                                # exp(-x) / (exp(-x) + 1)
    expected = 1 / (1 + np.exp(-pairs[:, 0].astype(np.float64)))      # sigmoid(-x) in float64
    normal = expected > np.finfo(np.float32).tiny
    np.testing.assert_allclose(y[normal], expected[normal], rtol=1e-6)
    assert np.all(np.abs(y[~normal]) <= 2 * np.finfo(np.float32).tiny)  # underflow: 0 or subnormal
