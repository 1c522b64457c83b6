"""Q8_0 int8 weights: the format's error bound, the compiled kernel against its NumPy twin
(integer block sums exactly, float products bit for bit and within a stated bound), bad input,
and exact storage round trips.

Float tolerance of the kernel against the twin: both compute y = sum_b s_b (xd_b wd_b) + bias
in float32 in block order, so they agree bit for bit on this build (-ffp-contract=off); the test
allows |a - e| <= nb * 2**-23 * sum_b |s_b xd_b wd_b| (a different summation order's bound), so it
also holds for a compiler that reorders. Quantization error against float x @ W^T is checked
against its own bound (each factor off by at most half its block's scale).
"""
from __future__ import annotations

import importlib
import os

import numpy as np
import pytest

from pythia import quant
from pythia.quant import compiled, reference

QK = quant.QK


def _builds():
    out = []
    for name in ("_quant", "_quant_avx2", "_quant_vnni"):
        try:
            ext = importlib.import_module(f"pythia.{name}")
        except ImportError:
            continue
        if name.endswith("avx2") and not ext.cpu_has_avx2():
            continue
        if name.endswith("vnni") and not ext.cpu_has_avx512vnni():
            continue                                 # built, but this CPU cannot run it
        out.append(ext)
    return out


BUILDS = _builds()


@pytest.fixture(params=BUILDS or [None], ids=lambda e: getattr(e, "ISA", "not built"))
def cy(request):
    """pythia.quant.compiled bound to one build of the extension."""
    if request.param is None:
        pytest.skip("compiled int8 kernels are not built (python setup.py build_ext --inplace)")
    before = compiled._ext
    compiled.bind(request.param)
    yield compiled
    if before is not None:
        compiled.bind(before)


def rand(*shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


# ----------------------------------------------------------------------------- the format

def assert_block_bound(w, q, d):
    # |w - q d| <= d / 2 per block, up to one float32 rounding of w / d (<= 127 * 2**-24 d)
    wb = w.reshape(*w.shape[:-1], -1, QK).astype(np.float64)
    err = np.abs(wb - q.reshape(wb.shape).astype(np.float64) * d[..., None].astype(np.float64))
    assert (err <= d[..., None] * (0.5 + 2.0 ** -16)).all()


def test_quantize_dequantize_error_is_at_most_half_a_step_per_block():
    w = rand(64, 256, seed=1) * np.exp(rand(64, 1, seed=2) * 3)        # rows of very different sizes
    q, d = quant.quantize_q8_0(w)
    assert q.dtype == np.int8 and d.dtype == np.float32 and q.shape == w.shape and d.shape == (64, 8)
    assert_block_bound(w, q, d)
    assert np.abs(q).max() == 127                                       # the largest maps to +-127
    np.testing.assert_array_equal(quant.dequantize_q8_0(q, d),
                                  (q.reshape(64, 8, QK) * d[..., None]).reshape(64, 256))


def test_adversarial_blocks_zeros_one_huge_value_and_tiny_values():
    w = np.zeros((4, 64), np.float32)
    w[1, 3] = 3e38                                 # one huge value: the rest of its block rounds to 0
    w[1, 4:32] = 1.0
    w[2, :32] = 1e-38                              # subnormal-scale block: flushed to q = 0, d = 0
    w[3, 32:] = -np.linspace(0, 5, 32, dtype=np.float32)
    q, d = quant.quantize_q8_0(w)
    assert (q[0] == 0).all() and (d[0] == 0).all()                     # all zeros stay exactly zero
    assert q[1, 3] == 127 and (q[1, 4:32] == 0).all()
    assert (q[2] == 0).all() and d[2, 0] == 0
    assert q[3, 63] == -127 and d[3, 1] == np.float32(5) / np.float32(127)
    assert_block_bound(w[[0, 1, 3]], q[[0, 1, 3]], d[[0, 1, 3]])
    assert np.abs(w[2]).max() < 127 * np.finfo(np.float32).tiny       # what the flush may lose


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused_with_one_line(bad):
    w = rand(2, 64)
    w[1, 40] = bad
    with pytest.raises(ValueError, match=r"holds NaN or inf \(first at index \(1, 40\)\)") as e:
        quant.quantize_q8_0(w)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("cols", [33, 20, 0])
def test_size_not_a_multiple_of_32_is_refused_naming_it(cols):
    with pytest.raises(ValueError, match=rf"w has {cols} values along its input dimension.*multiple of 32"
                       if cols else "non-empty"):
        quant.quantize_q8_0(np.ones((3, cols), np.float32))


def test_quantized_weights_round_trip_through_npz_exactly(tmp_path):
    lin = quant.QuantLinear.from_in_out(rand(96, 40, seed=3), rand(40, seed=4))
    np.savez(tmp_path / "q.npz", **lin.arrays("h.0.mlp.c_fc"))
    with np.load(tmp_path / "q.npz", allow_pickle=False) as z:
        back = quant.QuantLinear.from_arrays(z, "h.0.mlp.c_fc")
    for a, b in ((lin.q, back.q), (lin.scales, back.scales), (lin.bias, back.bias)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    x = rand(3, 96, seed=5)
    np.testing.assert_array_equal(lin.apply(x), back.apply(x))


def test_a_model_of_quantized_layers_round_trips_through_one_npz(tmp_path):
    layers = {"wte": quant.QuantLinear.from_out_in(rand(50, 64, seed=20)),
              "h.0.attn.c_attn": quant.QuantLinear.from_in_out(rand(64, 96, seed=21), rand(96, seed=22))}
    np.savez(tmp_path / "m.npz", **quant.pack(layers), **{"wpe": rand(8, 64)})
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
        back = quant.unpack(z)
    assert sorted(back) == sorted(layers) and back["wte"].bias is None
    for name, layer in layers.items():
        for a, b in zip(layer.arrays(name).values(), back[name].arrays(name).values()):
            np.testing.assert_array_equal(a, b)


def test_corrupt_stored_weights_give_one_line():
    arrays = quant.QuantLinear.from_out_in(rand(8, 64)).arrays("w")
    with pytest.raises(ValueError, match="'w' lacks 'w.scales'"):
        quant.QuantLinear.from_arrays({"w.q": arrays["w.q"]}, "w")
    for broken in ({"w.q": arrays["w.q"], "w.scales": arrays["w.scales"][:, :1]},
                   {"w.q": arrays["w.q"].astype(np.int16), "w.scales": arrays["w.scales"]},
                   {"w.q": arrays["w.q"], "w.scales": np.full_like(arrays["w.scales"], np.nan)}):
        with pytest.raises(ValueError, match="'w' is malformed") as e:
            quant.QuantLinear.from_arrays(broken, "w")
        assert "\n" not in str(e.value)


def test_quant_linear_matches_the_float_layer_within_the_quantization_bound():
    w, b, x = rand(128, 72, seed=6, scale=0.05), rand(72, seed=7), rand(5, 128, seed=8)
    lin = quant.QuantLinear.from_in_out(w, b)
    assert lin.shape == (72, 128)
    y = lin.apply(x)
    # |x w - xq wq| <= sum_k |x||dw| + |dx||w| + |dx||dw| with |dx| <= xd/2, |dw| <= wd/2
    xd = np.repeat(np.abs(x).reshape(5, 4, QK).max(-1) / 127, QK, axis=1)      # (5, 128)
    wd = np.repeat(lin.scales, QK, axis=1).T                                    # (128, 72)
    bound = np.abs(x) @ (wd / 2) + (xd / 2) @ np.abs(w) + (xd / 2) @ (wd / 2)
    assert (np.abs(y - (x @ w + b)) <= bound * 1.001 + 1e-6).all()
    np.testing.assert_array_equal(lin.take(np.array([[3, 0]])), lin.dequantize()[[[3, 0]]])


# ----------------------------------------------------------------------------- compiled kernel == twin

# sizes: GPT-2's c_fc; odd row and block counts; blocks fewer than, equal to and past a multiple
# of the SIMD builds' 8-block step (nb 1, 2, 3, 8, 9, 18, 24); rows fewer than and past a tile
@pytest.mark.parametrize("N,O,C", [(1, 3072, 768), (17, 77, 96), (1, 1, 32), (3, 5, 64), (2, 13, 256),
                                   (1, 9, 288), (5, 19, 576)])
def test_compiled_kernel_equals_the_twin(cy, N, O, C):
    q, d = quant.quantize_q8_0(rand(O, C, seed=N + O))
    bias, x = rand(O, seed=9), rand(N, C, seed=10, scale=3.0)
    s_c, s_r = cy.q8_block_sums(x, q, d), reference.q8_block_sums(x, q, d)
    assert s_c.dtype == np.int32
    np.testing.assert_array_equal(s_c, s_r)                             # integer arithmetic: exact
    y_c, y_r = cy.q8_matmul(x, q, d, bias, threads=2), reference.q8_matmul(x, q, d, bias)
    _, xd, _ = cy.quantize_activations(x)
    terms = np.abs(s_r * (xd[:, None, :] * d[None, :, :]))              # (N, O, nb)
    assert (np.abs(y_c - y_r) <= C // QK * 2.0 ** -23 * terms.sum(-1)).all()
    np.testing.assert_array_equal(y_c, y_r)                             # and bit for bit here
    np.testing.assert_array_equal(cy.q8_matmul(x, q, d, None, threads=1),
                                  reference.q8_matmul(x, q, d, None))
    # the decode path for validated weights (QuantLinear.apply): the same bits, in one call
    np.testing.assert_array_equal(cy.q8_apply(x, q, d, bias, 2), y_r)


def test_the_one_call_kernel_checks_sizes_and_types_before_reading(cy):
    q, d = quant.quantize_q8_0(rand(4, 64))
    x, y = rand(2, 64), np.empty((2, 4), np.float32)
    ext = cy._ext
    with pytest.raises(ValueError, match="C a positive multiple of 32"):
        ext.q8_linear(x, q, d, None, y, 2, 4, 48, 1)
    with pytest.raises(ValueError, match="N, O >= 1"):
        ext.q8_linear(x, q, d, None, y, 0, 4, 64, 1)
    with pytest.raises(ValueError, match="of 256 elements"):                  # q shorter than O x C
        ext.q8_linear(x, q[:3], d, None, y, 2, 4, 64, 1)
    with pytest.raises(ValueError, match="of 4 elements"):
        ext.q8_linear(x, q, d, np.ones(3, np.float32), y, 2, 4, 64, 1)
    with pytest.raises(ValueError, match="of 128 elements"):                  # x float64
        ext.q8_linear(x.astype(np.float64), q, d, None, y, 2, 4, 64, 1)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        ext.q8_linear(x, q, d, None, y, 2, 4, 64, 0)
    y.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        ext.q8_linear(x, q, d, None, y, 2, 4, 64, 1)
    # q8_apply hands anything but a C-contiguous float32 (N, C) to q8_matmul's checks
    expect = reference.q8_matmul(x, q, d)
    np.testing.assert_array_equal(cy.q8_apply(np.asfortranarray(x), q, d, None, 1), expect)
    with pytest.raises(TypeError):
        cy.q8_apply(x.astype(np.float16).astype(object), q, d, None, 1)


def test_compiled_activation_quantization_equals_the_twin(cy):
    x = rand(9, 128, seed=11) * np.exp(rand(9, 1, seed=12) * 4)
    x[0, :32] = 0
    x[1, 5] = 1e-39                                                      # subnormal input
    xq, xd, bad = cy.quantize_activations(x)
    q, d = quant.quantize_q8_0(x)
    np.testing.assert_array_equal(xq, q)
    np.testing.assert_array_equal(xd, d)
    assert not bad.any()


def test_rows_holding_nan_or_inf_give_nan_rows_in_both_backends(cy):
    q, d = quant.quantize_q8_0(rand(6, 64))
    x = rand(3, 64, seed=13)
    x[1, 7] = np.inf
    for impl in (cy, reference):
        y = impl.q8_matmul(x, q, d)
        assert np.isnan(y[1]).all() and np.isfinite(y[[0, 2]]).all()
    np.testing.assert_array_equal(cy.q8_block_sums(x, q, d), reference.q8_block_sums(x, q, d))


def test_non_contiguous_read_only_and_leading_shapes_give_the_same_answer(cy):
    q, d = quant.quantize_q8_0(rand(40, 64, seed=14))
    x = rand(2, 3, 128, seed=15)[..., ::2]                              # (2, 3, 64), strided
    expect = reference.q8_matmul(np.ascontiguousarray(x), q, d)
    assert expect.shape == (2, 3, 40)
    q_ro, d_ro = q.copy(), d.copy()
    q_ro.flags.writeable = d_ro.flags.writeable = False
    np.testing.assert_array_equal(cy.q8_matmul(x, q_ro, d_ro, threads=2), expect)
    q_f = np.asfortranarray(q)                                          # a column-major weight
    np.testing.assert_array_equal(cy.q8_matmul(x, q_f, d), expect)


def test_concurrent_callers_and_a_forked_child_get_the_twins_answer(cy):
    """The kernel's thread pool serves one caller at a time (others run alone) and a forked child
    starts without the parent's workers: every caller gets the twin's exact answer, none hangs."""
    import os
    import time
    from concurrent.futures import ThreadPoolExecutor
    q, d = quant.quantize_q8_0(rand(300, 256, seed=21))
    x = rand(3, 256, seed=22)
    want = reference.q8_matmul(x, q, d)
    with ThreadPoolExecutor(4) as ex:                                  # the GIL is released inside
        outs = list(ex.map(lambda i: cy.q8_matmul(x, q, d, threads=1 + i % 3), range(60)))
    for y in outs:
        np.testing.assert_array_equal(y, want)
    if not hasattr(os, "fork"):
        return
    pid = os.fork()
    if pid == 0:                                                        # the child: exit 0 when right
        os._exit(0 if all(np.array_equal(cy.q8_matmul(x, q, d, threads=2), want) for _ in range(20)) else 1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("a forked child's int8 product did not finish in 60 s")


@pytest.mark.parametrize("impl", ["cython", "numpy"])
def test_bad_dtypes_shapes_and_threads_raise_naming_the_argument(impl):
    if impl == "cython" and not BUILDS:
        pytest.skip("compiled int8 kernels are not built")
    f = (compiled if impl == "cython" else reference).q8_matmul
    q, d = quant.quantize_q8_0(rand(4, 64))
    x = rand(2, 64)
    cases = [((x.astype(np.float64), q, d), TypeError, "x must be float32"),
             ((x, q.astype(np.int16), d), TypeError, "q must be a numpy.ndarray of int8"),
             ((x, q, d.astype(np.float64)), TypeError, "scales must be"),
             ((x[:, :32], q, d), ValueError, "x has 32 values in its last axis but q has 64"),
             ((x, q, d[:, :1]), ValueError, r"scales must have shape \(4, 2\)"),
             ((x, q, d, rand(3)), ValueError, r"bias must have shape \(4,\)"),
             ((x, q, d, rand(4).astype(np.int32)), TypeError, "bias must be"),
             (([[1.0] * 64], q, d), TypeError, "x must be a numpy.ndarray")]
    for args, err, msg in cases:
        with pytest.raises(err, match=msg):
            f(*args)
    with pytest.raises(ValueError, match="threads must be an integer >= 1"):
        f(x, q, d, threads=0)


def test_import_binds_the_widest_build_the_cpu_reports():
    if quant.BACKEND != "cython":
        pytest.skip("compiled int8 kernels are not built")
    base = pytest.importorskip("pythia._quant")
    want = ("avx512vnni" if base.cpu_has_avx512vnni() and any(e.ISA == "avx512vnni" for e in BUILDS) else
            "avx2" if base.cpu_has_avx2() and any(e.ISA == "avx2" for e in BUILDS) else "baseline")
    if os.environ.get("PYTHIA_KERNELS_ISA", "").strip().lower() == "baseline":
        want = "baseline"                                                # the user asked for it
    assert compiled.ISA == want
    assert not base.cpu_has_avx512vnni() or base.cpu_has_avx2()          # the VNNI build also needs AVX2


def test_environment_variable_forces_the_numpy_twin():
    import subprocess
    import sys
    code = "from pythia import quant; print(quant.BACKEND, quant.q8_matmul.__module__)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "PYTHIA_KERNELS": "numpy"})
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["numpy", "pythia.quant.reference"]
