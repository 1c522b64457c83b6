# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# The kernels of _quant.pyx, compiled by setup.py with -mavx2 -mfma (eight weight rows at a
# time with vpmaddubsw + vpmaddwd). pythia.quant loads this module only on a CPU that has AVX2.
include "_quant.pyx"
