"""Shared inputs and tolerances for the kernel tests (imported by tests/test_kernels*.py).

Builds: the compiled kernels come in up to two builds of one source, `pythia._kernels`
(baseline x86-64) and `pythia._kernels_avx2` (-mavx2 -mfma, used when the CPU has both).
`compiled_builds()` lists the ones importable here so each test runs against every build.

Tolerances (float32 kernels against the float32 NumPy reference):
- forward:  |a - e| <= 1e-5 |e| + 1e-5 max|e|
- backward: |a - e| <= 1e-4 |e| + 1e-4 max|e|
The max|e| term is an absolute floor at the scale of the output, so that entries that are
small through cancellation (a LayerNorm gradient, GELU near 0, a softmax gradient where
dy ~ sum(dy y)) are judged against the size of the numbers that produced them.
"""
from __future__ import annotations

import zlib

import numpy as np

from pythia.kernels import _loader, compiled

FWD_RTOL = 1e-5
BWD_RTOL = 1e-4

# shapes (..., C): 1 row, C = 1, odd C, 768 and 3072 wide, 0 to 4 leading dims, and sizes
# large enough (>= 32768 elements) for the kernels to run on several threads
ROW_SHAPES = [
    (1,), (7,), (1, 1), (1, 33), (3, 1), (5, 7), (4, 33), (3, 65), (2, 129), (4, 768), (2, 3072),
    (2, 3, 65), (2, 2, 3, 33), (2, 1, 2, 3, 7), (768, 128), (64, 768), (12, 3072),
]
# attention (..., Tq, Tk), Tq <= Tk: a single query against a cache, square causal, Tq < Tk
ATTN_SHAPES = [
    (1, 1), (1, 7), (5, 5), (3, 9), (2, 33, 33), (2, 3, 17, 65), (2, 1, 2, 4, 9), (12, 4, 64, 64),
]
# cross-entropy logits (..., V)
CE_SHAPES = [(1,), (7,), (1, 65), (5, 1), (9, 65), (2, 3, 129), (2, 1, 2, 3, 7), (4, 3072), (768, 65)]


def close(actual: np.ndarray, expected: np.ndarray, rtol: float, what: str = "", scale: float = 0.0) -> None:
    """Assert |actual - expected| <= rtol |expected| + rtol max(max|expected|, scale).

    `scale` is the size of the terms an output is computed from, for outputs that are exactly
    0 by cancellation (LayerNorm's dx when C = 1: rstd (g - mean(g)) with g = mean(g)).
    """
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert actual.dtype == np.float32, (what, actual.dtype)
    scale = max(float(np.max(np.abs(expected))) if expected.size else 0.0, scale)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=what)


def rng(*key: object) -> np.random.Generator:
    """A generator seeded by the test's parameters (crc32: stable across processes)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def f32(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def compiled_builds() -> list[str]:
    """Names of the compiled builds importable here and runnable on this CPU."""
    base = _loader._import("_kernels")
    if base is None:
        return []
    names = ["_kernels"]
    if base.cpu_has_avx2_fma() and _loader._import("_kernels_avx2") is not None:
        names.append("_kernels_avx2")
    return names


class bound_build:
    """Context manager: route pythia.kernels.compiled to one build, restore the previous one."""

    def __init__(self, name: str):
        self.ext = _loader._import(name)

    def __enter__(self):
        self.prev = compiled._ext
        compiled.bind(self.ext)
        return compiled

    def __exit__(self, *exc):
        if self.prev is not None:
            compiled.bind(self.prev)
        return False
