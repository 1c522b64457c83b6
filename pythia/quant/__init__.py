"""Q8_0 int8 weights: blocks of 32 int8 values along the input dimension, one float32 scale
each; activations quantized per block at run time; int32 dot products, then scaled.

    from pythia import quant
    q, scales = quant.quantize_q8_0(w)          # w (O, C), C the input dimension, C % 32 == 0
    w2 = quant.dequantize_q8_0(q, scales)       # |w - w2| <= scale / 2 per block
    y = quant.q8_matmul(x, q, scales, bias, threads=2)   # x (..., C) -> (..., O) = x W^T + bias
    lin = quant.QuantLinear.from_in_out(w_in_out, bias)  # GPT-2's (in, out) layout; lin.apply(x)
    np.savez(f, **quant.pack({"h.0.mlp.c_fc": lin}))      # quant.unpack(np.load(f)) reads it back
    quant.BACKEND                               # "cython" or "numpy"

reference.py is the specification (and the NumPy backend); compiled.py runs `pythia._quant`
(or `pythia._quant_avx2` on a CPU with AVX2, `pythia._quant_vnni` on one with AVX-512 VNNI). `PYTHIA_KERNELS=numpy` or `use("numpy")` picks
the reference, as for pythia.kernels; `PYTHIA_KERNELS_ISA=baseline` the baseline build.
"""
from __future__ import annotations

import os

from . import reference
from ._check import QK
from .reference import dequantize_q8_0, quantize_q8_0

NAMES = ("q8_matmul", "q8_block_sums", "q8_apply")
BACKEND: str = "numpy"
FALLBACK_REASON: str | None = None


def _load_compiled():
    """(compiled module, None) or (None, why the NumPy reference is used)."""
    from ..kernels._loader import BUILD_HINT, _import, _quiet_openmp_threads, isa_wanted
    from . import compiled
    wanted = isa_wanted()
    # Loading the extension loads libgomp, which reads its wait policy once: set the float
    # kernels' bounded spin (GOMP_SPINCOUNT, unless the user set a policy) first, whichever
    # package loads first. The int8 product itself runs on its own pool (kernels/_pool.h), whose
    # workers spin 0.5 ms after a product, then sleep. OMP_WAIT_POLICY=PASSIVE is not set: int8
    # generate on 2 threads, 5 interleaved runs at load average 3.3-4.4, decoded at a median 53
    # tok/s with the bounded spin, 57 with PASSIVE (within the runs' spread) and 37 with ACTIVE
    # (spinning threads hold the cores the busy thread needs).
    _quiet_openmp_threads()
    try:
        ext = _import("_quant")
    except ImportError as err:
        return None, f"compiled int8 kernels failed to load ({err}); {BUILD_HINT}"
    if ext is None:
        return None, f"compiled int8 kernels are not built; {BUILD_HINT}"
    if getattr(ext, "API_VERSION", None) != compiled.API_VERSION:
        return None, f"compiled int8 kernels are stale (API {getattr(ext, 'API_VERSION', '?')}); {BUILD_HINT}"
    # the widest build this CPU runs and this checkout has: a build not made here (its compiler
    # refused the flags) or stale is passed over for the next one down
    builds = [("_quant_vnni", ext.cpu_has_avx512vnni()), ("_quant_avx2", ext.cpu_has_avx2())]
    for name, runs in builds if wanted != "baseline" else ():
        try:
            simd = _import(name) if runs else None
        except ImportError:
            simd = None
        if simd is not None and getattr(simd, "API_VERSION", None) == compiled.API_VERSION:
            ext = simd
            break
    compiled.bind(ext)
    return compiled, None


def use(name: str) -> str:
    """Switch to the "cython" or "numpy" backend; returns the one now active. Asking for
    "cython" when it is not built raises RuntimeError with the build command."""
    global BACKEND, FALLBACK_REASON
    if name not in ("cython", "numpy"):
        raise ValueError(f"unknown kernel backend {name!r}; choose 'cython' or 'numpy'")
    impl = reference
    if name == "cython":
        impl, reason = _load_compiled()
        if impl is None:
            raise RuntimeError(reason)
        FALLBACK_REASON = None
    BACKEND = name
    for n in NAMES:
        globals()[n] = getattr(impl, n)
    return BACKEND


def default_threads() -> int:
    """What `threads=None` means: OpenMP's thread limit when the compiled backend is active, at
    most the decode pools' setting (pythia.kernels.set_pool_threads)."""
    from ..kernels import llama_compiled
    from . import compiled
    if BACKEND != "cython":
        return 1
    n = compiled._ext.max_threads()
    return n if llama_compiled.POOL_THREADS is None else min(n, llama_compiled.POOL_THREADS)


def _select_default() -> None:
    global FALLBACK_REASON
    wanted = os.environ.get("PYTHIA_KERNELS", "").strip().lower() or "cython"
    if wanted not in ("cython", "numpy"):
        raise ValueError(f"PYTHIA_KERNELS={wanted!r} is not a backend; use 'cython' or 'numpy'")
    try:
        use(wanted)
    except RuntimeError as err:
        use("numpy")
        FALLBACK_REASON = str(err)


_select_default()

from .linear import QuantLinear, pack, unpack  # noqa: E402  (it calls the backend chosen above)

__all__ = ["QK", "quantize_q8_0", "dequantize_q8_0", "q8_matmul", "q8_block_sums", "QuantLinear", "pack", "unpack",
           "use", "BACKEND", "default_threads"]
