# Dense algebra on single rows: dot, axpy_rows / axpy_rows2 (the building
# block of every product), dense_row (one layer for one row) and the per-row
# backward passes fused with the update (backward_row_sgd,
# backward_row_update) of the per-sample path.  Dot products sum in an order
# of their own, as BLAS does, so results agree with NumPy to rounding.
# Included by _ckernels.pyx.


cdef inline floating dot(const floating* x, const floating* y, Py_ssize_t n) noexcept nogil:
    """``sum_i x[i] * y[i]`` (vectorised by the compiler: the build allows reassociation)."""
    cdef Py_ssize_t i
    cdef floating s = 0
    for i in range(n):
        s += x[i] * y[i]
    return s


cdef inline void axpy_rows(const floating* a, Py_ssize_t sa, const floating* B,
                           Py_ssize_t ldb, Py_ssize_t n_k, floating* z, Py_ssize_t n,
                           bint accumulate) noexcept nogil:
    """``z[:n] (+)= sum_k a[k * sa] * B[k * ldb : k * ldb + n]`` (``n_k >= 1``).

    The inner loops run along the contiguous ``z`` and rows of ``B``; four
    rows of ``B`` are folded in per pass, so ``z`` is loaded and stored once
    per four FMAs.  This is the building block of every product below
    (``n`` must not be tiny for it to pay; callers special-case ``n == 1``).
    """
    cdef Py_ssize_t k = 0, j
    cdef floating a0, a1, a2, a3
    cdef const floating* r0
    cdef const floating* r1
    cdef const floating* r2
    cdef const floating* r3
    if not accumulate:
        a0 = a[0]
        for j in range(n):
            z[j] = a0 * B[j]
        k = 1
    while k + 4 <= n_k:
        r0 = B + k * ldb
        r1 = r0 + ldb
        r2 = r1 + ldb
        r3 = r2 + ldb
        a0 = a[k * sa]
        a1 = a[(k + 1) * sa]
        a2 = a[(k + 2) * sa]
        a3 = a[(k + 3) * sa]
        for j in range(n):
            z[j] = z[j] + a0 * r0[j] + a1 * r1[j] + a2 * r2[j] + a3 * r3[j]
        k += 4
    while k < n_k:
        r0 = B + k * ldb
        a0 = a[k * sa]
        for j in range(n):
            z[j] += a0 * r0[j]
        k += 1


cdef inline void axpy_rows2(const floating* a, Py_ssize_t sa, Py_ssize_t rsa,
                            const floating* B, Py_ssize_t ldb, Py_ssize_t n_k, floating* z,
                            Py_ssize_t ldz, Py_ssize_t n, bint accumulate) noexcept nogil:
    """:c:func:`axpy_rows` for two output rows at once (``a`` and ``z`` rows ``rsa``/``ldz`` apart).

    Each pass loads four rows of ``B`` once for both outputs: six loads and
    two stores per eight FMAs instead of ten and two.
    """
    cdef Py_ssize_t k = 0, j
    cdef floating a0, a1, a2, a3, c0, c1, c2, c3
    cdef const floating* r0
    cdef const floating* r1
    cdef const floating* r2
    cdef const floating* r3
    cdef const floating* a_ = a + rsa
    cdef floating* z0 = z
    cdef floating* z1 = z + ldz
    if not accumulate:
        a0 = a[0]
        c0 = a_[0]
        for j in range(n):
            z0[j] = a0 * B[j]
            z1[j] = c0 * B[j]
        k = 1
    while k + 4 <= n_k:
        r0 = B + k * ldb
        r1 = r0 + ldb
        r2 = r1 + ldb
        r3 = r2 + ldb
        a0 = a[k * sa]
        a1 = a[(k + 1) * sa]
        a2 = a[(k + 2) * sa]
        a3 = a[(k + 3) * sa]
        c0 = a_[k * sa]
        c1 = a_[(k + 1) * sa]
        c2 = a_[(k + 2) * sa]
        c3 = a_[(k + 3) * sa]
        for j in range(n):
            z0[j] = z0[j] + a0 * r0[j] + a1 * r1[j] + a2 * r2[j] + a3 * r3[j]
            z1[j] = z1[j] + c0 * r0[j] + c1 * r1[j] + c2 * r2[j] + c3 * r3[j]
        k += 4
    while k < n_k:
        r0 = B + k * ldb
        a0 = a[k * sa]
        c0 = a_[k * sa]
        for j in range(n):
            z0[j] += a0 * r0[j]
            z1[j] += c0 * r0[j]
        k += 1


cdef inline void dense_row(const floating* a, const floating* K, Py_ssize_t ldk,
                           const floating* b, floating* z, Py_ssize_t n_in,
                           Py_ssize_t n_out) noexcept nogil:
    """``z[:n_out] = a[:n_in] @ K + b`` for one row, K's rows ``ldk`` apart (bias last, as NumPy)."""
    cdef Py_ssize_t j
    if n_out == 1:
        # a one-unit head: the kernel is a contiguous column, one dot product
        z[0] = dot(a, K, n_in) + b[0]
        return
    axpy_rows(a, 1, K, ldk, n_in, z, n_out, False)
    for j in range(n_out):
        z[j] += b[j]


cdef inline void backward_row_sgd(floating* K, Py_ssize_t ldk, const floating* a,
                                  const floating* d, floating* p, Py_ssize_t n_in,
                                  Py_ssize_t n_out, floating lr, bint propagate) noexcept nogil:
    """One layer's backward pass for one row fused with the plain-SGD update.

    ``p[i] = sum_j K[i, j] d[j]`` (the OLD weights; only when ``propagate``)
    and ``K[i, j] -= lr * (a[i] * d[j])`` in one sweep, so each weight is
    loaded and stored once: the same numbers as NumPy's separate gradient
    and update, without a gradient buffer.  Four rows go together, their
    four dot products being independent FMA chains that hide the FMA latency
    behind the stores.
    """
    cdef Py_ssize_t i = 0, j
    cdef floating a0, a1, a2, a3, s0, s1, s2, s3, dj
    cdef floating* r0
    cdef floating* r1
    cdef floating* r2
    cdef floating* r3
    if n_out == 1:
        # a one-unit layer: the kernel is a contiguous column, everything runs along i
        dj = d[0]
        if propagate:
            for i in range(n_in):
                p[i] = K[i] * dj
        for i in range(n_in):
            K[i] -= lr * (a[i] * dj)
        return
    if propagate:
        while i + 4 <= n_in:
            r0 = K + i * ldk
            r1 = r0 + ldk
            r2 = r1 + ldk
            r3 = r2 + ldk
            a0 = a[i]
            a1 = a[i + 1]
            a2 = a[i + 2]
            a3 = a[i + 3]
            s0 = 0
            s1 = 0
            s2 = 0
            s3 = 0
            for j in range(n_out):
                dj = d[j]
                s0 += r0[j] * dj
                s1 += r1[j] * dj
                s2 += r2[j] * dj
                s3 += r3[j] * dj
                r0[j] -= lr * (a0 * dj)
                r1[j] -= lr * (a1 * dj)
                r2[j] -= lr * (a2 * dj)
                r3[j] -= lr * (a3 * dj)
            p[i] = s0
            p[i + 1] = s1
            p[i + 2] = s2
            p[i + 3] = s3
            i += 4
    while i < n_in:
        r0 = K + i * ldk
        a0 = a[i]
        if propagate:
            s0 = 0
            for j in range(n_out):
                dj = d[j]
                s0 += r0[j] * dj
                r0[j] -= lr * (a0 * dj)
            p[i] = s0
        else:
            for j in range(n_out):
                r0[j] -= lr * (a0 * d[j])
        i += 1


cdef inline void backward_row_update(floating* K, Py_ssize_t ldk, floating* b, floating* S0,
                                     floating* S1, floating* Sb0, floating* Sb1,
                                     const floating* a, const floating* d, floating* p,
                                     floating* g, Py_ssize_t n_in, Py_ssize_t n_out,
                                     bint propagate, const Update* rule) noexcept nogil:
    """As :c:func:`backward_row_sgd` for optimizers with state (the bias too).

    Per kernel row: the propagated delta from the old row, then the row's
    gradient ``a[i] * d`` into the scratch ``g`` and :c:func:`apply_update`
    on that row and its state slices (``S0``/``S1`` laid out like ``K``,
    ``Sb0``/``Sb1`` like ``b``).
    """
    cdef Py_ssize_t i, j
    cdef floating ai
    cdef floating* row
    for i in range(n_in):
        row = K + i * ldk
        if propagate:
            p[i] = dot(row, d, n_out)
        ai = a[i]
        for j in range(n_out):
            g[j] = ai * d[j]
        apply_update(row, g, S0 + i * ldk, S1 + i * ldk, n_out, rule)
    apply_update(b, d, Sb0, Sb1, n_out, rule)
