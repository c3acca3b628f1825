# The general training paths of train_chunk (the tiny-net kernels are in
# _tiny.pxi) and the prefetching they share.  Included by _ckernels.pyx.
#
# ``train_single``
#     batch size 1.  The backward pass is fused with the update
#     (``backward_row_sgd`` / ``backward_row_update``): for each kernel row the
#     delta passed to the layer below, ``sum_j K[i, j] d[j]``, is taken from
#     the *old* weights and the row is updated in the same sweep, so each
#     weight is read and written once per sample and no gradient buffer
#     exists.  Updating layer ``l`` before layer ``l-1``'s gradient is formed
#     changes nothing: that gradient depends only on the forward activations
#     and the already-propagated delta.
# ``train_batch``
#     batch size > 1: the batch's rows are gathered, then matrix products
#     (``gemm``) give the forward pass, ``A.T @ delta`` and ``delta @ K.T``
#     (through a transposed copy of ``K``), and one vectorised optimizer sweep
#     over the whole buffer follows -- the NumPy reference's order of
#     operations.
# Rows are visited in shuffled order, so the rows some samples ahead are
# prefetched (``prefetch_distance``).

cdef enum:
    # cache lines of an input row prefetched ahead (its first ones)
    PREFETCH_LINES = 8


cdef inline Py_ssize_t prefetch_distance(Py_ssize_t n_params) noexcept nogil:
    """Samples ahead to prefetch: about one memory latency's worth of work.

    Rows come in shuffled order, so each is a cache miss unless asked for
    early; a tiny net takes tens of nanoseconds per sample, a large one
    microseconds.
    """
    if n_params <= 256:
        return 16
    if n_params <= 8192:
        return 4
    return 2


cdef inline void prefetch_row(const floating* X, const floating* Y, Py_ssize_t row,
                              Py_ssize_t n_x, Py_ssize_t n_y) noexcept nogil:
    """Ask for row ``row`` of ``X`` (its first ``PREFETCH_LINES`` lines) and of ``Y`` (first line)."""
    cdef const char* start = <const char*> (X + row * n_x)
    cdef Py_ssize_t n_bytes = n_x * <Py_ssize_t> sizeof(floating), off = 0
    if n_bytes > PREFETCH_LINES * LINE:
        n_bytes = PREFETCH_LINES * LINE
    while off < n_bytes:
        FASTBP_PREFETCH(start + off)
        off += LINE
    FASTBP_PREFETCH(start + n_bytes - 1)   # the line a straddling row ends in
    FASTBP_PREFETCH(Y + row * n_y)


cdef int train_single(floating* wp, const Net* net, const floating* X,
                      const floating* Y, Py_ssize_t n_rows, const int64_t* order,
                      Py_ssize_t n_order, int loss, Update* rule, floating* ws0,
                      floating* ws1, int64_t step, floating* work, double* loss_out,
                      Py_ssize_t* done_out) except -1 nogil:
    """Per-sample training (batch size 1): forward, loss, fused backward + update.

    ``wp``, ``ws0``, ``ws1``: parameters and state slots in the working
    layout.  ``work`` (line-aligned) holds ``total_width + 3 * ldd`` values:
    one row of activations, two delta buffers and a gradient row.
    """
    cdef Py_ssize_t n_x = net.sizes[0], n_y = net.sizes[net.n_layers], ldd = net.ldd
    cdef Py_ssize_t k, l, j, row, n_in, n_out
    cdef Py_ssize_t ahead = prefetch_distance(net.n_params)
    cdef floating* act = work
    cdef floating* delta = act + net.total_width
    cdef floating* delta_prev = delta + ldd
    cdef floating* g = delta_prev + ldd
    cdef floating* tmp
    cdef floating* K
    cdef floating* b
    cdef const floating* x
    cdef const floating* a
    cdef floating lr = <floating> rule.lr
    cdef Py_ssize_t n_mean = per_row(loss, n_y)
    cdef floating scale = <floating> (1.0 / n_mean)
    cdef double total = 0, value
    rule.seeded = seeded_rsqrt_valid(ws0, net.n_work, rule)
    k = 0
    while k < n_order:
        if k + ahead < n_order:
            prefetch_row(X, Y, order[k + ahead], n_x, n_y)
        row = order[k]
        if FASTBP_DEBUG and (row < 0 or row >= n_rows):
            bad_row(row, n_rows)
        x = X + row * n_x
        a = x
        for l in range(net.n_layers):
            n_out = net.sizes[l + 1]
            dense_row(a, wp + net.wk_off[l], net.ldk[l], wp + net.wb_off[l],
                      act + net.act_off[l + 1], net.sizes[l], n_out)
            activate(act + net.act_off[l + 1], n_out, net.acts[l])
            a = act + net.act_off[l + 1]
        value = output_delta(a, Y + row * n_y, delta, n_y, loss, scale) / n_mean
        if not isfinite(value):
            break
        total += value
        update_step(rule, step)
        for l in range(net.n_layers - 1, -1, -1):
            n_in = net.sizes[l]
            n_out = net.sizes[l + 1]
            times_derivative(delta, act + net.act_off[l + 1], n_out, net.acts[l])
            a = x if l == 0 else act + net.act_off[l]
            K = wp + net.wk_off[l]
            b = wp + net.wb_off[l]
            if rule.kind == SGD:
                backward_row_sgd(K, net.ldk[l], a, delta, delta_prev, n_in, n_out, lr, l > 0)
                for j in range(n_out):
                    b[j] -= lr * delta[j]
            else:
                if rule.seeded:
                    rule.seeded = gradients_in_seed_range(a, delta, n_in, n_out)
                backward_row_update(K, net.ldk[l], b, ws0 + net.wk_off[l], ws1 + net.wk_off[l],
                                    ws0 + net.wb_off[l], ws1 + net.wb_off[l], a, delta,
                                    delta_prev, g, n_in, n_out, l > 0, rule)
            tmp = delta
            delta = delta_prev
            delta_prev = tmp
        step += 1
        k += 1
    rule.seeded = 0  # the minibatch path divides exactly
    loss_out[0] = total
    done_out[0] = k
    return 0


cdef int train_batch(floating* wp, const Net* net, const floating* X, const floating* Y,
                     Py_ssize_t n_rows, const int64_t* order, Py_ssize_t n_order,
                     Py_ssize_t batch_size, int loss, Update* rule, floating* ws0,
                     floating* ws1, int64_t step, floating* work, Py_ssize_t batch_rows,
                     double* loss_out, Py_ssize_t* done_out) except -1 nogil:
    """Minibatch training: per batch, forward, loss, gradient of the batch mean, update.

    ``wp``, ``ws0``, ``ws1``: parameters and state in the working layout.
    ``work`` (line-aligned; see :c:func:`scratch_size`) holds, for
    ``batch_rows >= min(batch_size, n_order)`` rows, the gathered inputs
    (``batch_rows * line_up(n_x)``), every layer's activations (``batch_rows *
    total_width``), two delta slabs (``batch_rows * ldd`` each), a transposed
    kernel (``max_width * ldd``) and the gradient (``n_work``), in that order.
    """
    cdef Py_ssize_t n_x = net.sizes[0], n_y = net.sizes[net.n_layers], ldd = net.ldd
    cdef Py_ssize_t ld = net.total_width, ld0 = line_up(n_x, sizeof(floating))
    cdef Py_ssize_t start = 0, n_batch, r, row
    cdef floating* X0 = work
    cdef floating* act = X0 + batch_rows * ld0
    cdef floating* delta = act + batch_rows * ld
    cdef floating* delta_prev = delta + batch_rows * ldd
    cdef floating* KT = delta_prev + batch_rows * ldd
    cdef floating* wg = KT + line_up(net.max_width * ldd, sizeof(floating))
    cdef floating* out
    cdef floating scale
    cdef double total = 0, value
    while start < n_order:
        n_batch = n_order - start
        if n_batch > batch_size:
            n_batch = batch_size
        for r in range(start + n_batch, start + 2 * n_batch):
            # the next batch's rows, while this one computes
            if r < n_order:
                prefetch_row(X, Y, order[r], n_x, n_y)
        for r in range(n_batch):
            row = order[start + r]
            if FASTBP_DEBUG and (row < 0 or row >= n_rows):
                bad_row(row, n_rows)
            memcpy(X0 + r * ld0, X + row * n_x, n_x * sizeof(floating))
        forward_rows(wp, net, n_batch, X0, ld0, act, ld)
        scale = <floating> ((1.0 / n_batch) / per_row(loss, n_y))
        value = 0
        out = act + net.act_off[net.n_layers]
        for r in range(n_batch):
            value += output_delta(out + r * ld, Y + order[start + r] * n_y, delta + r * ldd,
                                  n_y, loss, scale)
        value /= per_row(loss, n_y)
        if not isfinite(value):
            break
        total += value
        backward_rows(wp, wg, net, n_batch, X0, ld0, act, ld, delta, delta_prev, KT, False)
        update_step(rule, step)
        # padding entries have zero gradient and zero state: every rule leaves them 0
        apply_update(wp, wg, ws0, ws1, net.n_work, rule)
        step += 1
        start += n_batch
    loss_out[0] = total
    done_out[0] = start
    return 0


cdef inline Py_ssize_t scratch_size(const Net* net, Py_ssize_t batch_size,
                                    Py_ssize_t batch_rows, Py_ssize_t itemsize) noexcept nogil:
    """Values of scratch space :c:func:`train_rows` needs (a whole number of lines).

    The per-sample path's (``batch_size == 1``), or the minibatch path's
    for batches of up to ``batch_rows`` rows.
    """
    if batch_size == 1:
        return net.total_width + 3 * net.ldd
    return (batch_rows * (line_up(net.sizes[0], itemsize) + net.total_width + 2 * net.ldd)
            + line_up(net.max_width * net.ldd, itemsize) + net.n_work)


cdef inline int train_rows(floating* wp, floating* ws0, floating* ws1, const Net* net,
                           const floating* X, const floating* Y, Py_ssize_t n_rows,
                           const int64_t* order, Py_ssize_t n_order, Py_ssize_t batch_size,
                           int loss, Update* rule, int64_t step, floating* work,
                           Py_ssize_t batch_rows, double* loss_out,
                           Py_ssize_t* done_out) except -1 nogil:
    """Train working-layout parameters on a chunk: :c:func:`train_single` or :c:func:`train_batch`.

    ``work`` is line-aligned scratch of :c:func:`scratch_size` values for
    ``batch_rows`` rows.
    """
    if batch_size == 1:
        return train_single(wp, net, X, Y, n_rows, order, n_order, loss, rule, ws0, ws1, step,
                            work, loss_out, done_out)
    return train_batch(wp, net, X, Y, n_rows, order, n_order, batch_size, loss, rule, ws0, ws1,
                       step, work, batch_rows, loss_out, done_out)


# ---------------------------------------------------------------- split minibatches
# ``train_split_part``: ``parts`` threads train one chunk of minibatches together,
# each computing the gradient of its share of every batch's rows at the same
# weights, meeting at barriers (the Numba backend's ``train_split`` twin).

cdef extern from *:
    """
    /* The barrier's atomics and waits: GCC/clang builtins and sched_yield (POSIX), or
       MSVC's interlocked intrinsics and SwitchToThread (Windows). */
    #include <stdint.h>
    #if defined(_MSC_VER)
    #include <intrin.h>
    #include <windows.h>
    static __inline int64_t fastbp_atomic_add(int64_t* p, int64_t v) {
        return _InterlockedExchangeAdd64((volatile __int64*)p, v);
    }
    static __inline int64_t fastbp_atomic_load(const int64_t* p) {
        return _InterlockedCompareExchange64((volatile __int64*)p, 0, 0);
    }
    static __inline void fastbp_atomic_store(int64_t* p, int64_t v) {
        _InterlockedExchange64((volatile __int64*)p, v);
    }
    static __inline void fastbp_spin_pause(void) { YieldProcessor(); }
    static __inline void fastbp_yield_core(void) { SwitchToThread(); }
    #else
    #include <sched.h>
    static inline int64_t fastbp_atomic_add(int64_t* p, int64_t v) {
        return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
    }
    static inline int64_t fastbp_atomic_load(const int64_t* p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    static inline void fastbp_atomic_store(int64_t* p, int64_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELEASE);
    }
    static inline void fastbp_spin_pause(void) {
    #if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
    #elif defined(__aarch64__)
        __asm__ __volatile__("yield");
    #endif
    }
    static inline void fastbp_yield_core(void) { sched_yield(); }
    #endif
    """
    int64_t fastbp_atomic_add(int64_t* p, int64_t v) nogil
    int64_t fastbp_atomic_load(const int64_t* p) nogil
    void fastbp_atomic_store(int64_t* p, int64_t v) nogil
    void fastbp_spin_pause() nogil
    void fastbp_yield_core() nogil

cdef enum:
    # slots of the barrier array (int64), a cache line apart; as in _numba_kernels
    SYNC_COUNT = 0
    SYNC_GENERATION = 8
    SYNC_ABORT = 16
    SYNC_WORDS = 24
    # spins (with the pause hint) before a waiting thread starts yielding its core
    SPIN_LIMIT = 20000


cdef inline bint split_barrier(int64_t* sync, Py_ssize_t parts,
                               int64_t generation) noexcept nogil:
    """Wait until all ``parts`` threads arrive (the ``generation``-th barrier); False: aborted.

    The last to arrive resets the count and opens the next generation; the
    others spin on the generation word, then yield the core (more threads than
    cores still progress).  The sequentially consistent arrival and the
    acquire load order every write before the barrier before every read after.
    """
    cdef int64_t spins = 0
    if fastbp_atomic_add(&sync[SYNC_COUNT], 1) == parts - 1:
        fastbp_atomic_store(&sync[SYNC_COUNT], 0)
        fastbp_atomic_store(&sync[SYNC_GENERATION], generation + 1)
        return True
    while fastbp_atomic_load(&sync[SYNC_GENERATION]) == generation:
        if fastbp_atomic_load(&sync[SYNC_ABORT]) != 0:
            return False
        if spins < SPIN_LIMIT:
            spins += 1
            fastbp_spin_pause()
        else:
            fastbp_yield_core()
    return True


cdef inline Py_ssize_t split_part_size(const Net* net, Py_ssize_t part_rows,
                                       Py_ssize_t itemsize) noexcept nogil:
    """Values of one part's scratch (:c:func:`train_batch`'s layout for ``part_rows`` rows)."""
    return (part_rows * (line_up(net.sizes[0], itemsize) + net.total_width + 2 * net.ldd)
            + line_up(net.max_width * net.ldd, itemsize) + net.n_work)


cdef int train_split_part(floating* wp, const Net* net, const floating* X, const floating* Y,
                          Py_ssize_t n_rows, const int64_t* order, Py_ssize_t n_order,
                          Py_ssize_t batch_size, int loss, Update* rule, floating* ws0,
                          floating* ws1, int64_t step, floating* scratch,
                          Py_ssize_t part_rows, Py_ssize_t part, Py_ssize_t parts,
                          int64_t* sync, double* losses, double* loss_out,
                          Py_ssize_t* done_out) except -1 nogil:
    """Part ``part`` of ``parts`` threads training a chunk of split minibatches together.

    ``scratch`` holds every part's :c:func:`split_part_size` values for
    ``part_rows`` rows, part after part.  Per batch this part's share of the
    rows (``fastbp._parallel.batch_shares``: whole shares of ``ceil(rows /
    parts)``) is gathered and its gradient of the batch mean written to its
    scratch's gradient, its loss to ``losses[part]``; after a barrier every
    part adds the losses and, if finite, adds the gradients in part order
    and takes the step on its own slice of the parameters; after a second
    barrier every part goes on.  A non-finite batch loss stops every part at
    once.  ``loss_out`` is the chunk's loss sum (the same in every part);
    ``done_out`` the rows done (-1: another thread raised the abort word).
    """
    cdef Py_ssize_t n_x = net.sizes[0], n_y = net.sizes[net.n_layers], ldd = net.ldd
    cdef Py_ssize_t ld = net.total_width, ld0 = line_up(n_x, sizeof(floating))
    cdef Py_ssize_t size = split_part_size(net, part_rows, sizeof(floating))
    cdef Py_ssize_t wg_at = size - net.n_work
    cdef Py_ssize_t start = 0, n_batch, share, n_shares, lo, hi, m, r, row, k, i
    cdef floating* X0 = scratch + part * size
    cdef floating* act = X0 + part_rows * ld0
    cdef floating* delta = act + part_rows * ld
    cdef floating* delta_prev = delta + part_rows * ldd
    cdef floating* KT = delta_prev + part_rows * ldd
    cdef floating* wg = X0 + wg_at
    cdef floating* other
    cdef floating* out = act + net.act_off[net.n_layers]
    cdef floating scale
    cdef double total = 0, value, batch
    cdef int64_t generation = 0
    # this part's slice of the step, and its own copy of the rule (update_step writes it)
    cdef floating* part0_wg = scratch + wg_at
    cdef Py_ssize_t line = 64 // sizeof(floating)
    cdef Py_ssize_t lines = (net.n_work + line - 1) // line
    cdef Py_ssize_t p_lo = min(part * lines // parts * line, net.n_work)
    cdef Py_ssize_t p_hi = min((part + 1) * lines // parts * line, net.n_work)
    cdef Update own_rule = rule[0]
    while start < n_order:
        n_batch = n_order - start
        if n_batch > batch_size:
            n_batch = batch_size
        share = (n_batch + parts - 1) // parts
        n_shares = (n_batch + share - 1) // share
        lo = min(part * n_shares // parts * share, n_batch)
        hi = min((part + 1) * n_shares // parts * share, n_batch)
        m = hi - lo
        value = 0
        if m > 0:
            for r in range(m):
                row = order[start + lo + r]
                if FASTBP_DEBUG and (row < 0 or row >= n_rows):
                    bad_row(row, n_rows)
                memcpy(X0 + r * ld0, X + row * n_x, n_x * sizeof(floating))
            forward_rows(wp, net, m, X0, ld0, act, ld)
            scale = <floating> ((1.0 / n_batch) / per_row(loss, n_y))
            for r in range(m):
                value += output_delta(out + r * ld, Y + order[start + lo + r] * n_y,
                                      delta + r * ldd, n_y, loss, scale)
            value /= per_row(loss, n_y)
            backward_rows(wp, wg, net, m, X0, ld0, act, ld, delta, delta_prev, KT, False)
        else:
            memset(wg, 0, net.n_work * sizeof(floating))
        losses[part] = value
        if not split_barrier(sync, parts, generation):
            done_out[0] = -1
            return 0
        generation += 1
        batch = 0  # every part adds the same losses in the same order
        for k in range(parts):
            batch += losses[k]
        if not isfinite(batch):  # no part takes this batch's step
            break
        total += batch
        # Every part sums and steps its own slice of the parameters, whole cache
        # lines (see the Numba twin): part k's gradient lives in its own scratch.
        for k in range(1, parts):
            other = scratch + k * size + wg_at
            for i in range(p_lo, p_hi):
                part0_wg[i] += other[i]
        update_step(&own_rule, step)
        apply_update(wp + p_lo, part0_wg + p_lo, ws0 + p_lo, ws1 + p_lo, p_hi - p_lo, &own_rule)
        step += 1
        if not split_barrier(sync, parts, generation):
            done_out[0] = -1
            return 0
        generation += 1
        start += n_batch
    loss_out[0] = total
    done_out[0] = start
    return 0
