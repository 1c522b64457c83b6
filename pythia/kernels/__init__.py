"""The active kernel backend: compiled Cython kernels, or the NumPy reference twin.

    from pythia import kernels
    kernels.BACKEND            # "cython" or "numpy"
    kernels.softmax_forward(x) # same names and semantics in both backends
    kernels.reference          # the NumPy specification, always available

Selection: `PYTHIA_KERNELS=numpy` (or `use("numpy")`, which the `--kernels` flag calls) forces
the reference. Otherwise the compiled extension `pythia._kernels` is used. When this package is
imported from a source checkout that shadows an installed copy (running `python -m pythia` from
the repository root after `pip install .`), the installed copy's compiled extension is loaded
from site-packages. If no compiled extension exists at all, the NumPy fallback is used and
FALLBACK_REASON says why and how to build; the CLI prints it.
"""
from __future__ import annotations

import os

from . import reference
from ._loader import isa_wanted, load_compiled

NAMES = (
    "softmax_forward", "softmax_backward",
    "layernorm_forward", "layernorm_backward",
    "gelu_forward", "gelu_backward",
    "attention_softmax_forward", "attention_softmax_backward",
    "crossentropy_forward", "crossentropy_backward",
    "adamw_update",
)

BACKEND: str = "numpy"
FALLBACK_REASON: str | None = None  # set when the compiled kernels were wanted but not found


def use(name: str) -> str:
    """Switch the active backend to "cython" or "numpy"; returns the backend now active.

    Asking for "cython" when it is not built raises RuntimeError with the build command.
    """
    global BACKEND, FALLBACK_REASON
    if name not in ("cython", "numpy"):
        raise ValueError(f"unknown kernel backend {name!r}; choose 'cython' or 'numpy'")
    if name == "numpy":
        impl, BACKEND = reference, "numpy"
    else:
        impl, reason = load_compiled()
        if impl is None:
            raise RuntimeError(reason)
        BACKEND, FALLBACK_REASON = "cython", None
    for n in NAMES:
        globals()[n] = getattr(impl, n)
    _bind_llama(BACKEND)
    return BACKEND


def set_thread_limit(n: int) -> int:
    """Threads the compiled kernels use for every call made afterwards, from any thread of the
    process (n < 1 counts as 1); returns the previous limit. Results do not depend on it.
    A caller running kernels on several threads at once sets 1 first. The NumPy reference: 1."""
    if BACKEND != "cython":
        return 1
    from . import compiled
    return compiled.set_thread_limit(n)


def set_pool_threads(n: int | None) -> int | None:
    """Threads of the decode products' pools (kernels.matvec and kernels.vecmat, and the int8
    product's default) from now on; None: every core OpenMP allows. Returns the previous setting.
    Unlike set_thread_limit, the thread rule of a decode step leaves it alone (the pools cost
    nothing to a busy machine but their share); a process given part of the cores sets it."""
    from . import llama_compiled
    return llama_compiled.set_pool_threads(n)


def _select_default() -> None:
    global FALLBACK_REASON
    wanted = os.environ.get("PYTHIA_KERNELS", "").strip().lower() or "cython"
    if wanted not in ("cython", "numpy"):
        raise ValueError(f"PYTHIA_KERNELS={wanted!r} is not a backend; use 'cython' or 'numpy'")
    isa_wanted()                                 # PYTHIA_KERNELS_ISA too, whichever backend is chosen
    if wanted == "numpy":
        use("numpy")
        return
    try:
        use("cython")
    except RuntimeError as err:
        use("numpy")
        FALLBACK_REASON = str(err)


# ----------------------------------------------------------------------------- Llama-family kernels
# RMSNorm, rotary embedding, SwiGLU and x W^T and x W for a few rows follow the backend chosen above;
# their extension (pythia._llama_kernels) is found as the main one is. When the main backend is compiled but this
# extension is not built or is stale, these names use their NumPy twins and LLAMA_FALLBACK_REASON
# says why and how to build.
from . import reference_llama  # noqa: E402

LLAMA_NAMES = ("rmsnorm_forward", "rmsnorm_backward", "rope_forward", "rope_backward",
               "swiglu_forward", "swiglu_backward", "matvec", "vecmat")
LLAMA_FALLBACK_REASON: str | None = None
rope_tables = reference_llama.rope_tables


def _bind_llama(backend: str) -> None:
    global LLAMA_FALLBACK_REASON
    impl, LLAMA_FALLBACK_REASON = reference_llama, None
    if backend == "cython":
        from . import _loader, llama_compiled
        try:
            ext = _loader._import("_llama_kernels")
        except ImportError as err:
            ext, LLAMA_FALLBACK_REASON = None, f"Llama kernels failed to load ({err}); {_loader.BUILD_HINT}"
        if ext is not None and getattr(ext, "API_VERSION", None) != llama_compiled.API_VERSION:
            ext, LLAMA_FALLBACK_REASON = None, f"Llama kernels are stale; {_loader.BUILD_HINT}"
        elif ext is None and LLAMA_FALLBACK_REASON is None:
            LLAMA_FALLBACK_REASON = f"Llama kernels are not built; {_loader.BUILD_HINT}"
        if ext is not None:
            llama_compiled.bind(ext)
            impl = llama_compiled
    for n in LLAMA_NAMES:
        globals()[n] = getattr(impl, n)


_select_default()
