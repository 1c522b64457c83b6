# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# The kernels of _kernels.pyx, compiled by setup.py with -mavx2 -mfma: 8-wide vectors and fused
# multiply-add. pythia.kernels loads this module only on a CPU that has AVX2 and FMA.
include "_kernels.pyx"
