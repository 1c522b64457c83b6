# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# The kernels of _quant.pyx, compiled by setup.py with -mavx2 -mfma and AVX-512 F/BW/VL/VNNI
# (block dot products with vpdpbusd). pythia.quant loads this module only on a CPU that reports
# all of those; elsewhere the AVX2 or baseline build serves.
include "_quant.pyx"
