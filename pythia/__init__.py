"""Pythia: a GPT written in NumPy, with Cython kernels for its hot element-wise and row-wise ops.

    from pythia import Pythia, PythiaConfig, load_gpt2
    model = Pythia(PythiaConfig(vocab_size=65))
    logits = model.forward(idx)            # idx: int (B, T) -> logits (B, T, V)

The public names are imported lazily so that `import pythia` stays cheap.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Pythia", "PythiaConfig", "DeltaOptimizer", "load_gpt2", "__version__"]

_LAZY = {
    "Pythia": ("pythia.model", "Pythia"),
    "PythiaConfig": ("pythia.model", "PythiaConfig"),
    "DeltaOptimizer": ("pythia.engine", "DeltaOptimizer"),
    "load_gpt2": ("pythia.formats.gpt2", "load_gpt2"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'pythia' has no attribute {name!r}")
