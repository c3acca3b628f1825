"""Compiled training kernels: the Cython twin of ``fastbp/_backends/numba_.py``.

This module is the C-extension backend that ``fastbp._backends.cython_``
wraps (the adapter validates every argument first; see Memory safety).  It
offers the four functions of the backend contract documented in
``fastbp/_backends/numpy_.py``, with the same arguments, writing into
buffers the caller allocated:

``predict(params, sizes, acts, X, out)``
``loss_sum(params, sizes, acts, loss, X, Y) -> float``
``loss_and_gradients(params, sizes, acts, loss, X, Y, grad) -> float``
``train_chunk(params, sizes, acts, loss, X, Y, order, batch_size, optimizer,
hyper, state, step) -> (loss_sum, rows_done)``

Every function is written once over Cython's fused ``floating`` type and
compiled for float32 and float64 (the dtype of ``params`` picks the
specialisation).  Each call releases the GIL for its whole numeric part.
setup.py compiles this file three times on x86-64 -- portable, AVX2 and
AVX-512 (``_ckernels_avx2.pyx``, ``_ckernels_avx512.pyx`` include it) -- and
the adapter loads the best copy the CPU supports, as Numba compiles for the
host CPU.

Layout
------
The caller's parameters are one flat C-contiguous buffer: for layer ``l``
its kernel ``(sizes[l], sizes[l+1])`` row-major, then its bias.  At the
start of a call ``net_init`` turns ``sizes`` into per-layer offsets once, so
the loops walk each layer through its own base pointer (``K + i * ldk +
j``), never through one flat ``offset + j`` index, and the innermost loops
run over the *output units* ``j``, contiguous in the kernel row and in the
activation vector alike: the compiler vectorises ``z[j] += a[i] * K[i, j]``.
Except on the tiny path, the kernels work on a *working copy* of the
parameters (and optimizer state) in which every kernel row, bias,
activation row and delta row starts on a 64-byte cache line (rows padded
with zeros): NumPy hands over buffers aligned to 16 bytes only, and a vector
load that straddles two cache lines costs about twice as much.  The copy in
and out is O(n_params) per call.  All scratch space is allocated once per
call, never per sample.

Training paths (``train_chunk``)
--------------------------------
``train_tiny2``/``train_tiny1``
    batch size 1, plain SGD, mse, one or two layers no wider than 4 with a
    linear output (a linear or relu hidden layer): the Numba twin generates
    scalar code per architecture; here the widths are *types* (fused types
    over 1..4-byte structs, so ``sizeof`` is a compile-time width), one
    specialisation per width combination, with every weight in a register for
    the whole chunk and the per-sample dependency chain kept short.
``train_single``
    batch size 1 otherwise.  The backward pass is fused with the update
    (``backward_row_sgd`` / ``backward_row_update``): for each kernel row the
    delta passed to the layer below, ``sum_j K[i, j] d[j]``, is taken from
    the *old* weights and the row is updated in the same sweep, so each
    weight is read and written once per sample and no gradient buffer
    exists.  Updating layer ``l`` before layer ``l-1``'s gradient is formed
    changes nothing: that gradient depends only on the forward activations
    and the already-propagated delta.
``train_batch``
    batch size > 1: the batch's rows are gathered, then matrix products
    (``gemm``) give the forward pass, ``A.T @ delta`` and ``delta @ K.T``
    (through a transposed copy of ``K``), and one vectorised optimizer sweep
    over the whole buffer follows -- the NumPy reference's order of
    operations.  ``gemm`` hands full tiles to a register-blocked micro-kernel
    in ``_gemm.h`` (the one piece of C: Cython cannot pin a tile of
    accumulators in vector registers) and the rest to ``axpy_rows2``.
Rows are visited in shuffled order, so the rows some samples ahead are
prefetched (``prefetch_distance``).

Numerics
--------
The formulas and their order of operations are the NumPy backend's (Keras
3): element losses are formed in the parameter dtype and summed in float64;
scalar hyper-parameters are formed in float64 (as Python does) and rounded to
the parameter dtype once, as NumPy does when it multiplies an array by a
Python float; relu lets NaN through (``np.maximum``) and its derivative
``a > 0`` is multiplied in (so ``inf * 0`` gives NaN, as in NumPy).  Numeric
literals inside the fused code are typed (``one``, ``two``): a bare ``1`` in
float32 code would be a C double and promote the arithmetic.  Dot and matrix
products sum in an order of their own, as BLAS does, and the tiny kernels
regroup two products to shorten their dependency chain, so results agree
with NumPy to rounding, not bit for bit.  The build allows FMA contraction
and reassociation (``-ffp-contract=fast -fassociative-math``, which the
compiler needs to vectorise dot products) but none of ``-ffast-math``'s
finite-math assumptions: the NaN checks that stop a diverging chunk must
survive.

Memory safety
-------------
The loops run on raw pointers without bounds checks.  The Python adapter
(``fastbp/_backends/cython_.py``) checks dtypes, C-contiguity, shapes,
writeability and the range of ``order`` before calling; the entry points
below re-check the O(1) shape facts themselves.  A debug build
(``FASTBP_DEBUG_EXTENSION=1``) turns on Cython's bounds, wraparound and
initialisation checks and, through the ``FASTBP_DEBUG`` C macro, range-checks
every row index inside the loops (``bad_row``);
``FASTBP_SANITIZE_EXTENSION=1`` adds AddressSanitizer for the pointer code.

Twins in the Numba backend
--------------------------
``fastbp/_backends/_numba_template.py`` (generic kernels) and
``_numba_codegen.py`` (per-architecture scalar kernels); Numba's helpers index
one flat buffer and this module's take pointers, so a few names differ:

=========================  ==================================================
this module                numba twin
=========================  ==================================================
activate                   activate_rows / activate1 (one row here)
times_derivative           derivative_rows / derivative1
sign, loss_value,          sign, loss_value, loss_grad, output_delta
loss_grad, output_delta
apply_update               apply_update
dense_row                  dense_flat
backward_row_sgd           backward_flat_sgd
backward_row_update        backward_flat_grad (Numba writes a gradient row,
                           this updates the row in place)
rows_forward, forward_rows rows_forward (+ the loop over layers)
rows_backward,             rows_backward (+ the loop over layers)
backward_rows
prefetch_distance,         prefetch, _emit_prefetch_row, PREFETCH_AHEAD
prefetch_row
train_single               train_sgd (plain SGD) and train_single
train_batch                train_batch
train_tiny1, train_tiny2   train_scalar (generated per architecture)
predict, loss_sum,         predict, loss_sum, loss_and_gradients
loss_and_gradients
=========================  ==================================================

No twin: ``dot``, ``axpy_rows``, ``axpy_rows2``, ``gemm`` (Numba writes
those loops inline), ``net_init``/``to_work``/``from_work`` (the working
layout; Numba's ``numba_.py`` builds the same in Python).
"""

from cython cimport floating
from libc.float cimport DBL_MIN, FLT_MIN
from libc.math cimport exp, expf, fabs, fabsf, isfinite, log, logf, pow, sqrt, sqrtf, tanh, tanhf
from libc.stdint cimport int64_t, uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

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


# Integer codes: must equal fastbp/_backends/_codes.py (tests/test_cython.py checks).
cdef enum:
    LINEAR = 0
    RELU = 1
    SIGMOID = 2
    TANH = 3

cdef enum:
    MSE = 0
    MAE = 1
    HUBER = 2
    BINARY_CROSSENTROPY = 3

cdef enum:
    SGD = 0
    SGD_MOMENTUM = 1
    SGD_NESTEROV = 2
    ADAM = 3
    RMSPROP = 4
    RMSPROP_MOMENTUM = 5

cdef enum:
    # the tiny-net path: at most TINY_LAYERS layers no wider than TINY
    TINY = 4
    TINY_LAYERS = 2
    # rows per block when predicting / evaluating / taking gradients
    BLOCK_ROWS = 64

# Keras's backend.epsilon() (the clip of binary cross-entropy) and Huber's delta.
cdef double BCE_EPSILON = 1e-7
cdef double HUBER_DELTA = 1.0

# The clip bounds of binary cross-entropy per dtype, rounded as NumPy rounds
# them (``one - eps`` in the dtype).  They are set at import from a value the
# C compiler cannot see, on purpose: with the build's -fassociative-math, GCC
# would fold ``1 - (1 - eps)`` (the loss at a saturated prediction) to ``eps``,
# while NumPy and Keras compute it in the dtype (in float32, 1.19e-7, not 1e-7:
# a loss of 15.94 instead of 16.12).
cdef double _one = float("1")   # an opaque 1.0: a Python call at import time
cdef float BCE_LO_F = <float> BCE_EPSILON
cdef float BCE_HI_F = <float> _one - BCE_LO_F
cdef double BCE_LO_D = BCE_EPSILON
cdef double BCE_HI_D = _one - BCE_LO_D

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


# =========================================================================== network layout

cdef struct Net:
    # Per-layer geometry, computed once per call from ``sizes``.  Two layouts of
    # the parameters: the caller's flat one (``kernel_off``, ``bias_off``: kernel
    # rows ``n_out`` apart) and the working one the non-tiny kernels compute on
    # (``wk_off``, ``wb_off``, rows ``ldk`` apart), in which every kernel row and
    # bias starts on a cache line (see ``work_layout``).
    Py_ssize_t n_layers
    Py_ssize_t n_params       # length of the caller's flat buffer
    Py_ssize_t n_work         # length of the working buffer (a whole number of lines)
    Py_ssize_t max_width      # widest layer, inputs included
    Py_ssize_t ldd            # row stride of delta slabs: max_width rounded up to a line
    Py_ssize_t total_width    # row stride of activation rows (layers 1..n_layers, aligned)
    const int64_t* sizes      # n_layers + 1 widths
    const int64_t* acts       # n_layers activation codes
    Py_ssize_t* kernel_off    # caller's layout: offset of layer l's kernel
    Py_ssize_t* bias_off      # caller's layout: offset of layer l's bias
    Py_ssize_t* wk_off        # working layout: offset of layer l's kernel
    Py_ssize_t* wb_off        # working layout: offset of layer l's bias
    Py_ssize_t* ldk           # working layout: row stride of layer l's kernel
    Py_ssize_t* act_off       # offset of layer l's activations (l >= 1) within a row


cdef enum:
    LINE = 64   # bytes per cache line: the alignment of the working layout


cdef inline Py_ssize_t line_up(Py_ssize_t n, Py_ssize_t itemsize) noexcept nogil:
    """``n`` elements rounded up to a whole number of cache lines."""
    cdef Py_ssize_t per_line = LINE // itemsize
    return (n + per_line - 1) // per_line * per_line


cdef int net_init(Net* net, const int64_t[::1] sizes, const int64_t[::1] acts,
                  Py_ssize_t itemsize) except -1:
    """Fill ``net`` from ``sizes``/``acts`` (checked); allocates the offset arrays.

    The working layout: every kernel row, bias, activation row and delta
    row starts on a 64-byte boundary (buffers are allocated line-aligned),
    so no vector load splits a cache line -- the parameters the caller hands
    over start anywhere (NumPy aligns to 16 bytes) and a split load costs
    about twice a plain one.  A kernel narrower than a line keeps dense rows
    (a one-unit head stays a contiguous column).  Pair with :c:func:`net_free`.
    """
    cdef Py_ssize_t n_layers = sizes.shape[0] - 1
    cdef Py_ssize_t l, offset = 0, work = 0, width = 0, total = 0, n_in, n_out
    if n_layers < 1:
        raise ValueError(f"sizes: expected at least 2 layer widths; found {sizes.shape[0]}.")
    if acts.shape[0] != n_layers:
        raise ValueError(f"acts: expected {n_layers} activation codes (one per layer); "
                         f"found {acts.shape[0]}.")
    for l in range(n_layers + 1):
        if sizes[l] < 1:
            raise ValueError(f"sizes: expected positive widths; found {sizes[l]} at {l}.")
    for l in range(n_layers):
        if acts[l] < LINEAR or acts[l] > TANH:
            raise ValueError(f"acts: unknown activation code {acts[l]} at layer {l}.")
    net.n_layers = n_layers
    net.sizes = &sizes[0]
    net.acts = &acts[0]
    net.kernel_off = <Py_ssize_t*> malloc(6 * (n_layers + 1) * sizeof(Py_ssize_t))
    if net.kernel_off == NULL:
        raise MemoryError()
    net.bias_off = net.kernel_off + (n_layers + 1)
    net.wk_off = net.bias_off + (n_layers + 1)
    net.wb_off = net.wk_off + (n_layers + 1)
    net.ldk = net.wb_off + (n_layers + 1)
    net.act_off = net.ldk + (n_layers + 1)
    net.act_off[0] = -1  # the inputs are never stored in the activation rows
    for l in range(n_layers + 1):
        if sizes[l] > width:
            width = sizes[l]
        if l:
            net.act_off[l] = total
            total += line_up(sizes[l], itemsize)
    for l in range(n_layers):
        n_in = sizes[l]
        n_out = sizes[l + 1]
        net.kernel_off[l] = offset
        net.bias_off[l] = offset + n_in * n_out
        offset += n_in * n_out + n_out
        net.ldk[l] = n_out if n_out * itemsize < LINE else line_up(n_out, itemsize)
        net.wk_off[l] = work
        work = line_up(work + n_in * net.ldk[l], itemsize)
        net.wb_off[l] = work
        work = line_up(work + n_out, itemsize)
    net.n_params = offset
    net.n_work = work
    net.max_width = width
    net.ldd = line_up(width, itemsize)
    net.total_width = total
    return 0


cdef inline void net_free(Net* net) noexcept:
    free(net.kernel_off)
    net.kernel_off = NULL


cdef void* alloc(Py_ssize_t n_bytes) except NULL:
    """``malloc`` that raises MemoryError instead of returning NULL."""
    cdef void* p = malloc(n_bytes if n_bytes > 0 else 1)
    if p == NULL:
        raise MemoryError(f"could not allocate {n_bytes} bytes of scratch space")
    return p


cdef void* alloc_lines(Py_ssize_t n_bytes, void** raw) except NULL:
    """Zeroed scratch space starting on a cache line; ``free(raw[0])`` releases it."""
    cdef char* p = <char*> alloc(n_bytes + LINE)
    raw[0] = p
    p = p + (LINE - <Py_ssize_t> (<uintptr_t> p % LINE)) % LINE
    memset(p, 0, n_bytes)
    return p


cdef inline void to_work(const floating* flat, floating* work, const Net* net) noexcept nogil:
    """Copy a parameter-shaped buffer from the caller's layout into the working one."""
    cdef Py_ssize_t l, i, n_in, n_out
    for l in range(net.n_layers):
        n_in = net.sizes[l]
        n_out = net.sizes[l + 1]
        for i in range(n_in):
            memcpy(work + net.wk_off[l] + i * net.ldk[l], flat + net.kernel_off[l] + i * n_out,
                   n_out * sizeof(floating))
        memcpy(work + net.wb_off[l], flat + net.bias_off[l], n_out * sizeof(floating))


cdef inline void from_work(const floating* work, floating* flat, const Net* net) noexcept nogil:
    """Copy a parameter-shaped buffer from the working layout back into the caller's."""
    cdef Py_ssize_t l, i, n_in, n_out
    for l in range(net.n_layers):
        n_in = net.sizes[l]
        n_out = net.sizes[l + 1]
        for i in range(n_in):
            memcpy(flat + net.kernel_off[l] + i * n_out, work + net.wk_off[l] + i * net.ldk[l],
                   n_out * sizeof(floating))
        memcpy(flat + net.bias_off[l], work + net.wb_off[l], n_out * sizeof(floating))


cdef int bad_row(Py_ssize_t row, Py_ssize_t n_rows) except -1 nogil:
    """Debug builds only: raise IndexError for a row index outside ``[0, n_rows)``."""
    with gil:
        raise IndexError(f"order: row index {row} is outside [0, {n_rows}) (caught by the "
                         "debug build; the adapter must refuse such indices).")


# =========================================================================== element-wise

cdef inline void activate(floating* z, Py_ssize_t n, int64_t code) noexcept nogil:
    """Apply activation ``code`` to ``z[:n]`` in place (one loop per activation)."""
    cdef Py_ssize_t j
    cdef floating one = 1   # typed constant: a bare 1 would be a C double
    if code == RELU:
        for j in range(n):
            # np.maximum(z, 0): negatives become 0; NaN fails the test and stays NaN
            if z[j] < 0:
                z[j] = 0
    elif code == SIGMOID:
        for j in range(n):
            # exp(-z) overflows to inf for very negative z and 1 / (1 + inf) = 0 is the limit
            if floating is float:
                z[j] = one / (one + expf(-z[j]))
            else:
                z[j] = one / (one + exp(-z[j]))
    elif code == TANH:
        for j in range(n):
            if floating is float:
                z[j] = tanhf(z[j])
            else:
                z[j] = tanh(z[j])


cdef inline void times_derivative(floating* d, const floating* a, Py_ssize_t n,
                                  int64_t code) noexcept nogil:
    """``d[:n] *= act'(z)``, the derivative written through the output ``a``."""
    cdef Py_ssize_t j
    cdef floating one = 1
    if code == RELU:
        for j in range(n):
            # relu'(0) = 0 (Keras); a multiply, not a select: inf * 0 is NaN as in NumPy
            d[j] *= <floating> (a[j] > 0)
    elif code == SIGMOID:
        for j in range(n):
            d[j] *= a[j] * (one - a[j])
    elif code == TANH:
        for j in range(n):
            d[j] *= one - a[j] * a[j]


cdef inline floating absval(floating x) noexcept nogil:
    if floating is float:
        return fabsf(x)
    else:
        return fabs(x)


cdef inline floating sign(floating e) noexcept nogil:
    """np.sign: -1, 0 or 1, and NaN for NaN."""
    if e > 0:
        return 1
    if e < 0:
        return -1
    return e  # 0 stays 0, NaN stays NaN


cdef inline floating loss_value(floating p, floating y, int code) noexcept nogil:
    """Element-wise loss (before the mean over outputs), in the parameter dtype."""
    cdef floating e = p - y, a, pc, eps, hi
    cdef floating one = 1
    if code == MSE:
        return e * e
    if code == MAE:
        return absval(e)
    if code == HUBER:
        a = absval(e)
        if a <= <floating> HUBER_DELTA:
            return <floating> 0.5 * e * e
        # NaN lands here and stays NaN
        return <floating> HUBER_DELTA * (a - <floating> (0.5 * HUBER_DELTA))
    # binary cross-entropy on p clipped to [eps, 1 - eps]; NaN passes the clip
    if floating is float:
        eps, hi = BCE_LO_F, BCE_HI_F
    else:
        eps, hi = BCE_LO_D, BCE_HI_D
    pc = p
    if pc < eps:
        pc = eps
    elif pc > hi:
        pc = hi
    if floating is float:
        return -(y * logf(pc) + (one - y) * logf(one - pc))
    else:
        return -(y * log(pc) + (one - y) * log(one - pc))


cdef inline floating loss_grad(floating p, floating y, int code) noexcept nogil:
    """Element-wise d loss / d p (before the mean over outputs)."""
    cdef floating e = p - y, eps, hi
    cdef floating one = 1, two = 2
    if code == MSE:
        return two * e
    if code == MAE:
        return sign(e)
    if code == HUBER:
        if absval(e) <= <floating> HUBER_DELTA:
            return e
        return <floating> HUBER_DELTA * sign(e)
    if floating is float:
        eps, hi = BCE_LO_F, BCE_HI_F
    else:
        eps, hi = BCE_LO_D, BCE_HI_D
    if p >= eps and p <= hi:
        return -(y / p - (one - y) / (one - p))
    return 0  # the clip passes no gradient (NaN p included)


cdef inline double output_delta(const floating* p, const floating* y, floating* d,
                                Py_ssize_t n, int loss, floating scale) noexcept nogil:
    """Loss of one row and its delta at the output (before the activation's derivative).

    Writes ``d[j] = dloss/dp_j * scale`` (``scale`` = 1 / (rows * outputs)
    rounded to the dtype, as NumPy rounds it) and returns the row's summed
    loss in float64 (``value.sum(dtype=np.float64)``).
    """
    cdef Py_ssize_t j
    cdef double total = 0
    cdef floating e, two_scale
    if loss == MSE:
        # (2 e) * scale == e * (2 scale) exactly (doubling is exact): one multiply fewer
        # on the critical path of a tiny net
        two_scale = scale + scale
        for j in range(n):
            e = p[j] - y[j]
            total += <double> (e * e)
            d[j] = e * two_scale
        return total
    for j in range(n):
        total += <double> loss_value(p[j], y[j], loss)
        d[j] = loss_grad(p[j], y[j], loss) * scale
    return total


cdef inline double row_loss(const floating* p, const floating* y, Py_ssize_t n,
                            int loss) noexcept nogil:
    """The summed loss of one row (no gradient), in float64."""
    cdef Py_ssize_t j
    cdef double total = 0
    for j in range(n):
        total += <double> loss_value(p[j], y[j], loss)
    return total


# =========================================================================== optimizer

cdef struct Update:
    # One optimizer's hyper-parameters, formed in float64 like the numpy backend's
    # Python floats; each is rounded to the parameter dtype where it is used.
    int kind
    double lr
    double momentum      # SGD_MOMENTUM / SGD_NESTEROV / RMSPROP_MOMENTUM
    double decay         # 1 - beta_1 (Adam) or rho (RMSprop)
    double decay2        # 1 - beta_2 (Adam) or 1 - rho (RMSprop)
    double beta_1
    double beta_2
    double epsilon
    double alpha         # Adam's bias-corrected step size at the current t


cdef int update_init(Update* u, int kind, const double[::1] hyper) except -1:
    if kind < SGD or kind > RMSPROP_MOMENTUM:
        raise ValueError(f"optimizer: unknown code {kind}; expected 0..5 (see _codes.py).")
    if hyper.shape[0] < 4:
        raise ValueError(f"hyper: expected 4 float64 values [lr, h1, h2, eps]; "
                         f"found {hyper.shape[0]}.")
    u.kind = kind
    u.lr = hyper[0]
    u.momentum = 0
    u.decay = 0
    u.decay2 = 0
    u.beta_1 = 0
    u.beta_2 = 0
    u.epsilon = hyper[3]
    u.alpha = 0
    if kind == SGD_MOMENTUM or kind == SGD_NESTEROV:
        u.momentum = hyper[1]
    elif kind == ADAM:
        u.beta_1 = hyper[1]
        u.beta_2 = hyper[2]
        u.decay = 1 - hyper[1]
        u.decay2 = 1 - hyper[2]
    elif kind == RMSPROP or kind == RMSPROP_MOMENTUM:
        u.decay = hyper[1]
        u.decay2 = 1 - hyper[1]
        u.momentum = hyper[2]
    return 0


cdef inline void update_step(Update* u, int64_t step) noexcept nogil:
    """Per-step coefficients: Adam's ``t = step + 1`` (``step`` counts from 0)."""
    cdef double t
    if u.kind == ADAM:
        t = <double> (step + 1)
        # pow, as Python's ``beta ** t``, rather than a running product: the same rounding
        u.alpha = u.lr * sqrt(1 - pow(u.beta_2, t)) / (1 - pow(u.beta_1, t))


cdef inline floating flush_subnormal(floating x) noexcept nogil:
    """``x``, or 0 when ``|x|`` is below the dtype's smallest normal number.

    Optimizer state of a weight whose gradient stays zero decays into the
    subnormal range and stays there; subnormal arithmetic takes a slow path
    on x86 (measured 2.5-3x on the whole Adam update).  The Numba twin's
    ``TINY`` explains why the weights do not change.  NaN compares False and
    is kept.
    """
    if floating is float:
        if fabsf(x) < FLT_MIN:
            return 0
    else:
        if fabs(x) < DBL_MIN:
            return 0
    return x


cdef inline void apply_update(floating* w, const floating* g, floating* s0, floating* s1,
                              Py_ssize_t n, const Update* u) noexcept nogil:
    """One optimizer step (Keras 3 formulas) on ``n`` parameters ``w`` with gradient ``g``.

    ``s0``/``s1`` are the matching slices of the two state slots (see
    ``_codes.py``).  The order of operations is ``numpy_._apply_update``'s;
    the state is stored through :c:func:`flush_subnormal`.
    """
    cdef Py_ssize_t j
    cdef floating lr = <floating> u.lr
    cdef floating mu, c1, c2, eps, alpha, v, m, inc
    if u.kind == SGD:
        for j in range(n):
            w[j] -= lr * g[j]
    elif u.kind == SGD_MOMENTUM:
        mu = <floating> u.momentum
        for j in range(n):
            v = s0[j] * mu - lr * g[j]
            w[j] += v
            s0[j] = flush_subnormal(v)
    elif u.kind == SGD_NESTEROV:
        mu = <floating> u.momentum
        for j in range(n):
            v = s0[j] * mu - lr * g[j]
            w[j] += mu * v - lr * g[j]
            s0[j] = flush_subnormal(v)
    elif u.kind == ADAM:
        c1 = <floating> u.decay
        c2 = <floating> u.decay2
        eps = <floating> u.epsilon
        alpha = <floating> u.alpha
        for j in range(n):
            m = s0[j] + (g[j] - s0[j]) * c1
            v = s1[j] + (g[j] * g[j] - s1[j]) * c2
            # epsilon added to the root of the uncorrected v (Keras, not PyTorch)
            if floating is float:
                w[j] -= alpha * m / (sqrtf(v) + eps)
            else:
                w[j] -= alpha * m / (sqrt(v) + eps)
            s0[j] = flush_subnormal(m)
            s1[j] = flush_subnormal(v)
    else:
        # RMSprop (Keras): epsilon inside the square root
        c1 = <floating> u.decay
        c2 = <floating> u.decay2
        eps = <floating> u.epsilon
        mu = <floating> u.momentum
        for j in range(n):
            v = s0[j] * c1 + c2 * (g[j] * g[j])
            if floating is float:
                inc = lr * g[j] / sqrtf(v + eps)
            else:
                inc = lr * g[j] / sqrt(v + eps)
            s0[j] = flush_subnormal(v)
            if u.kind == RMSPROP_MOMENTUM:
                inc = s1[j] * mu + inc
                s1[j] = flush_subnormal(inc)
            w[j] -= inc


# =========================================================================== dense algebra

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
                                     bint propagate, const Update* u) noexcept nogil:
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
        apply_update(row, g, S0 + i * ldk, S1 + i * ldk, n_out, u)
    apply_update(b, d, Sb0, Sb1, n_out, u)


# =========================================================================== prefetching

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
                              Py_ssize_t n0, Py_ssize_t nL) noexcept nogil:
    """Ask for row ``row`` of ``X`` (its first 8 cache lines) and of ``Y`` (its first)."""
    cdef const char* start = <const char*> (X + row * n0)
    cdef Py_ssize_t n_bytes = n0 * <Py_ssize_t> sizeof(floating), off = 0
    if n_bytes > 8 * 64:
        n_bytes = 8 * 64
    while off < n_bytes:
        FASTBP_PREFETCH(start + off)
        off += 64
    FASTBP_PREFETCH(start + n_bytes - 1)   # the line a straddling row ends in
    FASTBP_PREFETCH(Y + row * nL)


# =========================================================================== training paths

# The tiny-net kernels take their layer widths as types: ``width1`` .. ``width4`` are
# empty-looking C structs of 1..4 bytes, so inside a specialisation ``sizeof(Wa)`` is
# a compile-time constant.  Cython's fused types then play the part of C++ templates:
# one copy of each kernel per width combination, with literal loop bounds, fully
# unrolled, every weight a scalar the compiler keeps in a register.
cdef extern from *:
    """
    typedef struct { char c[1]; } fastbp_width1;
    typedef struct { char c[2]; } fastbp_width2;
    typedef struct { char c[3]; } fastbp_width3;
    typedef struct { char c[4]; } fastbp_width4;
    typedef struct { char c[1]; } fastbp_act_linear;
    typedef struct { char c[1]; } fastbp_act_relu;
    """
    ctypedef struct width1 "fastbp_width1":
        pass
    ctypedef struct width2 "fastbp_width2":
        pass
    ctypedef struct width3 "fastbp_width3":
        pass
    ctypedef struct width4 "fastbp_width4":
        pass
    ctypedef struct act_linear "fastbp_act_linear":
        pass
    ctypedef struct act_relu "fastbp_act_relu":
        pass

ctypedef fused Wa:   # input width of a tiny net
    width1
    width2
    width3
    width4

ctypedef fused Wb:   # width of its first layer
    width1
    width2
    width3
    width4

ctypedef fused Wc:   # width of its second layer (two-layer nets)
    width1
    width2
    width3
    width4

ctypedef fused Act:  # activation of its hidden layer (the output layer is linear)
    act_linear
    act_relu


cdef inline void tiny_layer(const floating* a, const floating* K, const floating* b,
                            floating* z, Py_ssize_t n_in, Py_ssize_t n_out,
                            bint relu) noexcept nogil:
    """``z = act(a @ K + b)`` with literal widths (after inlining into a tiny kernel).

    The sum starts from the bias, so every term is one FMA and the chain
    from one sample's weights to the next sample's outputs -- which bounds a
    tiny net -- is one add shorter per layer.  (NumPy adds the bias last;
    the two orders agree to rounding.)  Only linear and relu reach here, and
    ``relu`` is a literal in every caller (the ``Act`` type), so a linear
    layer carries no test at all; relu is written ``0 if 0 > z else z``, one
    branch-free ``maxsd`` that lets NaN through as ``np.maximum`` does.
    """
    cdef Py_ssize_t i, j
    cdef floating s, zero = 0
    for j in range(n_out):
        s = b[j]
        for i in range(n_in):
            s = s + a[i] * K[i * n_out + j]
        if relu:
            s = zero if zero > s else s
        z[j] = s


cdef inline void tiny_update(floating* K, floating* b, const floating* a, const floating* d,
                             Py_ssize_t n_in, Py_ssize_t n_out, floating lr) noexcept nogil:
    """Plain SGD on a tiny layer: ``K -= lr * outer(a, d)``, ``b -= lr * d``."""
    cdef Py_ssize_t i, j
    for i in range(n_in):
        for j in range(n_out):
            K[i * n_out + j] -= lr * (a[i] * d[j])
    for j in range(n_out):
        b[j] -= lr * d[j]


cdef inline double tiny_delta(const floating* p, const floating* y, floating* e,
                              Py_ssize_t n) noexcept nogil:
    """The one loss the tiny kernels take, mse: ``e = p - y`` and the summed ``e**2``."""
    cdef Py_ssize_t j
    cdef double total = 0
    for j in range(n):
        e[j] = p[j] - y[j]
        total += <double> (e[j] * e[j])
    return total


cdef inline bint tiny_eligible(const Net* net, int loss, const Update* u,
                               Py_ssize_t batch_size) noexcept nogil:
    """Does this configuration run on a tiny kernel?

    Plain SGD, batch size 1, one or two layers no wider than ``TINY``, a
    linear or relu hidden layer, a linear output layer and mse: the common
    small regression net.  Anything else runs on :c:func:`train_single`.
    (Each supported choice is a separate compiled copy, and a libm call --
    ``exp``, ``tanh``, ``log`` -- anywhere in the loop, even on a branch never
    taken, clobbers every vector register and makes the compiler keep the
    weights in memory.)
    """
    if batch_size != 1 or u.kind != SGD or net.n_layers > TINY_LAYERS:
        return False
    if net.max_width > TINY or loss != MSE or net.acts[net.n_layers - 1] != LINEAR:
        return False
    return net.n_layers == 1 or net.acts[0] == LINEAR or net.acts[0] == RELU


cdef inline int train_tiny2(Wa* wa, Wb* wb, Wc* wc, floating* params, const Net* net,
                            const floating* X, const floating* Y, Py_ssize_t n_rows,
                            const int64_t* order, Py_ssize_t n_order, int loss, floating lr,
                            double* loss_out, Py_ssize_t* done_out) except -1 nogil:
    """Per-sample plain SGD for a two-layer net of widths ``Wa``-``Wb``-``Wc`` (each <= 4).

    The Numba twin generates scalar code per architecture; this is the same
    idea done with fused types.  The hidden activation (linear or relu) is a
    type too: one copy of the loop for each, so a linear layer costs no
    test at all (left to the compiler, the relu test got merged with the
    data-dependent ``z < 0`` into one unpredictable branch).  The output
    layer is linear (see :c:func:`tiny_eligible`).
    """
    if net.acts[0] == RELU:
        return tiny2_run(wa, wb, wc, <act_relu*> NULL, params, net, X, Y, n_rows, order,
                         n_order, lr, loss_out, done_out)
    return tiny2_run(wa, wb, wc, <act_linear*> NULL, params, net, X, Y, n_rows, order,
                     n_order, lr, loss_out, done_out)


cdef int tiny2_run(Wa* wa, Wb* wb, Wc* wc, Act* act, floating* params, const Net* net,
                   const floating* X, const floating* Y, Py_ssize_t n_rows,
                   const int64_t* order, Py_ssize_t n_order, floating lr, double* loss_out,
                   Py_ssize_t* done_out) except -1 nogil:
    """The loop of :c:func:`train_tiny2` for the hidden activation ``Act``.

    The weights live in local arrays indexed by constants -- registers --
    for the whole chunk and are written back at the end, so the per-sample
    dependency chain runs through registers only.
    """
    cdef Py_ssize_t NA = sizeof(Wa), NB = sizeof(Wb), NC = sizeof(Wc)
    cdef floating K1[16]
    cdef floating b1[4]
    cdef floating K2[16]
    cdef floating b2[4]
    cdef floating x[4]
    cdef floating h[4]
    cdef floating o[4]
    cdef floating d[4]
    cdef floating p[4]
    cdef floating e[4]
    cdef floating lx[4]
    cdef floating s
    cdef Py_ssize_t i, j, k, row
    cdef Py_ssize_t ahead = prefetch_distance(net.n_params)
    # 2 / n rounded is exactly 2 * (1 / n rounded): doubling is exact
    cdef floating two_scale = <floating> (2.0 / NC)
    cdef double total = 0, value
    cdef const floating* xr
    cdef floating* P2 = params + NA * NB + NB
    for i in range(NA * NB):
        K1[i] = params[i]
    for j in range(NB):
        b1[j] = params[NA * NB + j]
    for i in range(NB * NC):
        K2[i] = P2[i]
    for j in range(NC):
        b2[j] = P2[NB * NC + j]
    k = 0
    while k < n_order:
        if k + ahead < n_order:
            prefetch_row(X, Y, order[k + ahead], NA, NC)
        row = order[k]
        if FASTBP_DEBUG and (row < 0 or row >= n_rows):
            bad_row(row, n_rows)
        xr = X + row * NA
        for i in range(NA):
            x[i] = xr[i]
        for i in range(NA):
            lx[i] = lr * x[i]      # off the critical path: the row is known early
        tiny_layer(x, K1, b1, h, NA, NB, Act is act_relu)
        tiny_layer(h, K2, b2, o, NB, NC, False)
        value = tiny_delta(o, Y + row * NC, e, NC) / NC
        if not isfinite(value):
            break
        total += value
        # The chain from one sample's first-layer weights to the next sample's
        # runs through e, p and the update; two regroupings (each a rounding-level
        # change, like the Numba twin's reassociation) keep it short:
        #   p_j = sum_m K2[j, m] d_m with d = e * 2s becomes sum_m (K2[j, m] 2s) e_m
        #   (the OLD weights, known early), and K1[i, j] -= lr (x_i p_j) becomes
        #   K1[i, j] -= (lr x_i) p_j: one FMA after p.
        for j in range(NB):
            s = (K2[j * NC] * two_scale) * e[0]
            for i in range(1, NC):
                s = s + (K2[j * NC + i] * two_scale) * e[i]
            p[j] = s
        for i in range(NC):
            d[i] = e[i] * two_scale
        tiny_update(K2, b2, h, d, NB, NC, lr)
        if Act is act_relu:
            times_derivative(p, h, NB, RELU)
        for i in range(NA):
            for j in range(NB):
                K1[i * NB + j] -= lx[i] * p[j]
        for j in range(NB):
            b1[j] -= lr * p[j]
        k += 1
    for i in range(NA * NB):
        params[i] = K1[i]
    for j in range(NB):
        params[NA * NB + j] = b1[j]
    for i in range(NB * NC):
        P2[i] = K2[i]
    for j in range(NC):
        P2[NB * NC + j] = b2[j]
    loss_out[0] = total
    done_out[0] = k
    return 0


cdef inline int train_tiny1(Wa* wa, Wb* wb, floating* params, const Net* net,
                            const floating* X, const floating* Y, Py_ssize_t n_rows,
                            const int64_t* order, Py_ssize_t n_order, int loss, floating lr,
                            double* loss_out, Py_ssize_t* done_out) except -1 nogil:
    """As :c:func:`train_tiny2` for a single (linear) layer of widths ``Wa``-``Wb``."""
    cdef Py_ssize_t NA = sizeof(Wa), NB = sizeof(Wb)
    cdef floating K1[16]
    cdef floating b1[4]
    cdef floating x[4]
    cdef floating h[4]
    cdef floating d[4]
    cdef floating e[4]
    cdef Py_ssize_t i, j, k, row
    cdef Py_ssize_t ahead = prefetch_distance(net.n_params)
    cdef floating two_scale = <floating> (2.0 / NB)
    cdef double total = 0, value
    cdef const floating* xr
    for i in range(NA * NB):
        K1[i] = params[i]
    for j in range(NB):
        b1[j] = params[NA * NB + j]
    k = 0
    while k < n_order:
        if k + ahead < n_order:
            prefetch_row(X, Y, order[k + ahead], NA, NB)
        row = order[k]
        if FASTBP_DEBUG and (row < 0 or row >= n_rows):
            bad_row(row, n_rows)
        xr = X + row * NA
        for i in range(NA):
            x[i] = xr[i]
        tiny_layer(x, K1, b1, h, NA, NB, False)
        value = tiny_delta(h, Y + row * NB, e, NB) / NB
        if not isfinite(value):
            break
        total += value
        for j in range(NB):
            d[j] = e[j] * two_scale
        tiny_update(K1, b1, x, d, NA, NB, lr)
        k += 1
    for i in range(NA * NB):
        params[i] = K1[i]
    for j in range(NB):
        params[NA * NB + j] = b1[j]
    loss_out[0] = total
    done_out[0] = k
    return 0


# Dispatch on the widths, one level per layer, down to the specialised kernel.
# Dispatch on the widths, one level per layer, down to the specialised kernel.
cdef int tiny_c(Wa* wa, Wb* wb, floating* params, const Net* net, const floating* X,
                const floating* Y, Py_ssize_t n_rows, const int64_t* order,
                Py_ssize_t n_order, int loss, floating lr, double* loss_out,
                Py_ssize_t* done_out) except -1 nogil:
    cdef Py_ssize_t nc = net.sizes[2]
    if nc == 1:
        return train_tiny2(wa, wb, <width1*> NULL, params, net, X, Y, n_rows, order, n_order,
                           loss, lr, loss_out, done_out)
    if nc == 2:
        return train_tiny2(wa, wb, <width2*> NULL, params, net, X, Y, n_rows, order, n_order,
                           loss, lr, loss_out, done_out)
    if nc == 3:
        return train_tiny2(wa, wb, <width3*> NULL, params, net, X, Y, n_rows, order, n_order,
                           loss, lr, loss_out, done_out)
    return train_tiny2(wa, wb, <width4*> NULL, params, net, X, Y, n_rows, order, n_order,
                       loss, lr, loss_out, done_out)


cdef inline int tiny_bc(Wa* wa, Wb* wb, floating* params, const Net* net, const floating* X,
                        const floating* Y, Py_ssize_t n_rows, const int64_t* order,
                        Py_ssize_t n_order, int loss, floating lr, double* loss_out,
                        Py_ssize_t* done_out) except -1 nogil:
    if net.n_layers == 1:
        return train_tiny1(wa, wb, params, net, X, Y, n_rows, order, n_order, loss, lr,
                           loss_out, done_out)
    return tiny_c(wa, wb, params, net, X, Y, n_rows, order, n_order, loss, lr, loss_out,
                  done_out)


cdef int tiny_b(Wa* wa, floating* params, const Net* net, const floating* X,
                const floating* Y, Py_ssize_t n_rows, const int64_t* order,
                Py_ssize_t n_order, int loss, floating lr, double* loss_out,
                Py_ssize_t* done_out) except -1 nogil:
    cdef Py_ssize_t nb = net.sizes[1]
    if nb == 1:
        return tiny_bc(wa, <width1*> NULL, params, net, X, Y, n_rows, order, n_order, loss,
                       lr, loss_out, done_out)
    if nb == 2:
        return tiny_bc(wa, <width2*> NULL, params, net, X, Y, n_rows, order, n_order, loss,
                       lr, loss_out, done_out)
    if nb == 3:
        return tiny_bc(wa, <width3*> NULL, params, net, X, Y, n_rows, order, n_order, loss,
                       lr, loss_out, done_out)
    return tiny_bc(wa, <width4*> NULL, params, net, X, Y, n_rows, order, n_order, loss, lr,
                   loss_out, done_out)


cdef int tiny_a(floating* params, const Net* net, const floating* X, const floating* Y,
                Py_ssize_t n_rows, const int64_t* order, Py_ssize_t n_order, int loss,
                floating lr, double* loss_out, Py_ssize_t* done_out) except -1 nogil:
    """Run the tiny kernel for this net (1 or 2 layers, widths <= ``TINY``)."""
    cdef Py_ssize_t na = net.sizes[0]
    if na == 1:
        return tiny_b(<width1*> NULL, params, net, X, Y, n_rows, order, n_order, loss, lr,
                      loss_out, done_out)
    if na == 2:
        return tiny_b(<width2*> NULL, params, net, X, Y, n_rows, order, n_order, loss, lr,
                      loss_out, done_out)
    if na == 3:
        return tiny_b(<width3*> NULL, params, net, X, Y, n_rows, order, n_order, loss, lr,
                      loss_out, done_out)
    return tiny_b(<width4*> NULL, params, net, X, Y, n_rows, order, n_order, loss, lr,
                  loss_out, done_out)


cdef int train_single(floating* wp, const Net* net, const floating* X,
                      const floating* Y, Py_ssize_t n_rows, const int64_t* order,
                      Py_ssize_t n_order, int loss, Update* u, floating* ws0,
                      floating* ws1, int64_t step, floating* work, double* loss_out,
                      Py_ssize_t* done_out) except -1 nogil:
    """Per-sample training (batch size 1): forward, loss, fused backward + update.

    ``wp``, ``ws0``, ``ws1``: parameters and state slots in the working
    layout.  ``work`` (line-aligned) holds ``total_width + 3 * ldd`` values:
    one row of activations, two delta buffers and a gradient row.
    """
    cdef Py_ssize_t n0 = net.sizes[0], nL = net.sizes[net.n_layers], W = net.ldd
    cdef Py_ssize_t k, l, j, row, n_in, n_out
    cdef Py_ssize_t ahead = prefetch_distance(net.n_params)
    cdef floating* act = work
    cdef floating* delta = act + net.total_width
    cdef floating* delta_prev = delta + W
    cdef floating* g = delta_prev + W
    cdef floating* tmp
    cdef floating* K
    cdef floating* b
    cdef const floating* x
    cdef const floating* a
    cdef floating lr = <floating> u.lr
    cdef floating scale = <floating> (1.0 / nL)
    cdef double total = 0, value
    k = 0
    while k < n_order:
        if k + ahead < n_order:
            prefetch_row(X, Y, order[k + ahead], n0, nL)
        row = order[k]
        if FASTBP_DEBUG and (row < 0 or row >= n_rows):
            bad_row(row, n_rows)
        x = X + row * n0
        a = x
        for l in range(net.n_layers):
            n_out = net.sizes[l + 1]
            dense_row(a, wp + net.wk_off[l], net.ldk[l], wp + net.wb_off[l],
                      act + net.act_off[l + 1], net.sizes[l], n_out)
            activate(act + net.act_off[l + 1], n_out, net.acts[l])
            a = act + net.act_off[l + 1]
        value = output_delta(a, Y + row * nL, delta, nL, loss, scale) / nL
        if not isfinite(value):
            break
        total += value
        update_step(u, step)
        for l in range(net.n_layers - 1, -1, -1):
            n_in = net.sizes[l]
            n_out = net.sizes[l + 1]
            times_derivative(delta, act + net.act_off[l + 1], n_out, net.acts[l])
            a = x if l == 0 else act + net.act_off[l]
            K = wp + net.wk_off[l]
            b = wp + net.wb_off[l]
            if u.kind == SGD:
                backward_row_sgd(K, net.ldk[l], a, delta, delta_prev, n_in, n_out, lr, l > 0)
                for j in range(n_out):
                    b[j] -= lr * delta[j]
            else:
                backward_row_update(K, net.ldk[l], b, ws0 + net.wk_off[l], ws1 + net.wk_off[l],
                                    ws0 + net.wb_off[l], ws1 + net.wb_off[l], a, delta,
                                    delta_prev, g, n_in, n_out, l > 0, u)
            tmp = delta
            delta = delta_prev
            delta_prev = tmp
        step += 1
        k += 1
    loss_out[0] = total
    done_out[0] = k
    return 0


cdef int train_batch(floating* wp, const Net* net, const floating* X, const floating* Y,
                     Py_ssize_t n_rows, const int64_t* order, Py_ssize_t n_order,
                     Py_ssize_t batch_size, int loss, Update* u, floating* ws0,
                     floating* ws1, int64_t step, floating* work, double* loss_out,
                     Py_ssize_t* done_out) except -1 nogil:
    """Minibatch training: per batch, forward, loss, gradient of the batch mean, update.

    ``wp``, ``ws0``, ``ws1``: parameters and state in the working layout.
    ``work`` (line-aligned) holds, for ``B = min(batch_size, n_order)`` rows,
    the gathered inputs (``B * line_up(n0)``), every layer's activations
    (``B * total_width``), two delta slabs (``B * ldd`` each), a transposed
    kernel (``max_width * ldd``) and the gradient (``n_work``), in that order.
    """
    cdef Py_ssize_t n0 = net.sizes[0], nL = net.sizes[net.n_layers], W = net.ldd
    cdef Py_ssize_t ld = net.total_width, ld0 = line_up(n0, sizeof(floating))
    cdef Py_ssize_t B = batch_size if batch_size < n_order else n_order
    cdef Py_ssize_t start = 0, nb, r, row
    cdef floating* X0 = work
    cdef floating* act = X0 + B * ld0
    cdef floating* delta = act + B * ld
    cdef floating* delta_prev = delta + B * W
    cdef floating* KT = delta_prev + B * W
    cdef floating* wg = KT + line_up(net.max_width * W, sizeof(floating))
    cdef floating* out
    cdef floating scale
    cdef double total = 0, value
    while start < n_order:
        nb = n_order - start
        if nb > batch_size:
            nb = batch_size
        for r in range(start + nb, start + 2 * nb):
            # the next batch's rows, while this one computes
            if r < n_order:
                prefetch_row(X, Y, order[r], n0, nL)
        for r in range(nb):
            row = order[start + r]
            if FASTBP_DEBUG and (row < 0 or row >= n_rows):
                bad_row(row, n_rows)
            memcpy(X0 + r * ld0, X + row * n0, n0 * sizeof(floating))
        forward_rows(wp, net, nb, X0, ld0, act, ld)
        scale = <floating> ((1.0 / nb) / nL)
        value = 0
        out = act + net.act_off[net.n_layers]
        for r in range(nb):
            value += output_delta(out + r * ld, Y + order[start + r] * nL, delta + r * W, nL,
                                  loss, scale)
        value /= nL
        if not isfinite(value):
            break
        total += value
        backward_rows(wp, wg, net, nb, X0, ld0, act, ld, delta, delta_prev, KT, False)
        update_step(u, step)
        # padding entries have zero gradient and zero state: every rule leaves them 0
        apply_update(wp, wg, ws0, ws1, net.n_work, u)
        step += 1
        start += nb
    loss_out[0] = total
    done_out[0] = start
    return 0


# =========================================================================== entry points

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
    cdef Py_ssize_t n = X.shape[0], start, nb, r, ld, nL, n0
    cdef floating* wp
    cdef floating* act
    cdef void* raw = NULL
    net_init(&net, sizes, acts, sizeof(floating))
    try:
        check_shapes(&net, params.shape[0], n, X.shape[1], -1, -1)
        nL = net.sizes[net.n_layers]
        if out.shape[0] != n or out.shape[1] != nL:
            raise ValueError(f"out: expected shape ({n}, {nL}); "
                             f"found ({out.shape[0]}, {out.shape[1]}).")
        if n == 0:
            return
        ld = net.total_width
        n0 = net.sizes[0]
        wp = <floating*> alloc_lines((net.n_work + BLOCK_ROWS * ld) * sizeof(floating), &raw)
        act = wp + net.n_work
        try:
            with nogil:
                to_work(&params[0], wp, &net)
                for start in range(0, n, 64):
                    nb = n - start if n - start < BLOCK_ROWS else BLOCK_ROWS
                    forward_rows(wp, &net, nb, &X[start, 0], n0, act, ld)
                    for r in range(nb):
                        memcpy(&out[start + r, 0], act + r * ld + net.act_off[net.n_layers],
                               nL * sizeof(floating))
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
    cdef Py_ssize_t n = X.shape[0], start, nb, r, ld, nL, n0
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
        n0 = net.sizes[0]
        nL = net.sizes[net.n_layers]
        wp = <floating*> alloc_lines((net.n_work + BLOCK_ROWS * ld) * sizeof(floating), &raw)
        act = wp + net.n_work
        try:
            with nogil:
                to_work(&params[0], wp, &net)
                for start in range(0, n, 64):
                    nb = n - start if n - start < BLOCK_ROWS else BLOCK_ROWS
                    forward_rows(wp, &net, nb, &X[start, 0], n0, act, ld)
                    for r in range(nb):
                        total += row_loss(act + r * ld + net.act_off[net.n_layers],
                                          &Y[start + r, 0], nL, loss)
        finally:
            free(raw)
        return total / nL
    finally:
        net_free(&net)


def loss_and_gradients(const floating[::1] params, const int64_t[::1] sizes,
                       const int64_t[::1] acts, int loss, const floating[:, ::1] X,
                       const floating[:, ::1] Y, floating[::1] grad):
    """Return the loss sum over rows and write d(loss sum)/d(param) into ``grad``.

    ``grad`` has ``params``' shape and dtype and is overwritten (zeros when
    ``X`` has no rows).  Rows go through in blocks of 64, each block's
    gradient added to the last.
    """
    cdef Net net
    cdef Py_ssize_t n = X.shape[0], start, nb, r, ld, nL, n0, W
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
        W = net.ldd
        n0 = net.sizes[0]
        nL = net.sizes[net.n_layers]
        scale = <floating> (1.0 / nL)
        # wp | wg | activations | two delta slabs | transposed kernel (all whole lines)
        wp = <floating*> alloc_lines((2 * net.n_work + BLOCK_ROWS * (ld + 2 * W)
                                      + net.max_width * W) * sizeof(floating), &raw)
        wg = wp + net.n_work
        act = wg + net.n_work
        delta = act + BLOCK_ROWS * ld
        delta_prev = delta + BLOCK_ROWS * W
        KT = delta_prev + BLOCK_ROWS * W
        out = act + net.act_off[net.n_layers]
        try:
            with nogil:
                to_work(&params[0], wp, &net)
                for start in range(0, n, 64):
                    nb = n - start if n - start < BLOCK_ROWS else BLOCK_ROWS
                    forward_rows(wp, &net, nb, &X[start, 0], n0, act, ld)
                    for r in range(nb):
                        total += output_delta(out + r * ld, &Y[start + r, 0], delta + r * W,
                                              nL, loss, scale)
                    backward_rows(wp, wg, &net, nb, &X[start, 0], n0, act, ld, delta,
                                  delta_prev, KT, start > 0)
                from_work(wg, &grad[0], &net)
        finally:
            free(raw)
        return total / nL
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
    cdef Update u
    cdef Py_ssize_t n_order = order.shape[0], B, W, N, n_work, n_state
    cdef floating* wp
    cdef floating* ws0
    cdef floating* ws1
    cdef floating* work
    cdef floating* s0
    cdef void* raw = NULL
    cdef double total = 0
    cdef Py_ssize_t done = 0
    check_loss(loss)
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer; found {batch_size}.")
    update_init(&u, optimizer, hyper)
    net_init(&net, sizes, acts, sizeof(floating))
    try:
        check_shapes(&net, params.shape[0], X.shape[0], X.shape[1], Y.shape[0], Y.shape[1])
        if state.shape[0] != 2 or state.shape[1] != net.n_params:
            raise ValueError(f"state: expected shape (2, {net.n_params}); "
                             f"found ({state.shape[0]}, {state.shape[1]}).")
        if n_order == 0:
            return 0.0, 0
        s0 = &state[0, 0]
        if tiny_eligible(&net, loss, &u, batch_size):
            with nogil:
                tiny_a(&params[0], &net, &X[0, 0], &Y[0, 0], X.shape[0], &order[0], n_order,
                       loss, <floating> u.lr, &total, &done)
            return total, done
        N = net.n_work
        W = net.ldd
        n_state = 0 if u.kind == SGD else 2 * N
        if batch_size == 1:
            n_work = net.total_width + 3 * W
        else:
            B = batch_size if batch_size < n_order else n_order
            n_work = (B * (line_up(net.sizes[0], sizeof(floating)) + net.total_width + 2 * W)
                      + line_up(net.max_width * W, sizeof(floating)) + N)
        # wp | ws0 | ws1 (optimizers with state) | the path's scratch (all whole lines)
        wp = <floating*> alloc_lines((N + n_state + n_work) * sizeof(floating), &raw)
        ws0 = wp + N
        ws1 = ws0 + N
        work = wp + N + n_state
        try:
            with nogil:
                to_work(&params[0], wp, &net)
                if n_state:
                    to_work(s0, ws0, &net)
                    to_work(s0 + net.n_params, ws1, &net)
                if batch_size == 1:
                    train_single(wp, &net, &X[0, 0], &Y[0, 0], X.shape[0], &order[0],
                                 n_order, loss, &u, ws0, ws1, step, work, &total, &done)
                else:
                    train_batch(wp, &net, &X[0, 0], &Y[0, 0], X.shape[0], &order[0],
                                n_order, batch_size, loss, &u, ws0, ws1, step, work,
                                &total, &done)
                from_work(wp, &params[0], &net)
                if n_state:
                    from_work(ws0, s0, &net)
                    from_work(ws1, s0 + net.n_params, &net)
        finally:
            free(raw)
        return total, done
    finally:
        net_free(&net)
