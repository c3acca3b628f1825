# Products over many rows: gemm (full tiles go to the register-blocked
# micro-kernel of _gemm.h, the rest to axpy_rows2), and the forward and
# backward passes of a block of rows built on it (rows_forward / forward_rows,
# rows_backward / backward_rows).  Used by the minibatch path and by predict,
# loss_sum and loss_and_gradients.  Included by _ckernels.pyx.


cdef extern from "_gemm.h" nogil:
    # The register-blocked micro-kernel (C: see the header for why).
    bint fastbp_gemm_tiles_d(Py_ssize_t M, Py_ssize_t N)
    bint fastbp_gemm_tiles_f(Py_ssize_t M, Py_ssize_t N)
    void fastbp_gemm_d(Py_ssize_t M, Py_ssize_t N, Py_ssize_t kc, const double* A,
                       Py_ssize_t rsa, Py_ssize_t csa, const double* B, Py_ssize_t ldb,
                       double* C, Py_ssize_t ldc, int accumulate)
    void fastbp_gemm_f(Py_ssize_t M, Py_ssize_t N, Py_ssize_t kc, const float* A,
                       Py_ssize_t rsa, Py_ssize_t csa, const float* B, Py_ssize_t ldb,
                       float* C, Py_ssize_t ldc, int accumulate)


cdef void gemm(Py_ssize_t M, Py_ssize_t N, Py_ssize_t Kd,
               const floating* A, Py_ssize_t rsa, Py_ssize_t csa,
               const floating* B, Py_ssize_t ldb,
               floating* C, Py_ssize_t ldc, bint accumulate) noexcept nogil:
    """``C (+)= A @ B``: ``A[m, k]`` at ``A[m * rsa + k * csa]``, ``B``/``C`` row-major.

    Strides on ``A`` make a transposed operand free.  Shapes with at least
    four rows and a tile's width of columns go to the register-blocked
    micro-kernel of ``_gemm.h`` (4 x 2-vector tiles of ``C`` held in
    registers over the whole ``k`` loop); the rest use :c:func:`axpy_rows2`,
    two output rows per pass, ``B`` (a layer's kernel or a slab of deltas, a
    few kilobytes) staying in L1 across the rows.
    """
    cdef Py_ssize_t m = 0
    if floating is double:
        if fastbp_gemm_tiles_d(M, N):
            fastbp_gemm_d(M, N, Kd, A, rsa, csa, B, ldb, C, ldc, accumulate)
            return
    else:
        if fastbp_gemm_tiles_f(M, N):
            fastbp_gemm_f(M, N, Kd, A, rsa, csa, B, ldb, C, ldc, accumulate)
            return
    while m + 2 <= M:
        axpy_rows2(A + m * rsa, csa, rsa, B, ldb, Kd, C + m * ldc, ldc, N, accumulate)
        m += 2
    if m < M:
        axpy_rows(A + m * rsa, csa, B, ldb, Kd, C + m * ldc, N, accumulate)


cdef inline void transpose(const floating* K, Py_ssize_t ldk, floating* KT, Py_ssize_t ldt,
                           Py_ssize_t n_in, Py_ssize_t n_out) noexcept nogil:
    """``KT (n_out, n_in) = K (n_in, n_out).T`` (rows ``ldk`` and ``ldt`` apart)."""
    cdef Py_ssize_t i, j
    for i in range(n_in):
        for j in range(n_out):
            KT[j * ldt + i] = K[i * ldk + j]


cdef inline void rows_forward(const floating* A, Py_ssize_t lda, const floating* K,
                              Py_ssize_t ldk, const floating* b, floating* Z, Py_ssize_t ldz,
                              Py_ssize_t m, Py_ssize_t n_in, Py_ssize_t n_out,
                              int64_t code) noexcept nogil:
    """One layer for ``m`` rows: ``Z[r] = act(A[r] @ K + b)`` (rows strided by lda/ldk/ldz)."""
    cdef Py_ssize_t r, j
    cdef floating* z
    if n_out == 1:
        # a one-unit layer: the kernel is a contiguous column, one dot product per row
        for r in range(m):
            Z[r * ldz] = dot(A + r * lda, K, n_in)
    else:
        gemm(m, n_out, n_in, A, lda, 1, K, ldk, Z, ldz, False)
    for r in range(m):
        z = Z + r * ldz
        for j in range(n_out):
            z[j] += b[j]
        activate(z, n_out, code)


cdef void forward_rows(const floating* wp, const Net* net, Py_ssize_t m,
                       const floating* X0, Py_ssize_t ld0, floating* act,
                       Py_ssize_t ld) noexcept nogil:
    """Forward pass of ``m`` rows with working-layout parameters ``wp``.

    Inputs at ``X0`` (row stride ``ld0``); layer ``l >= 1`` of row ``r``
    lands at ``act[r * ld + net.act_off[l]]``.
    """
    cdef Py_ssize_t l
    cdef const floating* A = X0
    cdef Py_ssize_t lda = ld0
    for l in range(net.n_layers):
        rows_forward(A, lda, wp + net.wk_off[l], net.ldk[l], wp + net.wb_off[l],
                     act + net.act_off[l + 1], ld, m, net.sizes[l], net.sizes[l + 1],
                     net.acts[l])
        A = act + net.act_off[l + 1]
        lda = ld


cdef inline void rows_backward(const floating* A, Py_ssize_t lda, const floating* K,
                               Py_ssize_t ldk, floating* D, floating* P, Py_ssize_t ldd,
                               floating* gK, floating* gb, floating* KT, Py_ssize_t m,
                               Py_ssize_t n_in, Py_ssize_t n_out, bint propagate,
                               bint accumulate) noexcept nogil:
    """One layer's gradients for ``m`` rows whose deltas (after the derivative) are ``D``.

    ``gK (+)= A.T @ D`` (rows ``ldk`` apart, like ``K``), ``gb (+)= D.sum(axis=0)``
    and, when ``propagate``, ``P = D @ K.T``, the deltas handed to the layer
    below (rows ``ldd`` apart; ``KT`` is scratch for the transposed kernel).
    """
    cdef Py_ssize_t r, i, j, ldt
    cdef const floating* d
    if n_out == 1:
        # a one-unit layer: gK[:, 0] = sum_r D[r, 0] * A[r, :], contiguous along the inputs
        axpy_rows(D, ldd, A, lda, m, gK, n_in, accumulate)
    else:
        # gK[i, :] = sum_r A[r, i] * D[r, :]: A read transposed through its strides
        gemm(n_in, n_out, m, A, 1, lda, D, ldd, gK, ldk, accumulate)
    if not accumulate:
        for j in range(n_out):
            gb[j] = 0
    for r in range(m):
        d = D + r * ldd
        for j in range(n_out):
            gb[j] += d[j]
    if not propagate:
        return
    if m == 1:
        for i in range(n_in):
            P[i] = dot(K + i * ldk, D, n_out)
    elif n_out == 1:
        # K is one row of K.T already
        gemm(m, n_in, 1, D, ldd, 1, K, n_in, P, ldd, False)
    else:
        ldt = ldd   # KT rows: n_in <= max_width values each
        transpose(K, ldk, KT, ldt, n_in, n_out)
        gemm(m, n_in, n_out, D, ldd, 1, KT, ldt, P, ldd, False)


cdef void backward_rows(const floating* wp, floating* wg, const Net* net,
                        Py_ssize_t m, const floating* X0, Py_ssize_t ld0,
                        const floating* act, Py_ssize_t ld, floating* delta,
                        floating* delta_prev, floating* KT, bint accumulate) noexcept nogil:
    """Gradient of the summed loss of ``m`` rows, written (or added) into ``wg``.

    ``wp`` and ``wg`` are in the working layout.  On entry ``delta`` (rows
    ``net.ldd`` apart) holds each row's d(loss)/d(output) before the output
    activation's derivative.  ``delta`` and ``delta_prev`` trade places layer
    by layer and are clobbered.
    """
    cdef Py_ssize_t l, r, n_out, ldd = net.ldd
    cdef const floating* A
    cdef Py_ssize_t lda
    cdef floating* tmp
    for l in range(net.n_layers - 1, -1, -1):
        n_out = net.sizes[l + 1]
        for r in range(m):
            times_derivative(delta + r * ldd, act + r * ld + net.act_off[l + 1], n_out,
                             net.acts[l])
        if l:
            A = act + net.act_off[l]
            lda = ld
        else:
            A = X0
            lda = ld0
        rows_backward(A, lda, wp + net.wk_off[l], net.ldk[l], delta, delta_prev, ldd,
                      wg + net.wk_off[l], wg + net.wb_off[l], KT, m, net.sizes[l], n_out,
                      l > 0, accumulate)
        tmp = delta
        delta = delta_prev
        delta_prev = tmp
