# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# The kernels of _quant.pyx, compiled by setup.py with -mavx2 -mfma (vpmovsxbw + vpmaddwd on
# 16 int8 pairs at a time). pythia.quant loads this module only on a CPU that has AVX2.
include "_quant.pyx"
