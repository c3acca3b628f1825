# Activations and losses, element-wise (softmax row-wise): their integer codes, the constants of
# binary cross-entropy and Huber, and the per-row helpers (activate,
# times_derivative, loss_value, loss_grad, output_delta, row_loss).
# Included by _ckernels.pyx.
#
# Numerics: the formulas and their order of operations are the NumPy
# backend's (Keras 3): element losses are formed in the parameter dtype and
# summed in float64; relu lets NaN through (``np.maximum``) and its derivative
# ``a > 0`` is multiplied in (so ``inf * 0`` gives NaN, as in NumPy).  Numeric
# literals inside the fused code are typed (``one``, ``two``): a bare ``1`` in
# float32 code would be a C double and promote the arithmetic.  The build
# allows FMA contraction and reassociation (``-ffp-contract=fast
# -fassociative-math``, which the compiler needs to vectorise dot products)
# but none of ``-ffast-math``'s finite-math assumptions: the NaN checks that
# stop a diverging chunk must survive.

# Integer codes: must equal fastbp/_backends/_codes.py (tests/test_cython.py checks).
cdef enum:
    LINEAR = 0
    RELU = 1
    SIGMOID = 2
    TANH = 3
    SOFTMAX = 4     # output layer only: its activations hold the log-softmax (see _codes.py)

cdef enum:
    MSE = 0
    MAE = 1
    HUBER = 2
    BINARY_CROSSENTROPY = 3
    CATEGORICAL_CROSSENTROPY = 4   # with SOFTMAX only; a row's loss is the sum over outputs

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


cdef inline void activate(floating* z, Py_ssize_t n, int64_t code) noexcept nogil:
    """Apply activation ``code`` to ``z[:n]`` in place (one loop per activation)."""
    cdef Py_ssize_t j
    cdef floating one = 1   # typed constant: a bare 1 would be a C double
    cdef floating top, total
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
    elif code == SOFTMAX:
        # the row's log-softmax, z - max - log(sum(exp(z - max))) (NumPy's order of
        # operations): the stable form categorical cross-entropy is taken from; predict
        # returns exp() of it.  A NaN fails the comparison but poisons the sum.
        top = z[0]
        for j in range(1, n):
            if z[j] > top:
                top = z[j]
        total = 0
        for j in range(n):
            z[j] = z[j] - top
            if floating is float:
                total = total + expf(z[j])
            else:
                total = total + exp(z[j])
        if floating is float:
            total = logf(total)
        else:
            total = log(total)
        for j in range(n):
            z[j] = z[j] - total


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
    if code == CATEGORICAL_CROSSENTROPY:
        return -(y * p)   # p is the log-softmax
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
    if code == CATEGORICAL_CROSSENTROPY:
        # with respect to the logits, p being the log-softmax: softmax - y (TensorFlow's)
        if floating is float:
            return expf(p) - y
        else:
            return exp(p) - y
    if floating is float:
        eps, hi = BCE_LO_F, BCE_HI_F
    else:
        eps, hi = BCE_LO_D, BCE_HI_D
    if p >= eps and p <= hi:
        return -(y / p - (one - y) / (one - p))
    return 0  # the clip passes no gradient (NaN p included)


cdef inline Py_ssize_t per_row(int loss, Py_ssize_t n_y) noexcept nogil:
    """What a row's summed element losses are divided by: the outputs (a mean), or 1 (a sum)."""
    if loss == CATEGORICAL_CROSSENTROPY:
        return 1
    return n_y


cdef inline double output_delta(const floating* p, const floating* y, floating* d,
                                Py_ssize_t n, int loss, floating scale) noexcept nogil:
    """Loss of one row and its delta at the output (before the activation's derivative).

    Writes ``d[j] = dloss/dp_j * scale`` (``scale`` = 1 / (rows * outputs)
    rounded to the dtype, as NumPy rounds it; outputs = 1 for categorical
    cross-entropy, whose delta is taken with respect to the logits) and returns the row's summed
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
