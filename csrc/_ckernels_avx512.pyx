"""The kernels of ``_ckernels.pyx`` compiled a third time, for AVX-512 CPUs.

The baseline module ``fastbp._ckernels`` is compiled for the plain x86-64
instruction set (SSE2) so that a wheel runs on any machine.  This copy is the
very same source (included below) built for x86-64-v4: AVX-512 F, CD, VL, BW
and DQ, with 512-bit vectors preferred.  ``fastbp/_backends/cython_.py``
imports it instead when ``fastbp._ckernels.cpu_has_avx512()`` says the
running CPU (and OS) supports it.  It is optional: if it fails to build, the
AVX2 or the baseline copy is used.
"""

include "_ckernels.pyx"
