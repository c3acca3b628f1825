"""The kernels of ``_ckernels.pyx`` compiled a second time, for AVX2 + FMA CPUs.

The baseline module ``fastbp._ckernels`` is compiled for the plain x86-64
instruction set (SSE2) so that a wheel runs on any machine.  This copy is the
very same source (included below) built for x86-64-v3 (``-mavx2 -mfma``).
``fastbp/_backends/cython_.py`` imports it instead when
``fastbp._ckernels.cpu_has_avx2_fma()`` says the running CPU supports it (and
the AVX-512 copy is unavailable or unsupported).  It is optional: if it fails
to build, the baseline module is used.
"""

include "_ckernels.pyx"
