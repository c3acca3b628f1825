"""Compiled training kernels: the C-extension backend that ``fastbp._backends.cython_`` wraps.

It offers the functions of the backend contract (``fastbp/_backends/_contract.py``)
with the same arguments, writing into buffers the caller allocated:
``predict``, ``loss_sum``, ``loss_and_gradients`` and ``train_chunk``.
Every function is written once over Cython's fused ``floating`` type and
compiled for float32 and float64 (the dtype of ``params`` picks the
specialisation); each call releases the GIL for its whole numeric part.

The kernels are split by concern into textual includes, so that each
compiled copy is still one C translation unit and the compiler inlines
across them: ``_cpu.pxi`` (ISA, debug flag, CPU detection, prefetch),
``_activations.pxi`` (activations and losses), ``_optimizers.pxi`` (update
rules), ``_layout.pxi`` (the line-aligned working layout), ``_dense.pxi``
(single-row algebra and the fused per-row backward passes), ``_tiled.pxi``
(products over many rows, on ``_gemm.h``), ``_train.pxi`` (per-sample and
minibatch training) and ``_tiny.pxi`` (the tiny-net kernels).  setup.py
compiles this file three times on x86-64 -- portable, AVX2 and AVX-512
(``_ckernels_avx2.pyx``, ``_ckernels_avx512.pyx`` include it) -- and the
adapter loads the best copy the CPU supports.

Memory safety: the loops run on raw pointers without bounds checks.  The
Python adapter (``fastbp/_backends/cython_.py``) checks dtypes,
C-contiguity, shapes, writeability and the range of ``order`` before
calling; the entry points below re-check the O(1) shape facts themselves.
A debug build (``FASTBP_DEBUG_EXTENSION=1``) turns on Cython's bounds,
wraparound and initialisation checks and, through the ``FASTBP_DEBUG`` C
macro, range-checks every row index inside the loops (``bad_row``);
``FASTBP_SANITIZE_EXTENSION=1`` adds AddressSanitizer for the pointer code.
"""

from cython cimport floating
from libc.float cimport DBL_MIN, FLT_MIN
from libc.math cimport exp, expf, fabs, fabsf, isfinite, log, logf, pow, sqrt, sqrtf, tanh, tanhf
from libc.stdint cimport int64_t, uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

include "_cpu.pxi"
include "_activations.pxi"
include "_optimizers.pxi"
include "_layout.pxi"
include "_dense.pxi"
include "_tiled.pxi"
include "_train.pxi"
include "_tiny.pxi"


#: Instruction set this copy of the module was compiled for
#: ("baseline", "avx2", "avx512" or "neon").
ISA = FASTBP_ISA.decode("ascii")
#: True for a ``FASTBP_DEBUG_EXTENSION=1`` build (bounds and row-index checks on).
DEBUG = bool(FASTBP_DEBUG)


def cpu_has_avx2_fma():
    """Whether the running CPU and OS support AVX2 and FMA.

    Returns
    -------
    bool
        False on non-x86 machines and with compilers that lack
        ``__builtin_cpu_supports``.
    """
    return bool(fastbp_cpu_has_avx2_fma())


def cpu_has_avx512():
    """Whether the running CPU and OS support AVX-512 F, CD, VL, BW and DQ (x86-64-v4).

    Returns
    -------
    bool
        False on non-x86 machines and with compilers that lack
        ``__builtin_cpu_supports``.
    """
    return bool(fastbp_cpu_has_avx512())


cdef enum:
    # rows per block when predicting / evaluating / taking gradients
    BLOCK_ROWS = 64

#: The codes compiled in, for the consistency test against ``_codes.py``.
CODES = {
    "activations": {"linear": LINEAR, "relu": RELU, "sigmoid": SIGMOID, "tanh": TANH},
    "losses": {"mse": MSE, "mae": MAE, "huber": HUBER,
               "binary_crossentropy": BINARY_CROSSENTROPY},
    "optimizers": {"SGD": SGD, "SGD_MOMENTUM": SGD_MOMENTUM, "SGD_NESTEROV": SGD_NESTEROV,
                   "ADAM": ADAM, "RMSPROP": RMSPROP, "RMSPROP_MOMENTUM": RMSPROP_MOMENTUM},
    "BCE_EPSILON": BCE_EPSILON,
    "HUBER_DELTA": HUBER_DELTA,
}


cdef int check_shapes(Net* net, Py_ssize_t n_params, Py_ssize_t n_rows, Py_ssize_t n_cols,
                      Py_ssize_t y_rows, Py_ssize_t y_cols) except -1:
    """The O(1) shape checks every entry point repeats (the adapter checks first)."""
    if n_params != net.n_params:
        raise ValueError(f"params: expected {net.n_params} values for layer widths "
                         f"{[net.sizes[l] for l in range(net.n_layers + 1)]}; "
                         f"found {n_params}.")
    if n_cols != net.sizes[0]:
        raise ValueError(f"X: expected {net.sizes[0]} columns; found {n_cols}.")
    if y_rows >= 0 and (y_rows != n_rows or y_cols != net.sizes[net.n_layers]):
        raise ValueError(f"Y: expected shape ({n_rows}, {net.sizes[net.n_layers]}); "
                         f"found ({y_rows}, {y_cols}).")
    return 0


cdef int check_loss(int loss) except -1:
    if loss < MSE or loss > BINARY_CROSSENTROPY:
        raise ValueError(f"loss: unknown code {loss}; expected 0..3 (see _codes.py).")
    return 0


def predict(const floating[::1] params, const int64_t[::1] sizes, const int64_t[::1] acts,
            const floating[:, ::1] X, floating[:, ::1] out):
    """Write the network's outputs for the rows of ``X`` into ``out``.

    Parameters
    ----------
    params : ndarray, shape (n_params,), float32 or float64, C-contiguous
    sizes, acts : ndarray of int64, C-contiguous
        Layer widths and activation codes.
    X : ndarray, shape (n_rows, sizes[0]), params' dtype, C-contiguous
        May be read-only.
    out : ndarray, shape (n_rows, sizes[-1]), params' dtype, C-contiguous
    """
    cdef Net net
    cdef Py_ssize_t n = X.shape[0], start, n_block, r, ld, n_y, n_x
    cdef floating* wp
    cdef floating* act
    cdef void* raw = NULL
    net_init(&net, sizes, acts, sizeof(floating))
    try:
        check_shapes(&net, params.shape[0], n, X.shape[1], -1, -1)
        n_y = net.sizes[net.n_layers]
        if out.shape[0] != n or out.shape[1] != n_y:
            raise ValueError(f"out: expected shape ({n}, {n_y}); "
                             f"found ({out.shape[0]}, {out.shape[1]}).")
        if n == 0:
            return
        ld = net.total_width
        n_x = net.sizes[0]
        wp = <floating*> alloc_lines((net.n_work + BLOCK_ROWS * ld) * sizeof(floating), &raw)
        act = wp + net.n_work
        try:
            with nogil:
                to_work(&params[0], wp, &net)
                start = 0
                while start < n:
                    n_block = n - start if n - start < BLOCK_ROWS else BLOCK_ROWS
                    forward_rows(wp, &net, n_block, &X[start, 0], n_x, act, ld)
                    for r in range(n_block):
                        memcpy(&out[start + r, 0], act + r * ld + net.act_off[net.n_layers],
                               n_y * sizeof(floating))
                    start += n_block
        finally:
            free(raw)
    finally:
        net_free(&net)


def loss_sum(const floating[::1] params, const int64_t[::1] sizes, const int64_t[::1] acts,
             int loss, const floating[:, ::1] X, const floating[:, ::1] Y):
    """Sum over rows of the per-row loss (each row's loss is a mean over outputs).

    Returns
    -------
    float
        Accumulated in float64 whatever the parameter dtype.
    """
    cdef Net net
    cdef Py_ssize_t n = X.shape[0], start, n_block, r, ld, n_y, n_x
    cdef floating* wp
    cdef floating* act
    cdef void* raw = NULL
    cdef double total = 0
    check_loss(loss)
    net_init(&net, sizes, acts, sizeof(floating))
    try:
        check_shapes(&net, params.shape[0], n, X.shape[1], Y.shape[0], Y.shape[1])
        if n == 0:
            return 0.0
        ld = net.total_width
        n_x = net.sizes[0]
        n_y = net.sizes[net.n_layers]
        wp = <floating*> alloc_lines((net.n_work + BLOCK_ROWS * ld) * sizeof(floating), &raw)
        act = wp + net.n_work
        try:
            with nogil:
                to_work(&params[0], wp, &net)
                start = 0
                while start < n:
                    n_block = n - start if n - start < BLOCK_ROWS else BLOCK_ROWS
                    forward_rows(wp, &net, n_block, &X[start, 0], n_x, act, ld)
                    for r in range(n_block):
                        total += row_loss(act + r * ld + net.act_off[net.n_layers],
                                          &Y[start + r, 0], n_y, loss)
                    start += n_block
        finally:
            free(raw)
        return total / n_y
    finally:
        net_free(&net)


def loss_and_gradients(const floating[::1] params, const int64_t[::1] sizes,
                       const int64_t[::1] acts, int loss, const floating[:, ::1] X,
                       const floating[:, ::1] Y, floating[::1] grad):
    """Return the loss sum over rows and write d(loss sum)/d(param) into ``grad``.

    ``grad`` has ``params``' shape and dtype and is overwritten (zeros when
    ``X`` has no rows).  Rows go through in blocks of ``BLOCK_ROWS``, each block's
    gradient added to the last.
    """
    cdef Net net
    cdef Py_ssize_t n = X.shape[0], start, n_block, r, ld, n_y, n_x, ldd
    cdef floating* wp
    cdef floating* wg
    cdef floating* act
    cdef floating* delta
    cdef floating* delta_prev
    cdef floating* KT
    cdef floating* out
    cdef void* raw = NULL
    cdef double total = 0
    cdef floating scale
    check_loss(loss)
    net_init(&net, sizes, acts, sizeof(floating))
    try:
        check_shapes(&net, params.shape[0], n, X.shape[1], Y.shape[0], Y.shape[1])
        if grad.shape[0] != net.n_params:
            raise ValueError(f"grad: expected {net.n_params} values; found {grad.shape[0]}.")
        if n == 0:
            memset(&grad[0], 0, net.n_params * sizeof(floating))
            return 0.0
        ld = net.total_width
        ldd = net.ldd
        n_x = net.sizes[0]
        n_y = net.sizes[net.n_layers]
        scale = <floating> (1.0 / n_y)
        # wp | wg | activations | two delta slabs | transposed kernel (all whole lines)
        wp = <floating*> alloc_lines((2 * net.n_work + BLOCK_ROWS * (ld + 2 * ldd)
                                      + net.max_width * ldd) * sizeof(floating), &raw)
        wg = wp + net.n_work
        act = wg + net.n_work
        delta = act + BLOCK_ROWS * ld
        delta_prev = delta + BLOCK_ROWS * ldd
        KT = delta_prev + BLOCK_ROWS * ldd
        out = act + net.act_off[net.n_layers]
        try:
            with nogil:
                to_work(&params[0], wp, &net)
                start = 0
                while start < n:
                    n_block = n - start if n - start < BLOCK_ROWS else BLOCK_ROWS
                    forward_rows(wp, &net, n_block, &X[start, 0], n_x, act, ld)
                    for r in range(n_block):
                        total += output_delta(out + r * ld, &Y[start + r, 0], delta + r * ldd,
                                              n_y, loss, scale)
                    backward_rows(wp, wg, &net, n_block, &X[start, 0], n_x, act, ld, delta,
                                  delta_prev, KT, start > 0)
                    start += n_block
                from_work(wg, &grad[0], &net)
        finally:
            free(raw)
        return total / n_y
    finally:
        net_free(&net)


def train_chunk(floating[::1] params, const int64_t[::1] sizes, const int64_t[::1] acts,
                int loss, const floating[:, ::1] X, const floating[:, ::1] Y,
                const int64_t[::1] order, Py_ssize_t batch_size, int optimizer,
                const double[::1] hyper, floating[:, ::1] state, int64_t step):
    """Train on the rows ``order`` of ``X``/``Y`` in consecutive batches of ``batch_size``.

    Parameters
    ----------
    params : ndarray, shape (n_params,), float32 or float64
        Updated in place.
    sizes, acts : ndarray of int64
    loss : int
        Loss code.
    X, Y : ndarray, C-contiguous, params' dtype; may be read-only
    order : ndarray of int64
        Row indices, each in ``[0, len(X))`` -- the caller checks this
        (only debug builds re-check it).
    batch_size : int
    optimizer : int
        Update-rule code; ``hyper`` (float64 ``[lr, h1, h2, eps]``) and
        ``state`` (shape ``(2, n_params)``, params' dtype, updated in place)
        as ``_codes.py`` describes.
    step : int
        Optimizer steps done so far (Adam's t is ``step + 1`` for the first batch).

    Returns
    -------
    loss_sum : float
        Sum of per-row losses (means over outputs), each taken before its
        batch's update.
    rows_done : int
        Rows in completed batches; less than ``len(order)`` when a batch's
        loss was not finite (that batch was not applied).

    Notes
    -----
    Tiny nets (see ``tiny_eligible``) train on the caller's buffer, their
    weights held in registers.  Everything else trains on a line-aligned
    working copy of the parameters and optimizer state (``net_init``),
    copied in before the chunk and back after it: O(n_params) per call.
    """
    cdef Net net
    cdef Update rule
    cdef Py_ssize_t n_order = order.shape[0], n_work, n_state, batch_rows, n_scratch
    cdef floating* wp
    cdef floating* ws0
    cdef floating* ws1
    cdef floating* work
    cdef floating* state0
    cdef void* raw = NULL
    cdef double total = 0
    cdef Py_ssize_t done = 0
    check_loss(loss)
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer; found {batch_size}.")
    update_init(&rule, optimizer, hyper)
    net_init(&net, sizes, acts, sizeof(floating))
    try:
        check_shapes(&net, params.shape[0], X.shape[0], X.shape[1], Y.shape[0], Y.shape[1])
        if state.shape[0] != 2 or state.shape[1] != net.n_params:
            raise ValueError(f"state: expected shape (2, {net.n_params}); "
                             f"found ({state.shape[0]}, {state.shape[1]}).")
        if n_order == 0:
            return 0.0, 0
        state0 = &state[0, 0]
        if tiny_eligible(&net, loss, &rule, batch_size):
            with nogil:
                train_tiny(&params[0], &net, &X[0, 0], &Y[0, 0], X.shape[0], &order[0],
                           n_order, <floating> rule.lr, &total, &done)
            return total, done
        n_work = net.n_work
        n_state = 0 if rule.kind == SGD else 2 * n_work
        batch_rows = batch_size if batch_size < n_order else n_order
        n_scratch = scratch_size(&net, batch_size, batch_rows, sizeof(floating))
        # wp | ws0 | ws1 (optimizers with state) | the path's scratch (all whole lines)
        wp = <floating*> alloc_lines((n_work + n_state + n_scratch) * sizeof(floating), &raw)
        ws0 = wp + n_work
        ws1 = ws0 + n_work
        work = wp + n_work + n_state
        try:
            with nogil:
                to_work(&params[0], wp, &net)
                if n_state:
                    to_work(state0, ws0, &net)
                    to_work(state0 + net.n_params, ws1, &net)
                train_rows(wp, ws0, ws1, &net, &X[0, 0], &Y[0, 0], X.shape[0], &order[0],
                           n_order, batch_size, loss, &rule, step, work, batch_rows, &total,
                           &done)
                from_work(wp, &params[0], &net)
                if n_state:
                    from_work(ws0, state0, &net)
                    from_work(ws1, state0 + net.n_params, &net)
        finally:
            free(raw)
        return total, done
    finally:
        net_free(&net)
