"""Which kernel backend a command runs on: the --kernels flag and the PYTHIA_KERNELS variables."""
from __future__ import annotations

import os

from ..errors import ConfigError


def add_kernel_flag(g) -> None:
    g.add_argument("--kernels", choices=("cython", "numpy"), default=None,
                   help="kernel backend (default: compiled Cython when built, else NumPy; "
                        "the PYTHIA_KERNELS environment variable sets it too)")


def check_kernel_env() -> None:
    """PYTHIA_KERNELS and PYTHIA_KERNELS_ISA are read when the kernels load; a bad value is the
    user's, so say so plainly (checked here without importing the kernels, which would raise)."""
    wanted = os.environ.get("PYTHIA_KERNELS", "").strip().lower()
    if wanted not in ("", "cython", "numpy"):
        raise ConfigError(f"PYTHIA_KERNELS={wanted!r} is not a kernel backend; set it to 'cython' or "
                          f"'numpy', or unset it")
    isa = os.environ.get("PYTHIA_KERNELS_ISA", "").strip().lower()   # as kernels._loader.isa_wanted reads it
    if isa not in ("", "baseline"):
        raise ConfigError(f"PYTHIA_KERNELS_ISA={isa!r} is not a kernel build; set it to 'baseline' (the build "
                          f"for any x86-64 CPU) or unset it (the AVX2 build when the CPU has AVX2 and FMA)")


def select_kernels(choice: str | None) -> None:
    """Apply --kernels; asking for compiled kernels that are not built is an error, not a fallback."""
    from .. import kernels, quant
    if choice:
        try:
            kernels.use(choice)
            quant.use(choice)                    # the int8 kernels follow the same choice
        except RuntimeError as e:
            raise ConfigError(f"--kernels {choice} is not available: {e}; or use --kernels numpy") from None


def kernel_status(choice: str | None) -> tuple[str, str | None]:
    """The active backend, and why it is NumPy when compiled kernels were wanted but missing
    (nothing to explain when the user asked for NumPy)."""
    from .. import kernels
    return kernels.BACKEND, (None if choice == "numpy" else kernels.FALLBACK_REASON)
