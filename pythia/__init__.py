"""Pythia: a GPT written in NumPy, with Cython kernels for its hot element-wise and row-wise ops."""
__version__ = "0.1.0"
