# What this copy was compiled for and what the running CPU offers: the
# FASTBP_DEBUG flag, the instruction set (FASTBP_ISA), CPU feature detection
# for the adapter's choice of copy, and the software-prefetch hint.
# Included by _ckernels.pyx (one translation unit per ISA copy; see setup.py).

cdef extern from *:
    """
    /* Set by setup.py for FASTBP_DEBUG_EXTENSION=1 builds. */
    #ifndef FASTBP_DEBUG
    #define FASTBP_DEBUG 0
    #endif
    /* The instruction set this copy was compiled for. */
    #if defined(__AVX512F__)
    #define FASTBP_ISA "avx512"
    #elif defined(__AVX2__) && defined(__FMA__)
    #define FASTBP_ISA "avx2"
    #elif defined(__aarch64__) || defined(_M_ARM64)
    #define FASTBP_ISA "neon"
    #else
    #define FASTBP_ISA "baseline"
    #endif
    /* Does the running CPU (and OS) support AVX2 + FMA?  GCC's and clang's
       __builtin_cpu_supports check the OS-enabled register state as well. */
    static int fastbp_cpu_has_avx2_fma(void) {
    #if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    #else
        return 0;
    #endif
    }
    /* ... and the x86-64-v4 set of the AVX-512 copy: F, CD, VL, BW, DQ (and AVX2, FMA). */
    static int fastbp_cpu_has_avx512(void) {
    #if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
        __builtin_cpu_init();
        return fastbp_cpu_has_avx2_fma() && __builtin_cpu_supports("avx512f")
            && __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512vl")
            && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
    #else
        return 0;
    #endif
    }
    /* Software prefetch: a hint that never faults; a no-op where unsupported. */
    #if defined(__GNUC__) || defined(__clang__)
    #define FASTBP_PREFETCH(p) __builtin_prefetch((const void*)(p))
    #else
    #define FASTBP_PREFETCH(p) ((void)0)
    #endif
    """
    const bint FASTBP_DEBUG
    const char* FASTBP_ISA
    int fastbp_cpu_has_avx2_fma() nogil
    int fastbp_cpu_has_avx512() nogil
    void FASTBP_PREFETCH(const void* p) nogil
