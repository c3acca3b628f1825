# The update rules: the Update struct (one optimizer's hyper-parameters),
# update_init / update_step, apply_update (one optimizer step on a slice of
# parameters) and flush_subnormal.  Included by _ckernels.pyx.
#
# Scalar hyper-parameters are formed in float64 (as Python does) and rounded
# to the parameter dtype once, as NumPy does when it multiplies an array by a
# Python float.

# Update-rule codes: must equal fastbp/_backends/_codes.py.
cdef enum:
    SGD = 0
    SGD_MOMENTUM = 1
    SGD_NESTEROV = 2
    ADAM = 3
    RMSPROP = 4
    RMSPROP_MOMENTUM = 5


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
    # Adam stores a moment as zero below the dtype's smallest normal number
    # times these (see adam_floor_scale): v's is fixed, m's follows alpha
    double m_floor_scale
    double v_floor_scale
    # per-sample float64 RMSprop: u / sqrt(x) through the refined float32 seed
    # (scaled_rsqrt); set by train_single for one call while the state and
    # every gradient keep x within the seed's range
    bint seeded


cdef inline double adam_floor_scale(double c) noexcept nogil:
    """``1 / c``, at most ``2**20``: a moment that the next step multiplies by ``c``.

    Adam computes ``(g*g - v) * (1 - beta_2)`` and ``alpha * m``; those
    products are subnormal while the moment is below ``TINY / c`` (with
    Keras's beta_2 = 0.999 an idle weight's v spends ~6,900 steps there), and
    they cost float32 Adam 1.8x.  So v is stored as zero below
    ``TINY / (1 - beta_2)`` and m below ``TINY / min(1 - beta_1, alpha)``:
    the Numba twin's ``FLOOR_MIN_FACTOR`` says why the weights do not change.
    """
    return 1 / max(c, 9.5367431640625e-07)   # 2**-20


cdef int update_init(Update* rule, int kind, const double[::1] hyper) except -1:
    if kind < SGD or kind > RMSPROP_MOMENTUM:
        raise ValueError(f"optimizer: unknown code {kind}; expected 0..5 (see _codes.py).")
    if hyper.shape[0] < 4:
        raise ValueError(f"hyper: expected 4 float64 values [lr, h1, h2, eps]; "
                         f"found {hyper.shape[0]}.")
    rule.kind = kind
    rule.lr = hyper[0]
    rule.momentum = 0
    rule.decay = 0
    rule.decay2 = 0
    rule.beta_1 = 0
    rule.beta_2 = 0
    rule.epsilon = hyper[3]
    rule.alpha = 0
    rule.m_floor_scale = 1
    rule.v_floor_scale = 1
    rule.seeded = 0
    if kind == SGD_MOMENTUM or kind == SGD_NESTEROV:
        rule.momentum = hyper[1]
    elif kind == ADAM:
        rule.beta_1 = hyper[1]
        rule.beta_2 = hyper[2]
        rule.decay = 1 - hyper[1]
        rule.decay2 = 1 - hyper[2]
        rule.v_floor_scale = adam_floor_scale(rule.decay2)
    elif kind == RMSPROP or kind == RMSPROP_MOMENTUM:
        rule.decay = hyper[1]
        rule.decay2 = 1 - hyper[1]
        rule.momentum = hyper[2]
    return 0


cdef inline void update_step(Update* rule, int64_t step) noexcept nogil:
    """Per-step coefficients: Adam's ``t = step + 1`` (``step`` counts from 0)."""
    cdef double t
    if rule.kind == ADAM:
        t = <double> (step + 1)
        # pow, as Python's ``beta ** t``, rather than a running product: the same rounding
        rule.alpha = rule.lr * sqrt(1 - pow(rule.beta_2, t)) / (1 - pow(rule.beta_1, t))
        rule.m_floor_scale = adam_floor_scale(min(rule.decay, rule.alpha))


# The range of x = v + eps that the seeded u / sqrt(x) accepts: eps at least
# SEED_MIN; eps, every v and every squared gradient at most SEED_LIMIT (v is
# a convex combination of its old value and g^2), so x stays well inside
# float32's normal range.  The Numba twin's values.
cdef extern from *:
    """
    #define FASTBP_SEED_MIN 0x1p-100
    #define FASTBP_SEED_LIMIT 0x1p98
    """
    const double SEED_MIN "FASTBP_SEED_MIN"
    const double SEED_LIMIT "FASTBP_SEED_LIMIT"


cdef inline floating scaled_rsqrt(floating u, floating x, bint seeded) noexcept nogil:
    """``u / sqrt(x)``; with ``seeded`` (double only), from a float32 seed refined in double.

    The float32 ``1 / sqrt(x)`` (relative error below 3e-7) and one
    third-order step ``y (1 + r/2 + 3r^2/8)``, ``r = 1 - x y^2``, give the
    quotient within a few ulp of the exact one for a fraction of the cost
    of a double square root and division (the Numba twin's ``RSQRT_SEEDED``
    has the figures).  The caller keeps ``x`` within ``[SEED_MIN, 2 SEED_LIMIT]``.
    """
    cdef double y, r, uy
    if floating is double:
        if seeded:
            y = (<float> 1) / sqrtf(<float> x)  # float32 root and quotient
            r = 1.0 - (x * y) * y
            uy = u * y
            return uy + uy * (r * (0.5 + 0.375 * r))
        return u / sqrt(x)
    else:
        return u / sqrtf(x)


cdef inline bint seeded_rsqrt_valid(const floating* v, Py_ssize_t n,
                                    const Update* rule) noexcept nogil:
    """May per-sample RMSprop start with the seeded ``u / sqrt(x)``? (double only)

    ``eps`` within ``[SEED_MIN, SEED_LIMIT]`` and every ``v`` within ``[0,
    SEED_LIMIT]`` (NaN fails).
    """
    cdef Py_ssize_t j
    if floating is float:
        return 0
    if rule.kind != RMSPROP and rule.kind != RMSPROP_MOMENTUM:
        return 0
    if not (SEED_MIN <= rule.epsilon <= SEED_LIMIT):
        return 0
    for j in range(n):
        if not (0 <= v[j] <= SEED_LIMIT):
            return 0
    return 1


cdef inline bint gradients_in_seed_range(const floating* a, const floating* d, Py_ssize_t n_in,
                                         Py_ssize_t n_out) noexcept nogil:
    """Are one layer's gradients ``a_i d_j`` (and the bias's ``d_j``) squared at most SEED_LIMIT?

    From ``max(1, max |a_i|) * max |d_j|``; an infinite value fails (NaN
    gradients give NaN in either form of :c:func:`scaled_rsqrt`).
    """
    cdef double a_max = 1, d_max = 0, bound
    cdef Py_ssize_t i
    for i in range(n_in):
        a_max = max(a_max, fabs(a[i]))
    for i in range(n_out):
        d_max = max(d_max, fabs(d[i]))
    bound = a_max * d_max
    return bound * bound <= SEED_LIMIT


cdef inline void rmsprop_update(floating* w, const floating* g, floating* s0, floating* s1,
                                Py_ssize_t n, const Update* rule, bint momentum,
                                bint seeded) noexcept nogil:
    """RMSprop (Keras: epsilon inside the square root) on ``n`` parameters.

    Called with literal ``momentum`` and ``seeded``, so that each call site
    compiles to its own vectorised loop: a branch on them inside the loop
    (gcc's unswitching gives up on a body this size) kept it scalar.
    """
    cdef Py_ssize_t j
    cdef floating lr = <floating> rule.lr
    cdef floating rho = <floating> rule.decay
    cdef floating c = <floating> rule.decay2
    cdef floating eps = <floating> rule.epsilon
    cdef floating mu = <floating> rule.momentum
    cdef floating v, inc
    for j in range(n):
        v = s0[j] * rho + c * (g[j] * g[j])
        inc = scaled_rsqrt(lr * g[j], v + eps, seeded)
        s0[j] = flush_subnormal(v)
        if momentum:
            inc = s1[j] * mu + inc
            s1[j] = flush_subnormal(inc)
        w[j] -= inc


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
                              Py_ssize_t n, const Update* rule) noexcept nogil:
    """One optimizer step (Keras 3 formulas) on ``n`` parameters ``w`` with gradient ``g``.

    ``s0``/``s1`` are the matching slices of the two state slots (see
    ``_codes.py``).  The order of operations is ``numpy_._apply_update``'s;
    the state is stored through :c:func:`flush_subnormal`.
    """
    cdef Py_ssize_t j
    cdef floating lr = <floating> rule.lr
    cdef floating mu, c1, c2, eps, alpha, v, m, m_floor, v_floor
    if rule.kind == SGD:
        for j in range(n):
            w[j] -= lr * g[j]
    elif rule.kind == SGD_MOMENTUM:
        mu = <floating> rule.momentum
        for j in range(n):
            v = s0[j] * mu - lr * g[j]
            w[j] += v
            s0[j] = flush_subnormal(v)
    elif rule.kind == SGD_NESTEROV:
        mu = <floating> rule.momentum
        for j in range(n):
            v = s0[j] * mu - lr * g[j]
            w[j] += mu * v - lr * g[j]
            s0[j] = flush_subnormal(v)
    elif rule.kind == ADAM:
        c1 = <floating> rule.decay
        c2 = <floating> rule.decay2
        eps = <floating> rule.epsilon
        alpha = <floating> rule.alpha
        if floating is float:
            m_floor = <floating> (<double> FLT_MIN * rule.m_floor_scale)
            v_floor = <floating> (<double> FLT_MIN * rule.v_floor_scale)
        else:
            m_floor = <floating> (DBL_MIN * rule.m_floor_scale)
            v_floor = <floating> (DBL_MIN * rule.v_floor_scale)
        for j in range(n):
            m = s0[j] + (g[j] - s0[j]) * c1
            v = s1[j] + (g[j] * g[j] - s1[j]) * c2
            # epsilon added to the root of the uncorrected v (Keras, not PyTorch)
            if floating is float:
                w[j] -= alpha * m / (sqrtf(v) + eps)
                s0[j] = 0 if fabsf(m) < m_floor else m
                s1[j] = 0 if fabsf(v) < v_floor else v
            else:
                w[j] -= alpha * m / (sqrt(v) + eps)
                s0[j] = 0 if fabs(m) < m_floor else m
                s1[j] = 0 if fabs(v) < v_floor else v
    elif rule.kind == RMSPROP_MOMENTUM:
        if rule.seeded:
            rmsprop_update(w, g, s0, s1, n, rule, 1, 1)
        else:
            rmsprop_update(w, g, s0, s1, n, rule, 1, 0)
    elif rule.seeded:
        rmsprop_update(w, g, s0, s1, n, rule, 0, 1)
    else:
        rmsprop_update(w, g, s0, s1, n, rule, 0, 0)
