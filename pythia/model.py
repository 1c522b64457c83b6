"""The GPT-2 family under its historical import path: `from pythia.model import Pythia, PythiaConfig`.

The model lives in pythia/models/gpt2.py and is composed from pythia/layers.py.
"""
from .models.gpt2 import KVCache, Pythia, PythiaConfig, _param_shapes  # noqa: F401
