/* Register-blocked small matrix product for the minibatch path of _ckernels.pyx.
 *
 *     C (+)= A @ B,   A[m, k] at A[m * rsa + k * csa],   B, C row-major (ldb, ldc)
 *
 * Everything else in fastbp's Cython backend is Cython.  This one kernel is C
 * because it needs what Cython cannot express: a tile of accumulators that
 * stays in vector registers for the whole k loop.  Written as plain loops,
 * GCC vectorises the k reduction instead (with gathers) and keeps the tile in
 * memory.  With GCC/clang vector extensions the tile is explicit:
 *
 *     4 rows x 2 vectors of C,   per k: 2 vector loads of B, 4 broadcasts of A,
 *     8 FMAs -- instead of a load and a store of C per FMA pair.
 *
 * The vector width follows the instruction set the file is compiled for
 * (64 bytes with AVX-512, else 32; the SSE2 baseline splits 32-byte vectors
 * in two).  Partial tiles fall back to plain loops.  Each element of C is
 * summed over k in order, with FMA contraction -- the same numbers as the
 * axpy form.  Compilers without vector extensions (MSVC) get plain loops.
 *
 * The functions are generated twice, for double (_d) and float (_f).
 */
#ifndef FASTBP_GEMM_H
#define FASTBP_GEMM_H

#include <stddef.h>
#include <string.h>

#if defined(__GNUC__) || defined(__clang__)
#  define FASTBP_VEC 1
#  if defined(__AVX512F__)
#    define FASTBP_VBYTES 64
#  else
#    define FASTBP_VBYTES 32
#  endif
#else
#  define FASTBP_VEC 0
#endif

#define FASTBP_MR 4   /* rows of C per tile */

#if FASTBP_VEC

#define FASTBP_GEMM_DEFINE(T, SUF)                                                          \
typedef T fastbp_v##SUF __attribute__((vector_size(FASTBP_VBYTES)));                        \
enum { FASTBP_VL_##SUF = FASTBP_VBYTES / (int)sizeof(T) };                                  \
                                                                                            \
static inline fastbp_v##SUF fastbp_load_##SUF(const T *p) {                                \
    fastbp_v##SUF v;                                                                        \
    memcpy(&v, p, sizeof v); /* an unaligned load */                                        \
    return v;                                                                               \
}                                                                                           \
                                                                                            \
static inline void fastbp_store_##SUF(T *p, fastbp_v##SUF v) {                              \
    memcpy(p, &v, sizeof v);                                                                \
}                                                                                           \
                                                                                            \
/* one 4 x (2 vectors) tile of C over the whole k range */                                  \
static inline void fastbp_tile_##SUF(ptrdiff_t kc, const T *A, ptrdiff_t rsa,               \
                                     ptrdiff_t csa, const T *B, ptrdiff_t ldb, T *C,        \
                                     ptrdiff_t ldc, int accumulate) {                       \
    const ptrdiff_t VL = FASTBP_VL_##SUF;                                                   \
    fastbp_v##SUF c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0};                               \
    fastbp_v##SUF c20 = {0}, c21 = {0}, c30 = {0}, c31 = {0};                               \
    const T *a = A;                                                                         \
    for (ptrdiff_t k = 0; k < kc; k++, a += csa) {                                          \
        const T *b = B + k * ldb;                                                           \
        fastbp_v##SUF b0 = fastbp_load_##SUF(b), b1 = fastbp_load_##SUF(b + VL);            \
        T a0 = a[0], a1 = a[rsa], a2 = a[2 * rsa], a3 = a[3 * rsa];                         \
        c00 += a0 * b0; c01 += a0 * b1;                                                     \
        c10 += a1 * b0; c11 += a1 * b1;                                                     \
        c20 += a2 * b0; c21 += a2 * b1;                                                     \
        c30 += a3 * b0; c31 += a3 * b1;                                                     \
    }                                                                                       \
    if (accumulate) {                                                                       \
        c00 += fastbp_load_##SUF(C);               c01 += fastbp_load_##SUF(C + VL);        \
        c10 += fastbp_load_##SUF(C + ldc);         c11 += fastbp_load_##SUF(C + ldc + VL);  \
        c20 += fastbp_load_##SUF(C + 2 * ldc);     c21 += fastbp_load_##SUF(C + 2 * ldc + VL); \
        c30 += fastbp_load_##SUF(C + 3 * ldc);     c31 += fastbp_load_##SUF(C + 3 * ldc + VL); \
    }                                                                                       \
    fastbp_store_##SUF(C, c00);             fastbp_store_##SUF(C + VL, c01);                \
    fastbp_store_##SUF(C + ldc, c10);       fastbp_store_##SUF(C + ldc + VL, c11);          \
    fastbp_store_##SUF(C + 2 * ldc, c20);   fastbp_store_##SUF(C + 2 * ldc + VL, c21);      \
    fastbp_store_##SUF(C + 3 * ldc, c30);   fastbp_store_##SUF(C + 3 * ldc + VL, c31);      \
}                                                                                           \
                                                                                            \
/* C[m, n0:N] (+)= A[m, :] @ B[:, n0:N] for one row m, plain loops (the edges) */           \
static inline void fastbp_edge_##SUF(ptrdiff_t n0, ptrdiff_t N, ptrdiff_t kc, const T *a,   \
                                     ptrdiff_t csa, const T *B, ptrdiff_t ldb, T *c,        \
                                     int accumulate) {                                      \
    if (!accumulate)                                                                        \
        for (ptrdiff_t n = n0; n < N; n++) c[n] = 0;                                        \
    for (ptrdiff_t k = 0; k < kc; k++) {                                                    \
        const T ak = a[k * csa];                                                            \
        const T *b = B + k * ldb;                                                           \
        for (ptrdiff_t n = n0; n < N; n++) c[n] += ak * b[n];                               \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* Does the register tile pay for this shape?  Needs a tile's width of columns. */          \
static inline int fastbp_gemm_tiles_##SUF(ptrdiff_t M, ptrdiff_t N) {                       \
    return M >= FASTBP_MR && N >= 2 * FASTBP_VL_##SUF;                                      \
}                                                                                           \
                                                                                            \
static void fastbp_gemm_##SUF(ptrdiff_t M, ptrdiff_t N, ptrdiff_t kc, const T *A,           \
                              ptrdiff_t rsa, ptrdiff_t csa, const T *B, ptrdiff_t ldb,      \
                              T *C, ptrdiff_t ldc, int accumulate) {                        \
    const ptrdiff_t NB = 2 * FASTBP_VL_##SUF;                                               \
    const ptrdiff_t n_full = N - N % NB, m_full = M - M % FASTBP_MR;                        \
    for (ptrdiff_t n0 = 0; n0 < n_full; n0 += NB) {                                         \
        for (ptrdiff_t m = 0; m < m_full; m += FASTBP_MR)                                   \
            fastbp_tile_##SUF(kc, A + m * rsa, rsa, csa, B + n0, ldb, C + m * ldc + n0,     \
                              ldc, accumulate);                                             \
    }                                                                                       \
    for (ptrdiff_t m = 0; m < m_full; m++)      /* columns past the last full tile */       \
        if (n_full < N)                                                                     \
            fastbp_edge_##SUF(n_full, N, kc, A + m * rsa, csa, B, ldb, C + m * ldc,         \
                              accumulate);                                                  \
    for (ptrdiff_t m = m_full; m < M; m++)      /* rows past the last full tile */          \
        fastbp_edge_##SUF(0, N, kc, A + m * rsa, csa, B, ldb, C + m * ldc, accumulate);     \
}

#else  /* no vector extensions: plain loops, and the callers use their own code */

#define FASTBP_GEMM_DEFINE(T, SUF)                                                          \
static inline int fastbp_gemm_tiles_##SUF(ptrdiff_t M, ptrdiff_t N) {                       \
    (void)M; (void)N;                                                                       \
    return 0;                                                                               \
}                                                                                           \
static void fastbp_gemm_##SUF(ptrdiff_t M, ptrdiff_t N, ptrdiff_t kc, const T *A,           \
                              ptrdiff_t rsa, ptrdiff_t csa, const T *B, ptrdiff_t ldb,      \
                              T *C, ptrdiff_t ldc, int accumulate) {                        \
    for (ptrdiff_t m = 0; m < M; m++) {                                                     \
        T *c = C + m * ldc;                                                                 \
        if (!accumulate)                                                                    \
            for (ptrdiff_t n = 0; n < N; n++) c[n] = 0;                                     \
        for (ptrdiff_t k = 0; k < kc; k++) {                                                \
            const T ak = A[m * rsa + k * csa];                                              \
            for (ptrdiff_t n = 0; n < N; n++) c[n] += ak * B[k * ldb + n];                  \
        }                                                                                   \
    }                                                                                       \
}

#endif  /* FASTBP_VEC */

FASTBP_GEMM_DEFINE(double, d)
FASTBP_GEMM_DEFINE(float, f)

#endif  /* FASTBP_GEMM_H */
