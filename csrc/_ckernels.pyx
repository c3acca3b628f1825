"""Compiled training kernels: the C-extension backend that ``fastbp._backends.cython_`` wraps.

It offers the functions of the backend contract (``fastbp/_backends/_contract.py``)
with the same arguments, writing into buffers the caller allocated:
``predict``, ``loss_sum``, ``loss_and_gradients`` and ``train_chunk``, and
``Trainer``, the working copy that ``open_trainer`` trains for one fit.
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
minibatch training), ``_tiny.pxi`` (the tiny-net kernels) and ``_shuffle.pxi``
(the row order of a shuffled epoch, for ``fastbp._shuffle``).  setup.py
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
from libc.stdint cimport int64_t, uint32_t, uint64_t, uintptr_t
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
include "_shuffle.pxi"


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
    "activations": {"linear": LINEAR, "relu": RELU, "sigmoid": SIGMOID, "tanh": TANH,
                    "softmax": SOFTMAX},
    "losses": {"mse": MSE, "mae": MAE, "huber": HUBER,
               "binary_crossentropy": BINARY_CROSSENTROPY,
               "categorical_crossentropy": CATEGORICAL_CROSSENTROPY},
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
    if loss < MSE or loss > CATEGORICAL_CROSSENTROPY:
        raise ValueError(f"loss: unknown code {loss}; expected 0..4 (see _codes.py).")
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
    cdef Py_ssize_t n = X.shape[0], start, n_block, r, j, ld, n_y, n_x
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
                        if net.acts[net.n_layers - 1] == SOFTMAX:  # the log-softmax: exp()
                            for j in range(n_y):
                                if floating is float:
                                    out[start + r, j] = expf(out[start + r, j])
                                else:
                                    out[start + r, j] = exp(out[start + r, j])
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
        return total / per_row(loss, n_y)
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
        scale = <floating> (1.0 / per_row(loss, n_y))
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
        return total / per_row(loss, n_y)
    finally:
        net_free(&net)


cdef class Trainer:
    """One network's line-aligned working copy, trained chunk after chunk for one ``fit``.

    Opened once with the model's ``params`` and ``state``: the layout
    (``net_init``), the update rule and the working buffers are derived and
    allocated here, and the model's buffers copied in.  :meth:`train` then
    trains the working copy in place; :meth:`store` writes it into the given
    buffers, :meth:`reload` copies them in again.  Tiny nets (see
    ``tiny_eligible``) keep their working copy in the caller's flat layout,
    their weights held in registers during a chunk; everything else trains
    on the working layout (every row on a cache line) and its scratch space,
    sized for the largest batch seen so far.

    Arguments as ``train_chunk``'s; ``sizes`` and ``acts`` are copied, the
    model's ``params``/``state`` are not kept.
    """
    cdef Net net
    cdef Update rule
    cdef int loss
    cdef Py_ssize_t batch_size
    cdef Py_ssize_t itemsize        # 4 (float32) or 8 (float64)
    cdef Py_ssize_t n_values        # working parameter values: n_work, or n_params if tiny
    cdef Py_ssize_t n_state         # working state values (both slots; 0 for plain SGD)
    cdef Py_ssize_t batch_rows      # rows the minibatch scratch is laid out for
    cdef bint tiny
    cdef int64_t* codes             # own copy of sizes and acts (net points into it)
    cdef void* raw                  # working parameters and state
    cdef void* scratch_raw          # the training path's scratch
    cdef char* work                 # working parameters, then the state slots
    cdef char* scratch
    cdef void* split_raw            # split minibatches: every part's scratch
    cdef char* split_scratch
    cdef Py_ssize_t split_parts     # ... laid out for this many parts
    cdef Py_ssize_t split_rows      # ... of up to this many rows each

    def __cinit__(self):
        self.net.kernel_off = NULL
        self.codes = NULL
        self.raw = NULL
        self.scratch_raw = NULL
        self.work = NULL
        self.scratch = NULL
        self.split_raw = NULL
        self.split_scratch = NULL
        self.split_parts = self.split_rows = 0

    def __init__(self, params, state, const int64_t[::1] sizes, const int64_t[::1] acts,
                 int loss, Py_ssize_t batch_size, int optimizer, const double[::1] hyper):
        check_loss(loss)
        if batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer; found {batch_size}.")
        update_init(&self.rule, optimizer, hyper)
        self.loss = loss
        self.batch_size = batch_size
        _trainer_open(self, params, state, sizes, acts)

    def train(self, X, Y, order, int64_t step):
        """Train the working copy on rows ``order`` of ``X``/``Y``: ``(loss_sum, rows_done)``.

        ``X``, ``Y`` in the parameter dtype, C-contiguous (may be
        read-only); ``order`` int64 indices in ``[0, len(X))`` -- the caller
        checks this (only debug builds re-check it).  ``step`` is the number
        of optimizer steps before this chunk.  As ``train_chunk``.
        """
        return _trainer_train(self, X, Y, order, step)

    def split_reserve(self, Py_ssize_t parts, Py_ssize_t part_rows):
        """Scratch for :meth:`train_split`: ``parts`` parts of up to ``part_rows`` rows each.

        Called before the threads start (it may reallocate); zeroed when it grows.
        """
        self._check_open()
        if parts < 1 or part_rows < 1 or self.tiny:
            raise ValueError(f"split_reserve: expected parts and rows >= 1 on a working "
                             f"layout; found {parts}, {part_rows} (tiny={self.tiny}).")
        if parts == self.split_parts and part_rows <= self.split_rows:
            return
        free(self.split_raw)
        self.split_raw = NULL
        self.split_scratch = NULL
        self.split_parts = self.split_rows = 0  # until the new buffer exists
        self.split_scratch = <char*> trainer_alloc_lines(
            parts * split_part_size(&self.net, part_rows, self.itemsize) * self.itemsize,
            &self.split_raw)
        self.split_parts, self.split_rows = parts, part_rows

    def train_split(self, X, Y, order, int64_t step, Py_ssize_t part, Py_ssize_t parts,
                    int64_t[::1] sync, double[::1] losses):
        """Part ``part``'s thread of a chunk of split minibatches: ``(loss_sum, rows_done)``.

        All ``parts`` threads call it at once, ``sync`` (``SYNC_WORDS`` zeroed
        int64) and ``losses`` (``parts`` float64) shared; :meth:`split_reserve`
        first.  Part 0's loss sum is the chunk's; rows done -1: aborted.
        """
        return _trainer_train_split(self, X, Y, order, step, part, parts, sync, losses)

    def finite(self):
        """Whether every working parameter is finite (the layout's padding is zero)."""
        cdef bint ok = True
        self._check_open()
        with nogil:
            if self.itemsize == 8:
                ok = all_finite(<double*> self.work, self.n_values)
            else:
                ok = all_finite(<float*> self.work, self.n_values)
        return ok

    def store(self, params, state):
        """Write the working parameters and the used state slots into ``params``/``state``."""
        _trainer_store(self, params, state)

    def reload(self, params, state):
        """Overwrite the working parameters and state with ``params``/``state``."""
        _trainer_reload(self, params, state)

    def close(self):
        """Release the working buffers; the trainer is not used after."""
        free(self.scratch_raw)
        free(self.split_raw)
        free(self.raw)
        free(self.codes)
        net_free(&self.net)
        self.scratch_raw = self.split_raw = self.raw = self.codes = NULL
        self.work = self.scratch = self.split_scratch = NULL
        self.split_parts = self.split_rows = 0

    def __dealloc__(self):
        free(self.split_raw)
        free(self.scratch_raw)
        free(self.raw)
        free(self.codes)
        net_free(&self.net)

    cdef int _check_open(self) except -1:
        if self.work == NULL:
            raise ValueError("Trainer: used after close().")
        return 0

    cdef int _check_dtype(self, Py_ssize_t itemsize) except -1:
        self._check_open()
        if itemsize != self.itemsize:
            raise ValueError(f"expected arrays of the trainer's dtype (float{8 * self.itemsize}); "
                             f"found float{8 * itemsize}.")
        return 0

    cdef int _reserve(self, Py_ssize_t batch_rows) except -1:
        """Scratch space for batches of up to ``batch_rows`` rows (zeroed when it grows)."""
        if self.scratch != NULL and (self.batch_size == 1 or batch_rows <= self.batch_rows):
            return 0
        free(self.scratch_raw)
        self.scratch_raw = NULL
        self.scratch = NULL
        self.scratch = <char*> trainer_alloc_lines(
            scratch_size(&self.net, self.batch_size, batch_rows, self.itemsize) * self.itemsize,
            &self.scratch_raw)
        self.batch_rows = batch_rows
        return 0


cdef void* trainer_alloc_lines(Py_ssize_t n_bytes, void** raw) except NULL:
    """:c:func:`alloc_lines` for a :class:`Trainer`'s buffers.

    A separate function on purpose: the per-call entry points' allocation
    keeps its callers, hence GCC's inlining and vectorisation decisions for
    them, unchanged (under ``-fassociative-math`` those decide the rounding
    of ``loss_and_gradients``).
    """
    cdef char* p = <char*> malloc(n_bytes + LINE)
    if p == NULL:
        raise MemoryError(f"could not allocate {n_bytes} bytes for the trainer")
    raw[0] = p
    p = p + (LINE - <Py_ssize_t> (<uintptr_t> p % LINE)) % LINE
    memset(p, 0, n_bytes)
    return p


cdef inline bint all_finite(const floating* x, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if not isfinite(x[i]):
            return False
    return True


cdef inline int check_state(const Net* net, Py_ssize_t rows, Py_ssize_t cols) except -1:
    if rows != 2 or cols != net.n_params:
        raise ValueError(f"state: expected shape (2, {net.n_params}); found ({rows}, {cols}).")
    return 0


cdef inline void load_work(const Net* net, bint tiny, bint with_state, floating* wp,
                           const floating* params, const floating* state) noexcept nogil:
    """Copy the caller's parameters (and, ``with_state``, both slots) into a working copy."""
    if tiny:
        memcpy(wp, params, net.n_params * sizeof(floating))
        return
    to_work(params, wp, net)
    if with_state:
        to_work(state, wp + net.n_work, net)
        to_work(state + net.n_params, wp + 2 * net.n_work, net)


def _trainer_open(Trainer trainer, const floating[::1] params, const floating[:, ::1] state,
                  const int64_t[::1] sizes, const int64_t[::1] acts):
    """:class:`Trainer`'s layout and working buffers for ``params``' dtype."""
    cdef Net* net = &trainer.net
    cdef Py_ssize_t n_codes
    net_init(net, sizes, acts, sizeof(floating))
    check_shapes(net, params.shape[0], 0, net.sizes[0], -1, -1)
    check_state(net, state.shape[0], state.shape[1])
    # the kernels read sizes and acts through net: point it at an own copy
    n_codes = 2 * net.n_layers + 1
    trainer.codes = <int64_t*> malloc(n_codes * sizeof(int64_t))
    if trainer.codes == NULL:
        raise MemoryError()
    memcpy(trainer.codes, net.sizes, (net.n_layers + 1) * sizeof(int64_t))
    memcpy(trainer.codes + net.n_layers + 1, net.acts, net.n_layers * sizeof(int64_t))
    net.sizes = trainer.codes
    net.acts = trainer.codes + net.n_layers + 1
    trainer.itemsize = sizeof(floating)
    trainer.tiny = tiny_eligible(net, trainer.loss, &trainer.rule, trainer.batch_size)
    if trainer.tiny:
        trainer.n_values = net.n_params
        trainer.n_state = 0
    else:
        trainer.n_values = net.n_work
        trainer.n_state = 0 if trainer.rule.kind == SGD else 2 * net.n_work
    # parameters | state slot 0 | slot 1 (optimizers with state), all whole lines
    trainer.work = <char*> trainer_alloc_lines(
        line_up(trainer.n_values + trainer.n_state, sizeof(floating)) * sizeof(floating),
        &trainer.raw)
    load_work(net, trainer.tiny, trainer.n_state > 0, <floating*> trainer.work, &params[0],
              &state[0, 0])
    if not trainer.tiny and trainer.batch_size == 1:
        trainer._reserve(1)


def _trainer_train(Trainer trainer, const floating[:, ::1] X, const floating[:, ::1] Y,
                   const int64_t[::1] order, int64_t step):
    """:meth:`Trainer.train` for the parameter dtype ``floating``."""
    cdef Net* net = &trainer.net
    cdef Py_ssize_t n_order = order.shape[0], batch_rows
    cdef floating* wp
    cdef double total = 0
    cdef Py_ssize_t done = 0
    trainer._check_dtype(sizeof(floating))
    check_shapes(net, net.n_params, X.shape[0], X.shape[1], Y.shape[0], Y.shape[1])
    if n_order == 0:
        return 0.0, 0
    wp = <floating*> trainer.work
    if trainer.tiny:
        with nogil:
            train_tiny(wp, net, &X[0, 0], &Y[0, 0], X.shape[0], &order[0], n_order,
                       <floating> trainer.rule.lr, &total, &done)
        return total, done
    batch_rows = trainer.batch_size if trainer.batch_size < n_order else n_order
    trainer._reserve(batch_rows)
    with nogil:
        train_rows(wp, wp + trainer.n_values, wp + 2 * trainer.n_values, net, &X[0, 0],
                   &Y[0, 0], X.shape[0], &order[0], n_order, trainer.batch_size, trainer.loss,
                   &trainer.rule, step, <floating*> trainer.scratch, trainer.batch_rows,
                   &total, &done)
    return total, done


def _trainer_train_split(Trainer trainer, const floating[:, ::1] X, const floating[:, ::1] Y,
                         const int64_t[::1] order, int64_t step, Py_ssize_t part,
                         Py_ssize_t parts, int64_t[::1] sync, double[::1] losses):
    """:meth:`Trainer.train_split` for the parameter dtype ``floating``."""
    cdef Net* net = &trainer.net
    cdef floating* wp
    cdef double total = 0
    cdef Py_ssize_t done = 0
    trainer._check_dtype(sizeof(floating))
    check_shapes(net, net.n_params, X.shape[0], X.shape[1], Y.shape[0], Y.shape[1])
    if (parts != trainer.split_parts or not 0 <= part < parts or sync.shape[0] < SYNC_WORDS
            or losses.shape[0] < parts
            or (min(trainer.batch_size, order.shape[0]) + parts - 1) // parts
            > trainer.split_rows):
        raise ValueError(f"train_split: expected part in [0, {trainer.split_parts}) of a "
                         f"split_reserve'd trainer, {SYNC_WORDS} sync words and a loss per "
                         f"part; found part {part} of {parts}, {sync.shape[0]} words, "
                         f"{losses.shape[0]} losses.")
    if order.shape[0] == 0:
        return 0.0, 0
    wp = <floating*> trainer.work
    with nogil:
        train_split_part(wp, net, &X[0, 0], &Y[0, 0], X.shape[0], &order[0], order.shape[0],
                         trainer.batch_size, trainer.loss, &trainer.rule,
                         wp + trainer.n_values, wp + 2 * trainer.n_values, step,
                         <floating*> trainer.split_scratch, trainer.split_rows, part, parts,
                         &sync[0], &losses[0], &total, &done)
    return total, done


def _trainer_store(Trainer trainer, floating[::1] params, floating[:, ::1] state):
    """:meth:`Trainer.store` for the parameter dtype ``floating``."""
    cdef Net* net = &trainer.net
    cdef floating* wp
    cdef floating* state0
    trainer._check_dtype(sizeof(floating))
    check_shapes(net, params.shape[0], 0, net.sizes[0], -1, -1)
    check_state(net, state.shape[0], state.shape[1])
    wp = <floating*> trainer.work
    state0 = &state[0, 0]
    with nogil:
        if trainer.tiny:
            memcpy(&params[0], wp, net.n_params * sizeof(floating))
        else:
            from_work(wp, &params[0], net)
            # only the slots the update rule uses: the others are the model's to keep
            if trainer.n_state:
                from_work(wp + trainer.n_values, state0, net)
                if trainer.rule.kind == ADAM or trainer.rule.kind == RMSPROP_MOMENTUM:
                    from_work(wp + 2 * trainer.n_values, state0 + net.n_params, net)


def _trainer_reload(Trainer trainer, const floating[::1] params, const floating[:, ::1] state):
    """:meth:`Trainer.reload` for the parameter dtype ``floating``."""
    trainer._check_dtype(sizeof(floating))
    check_shapes(&trainer.net, params.shape[0], 0, trainer.net.sizes[0], -1, -1)
    check_state(&trainer.net, state.shape[0], state.shape[1])
    load_work(&trainer.net, trainer.tiny, trainer.n_state > 0, <floating*> trainer.work,
              &params[0], &state[0, 0])


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
