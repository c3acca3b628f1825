# The tiny-net kernels of train_chunk: batch size 1, plain SGD, mse, one or
# two layers no wider than TINY with a linear output (a linear or relu hidden
# layer).  The Numba twin generates scalar code per architecture; here the
# widths are *types* (fused types over 1..4-byte structs, so ``sizeof`` is a
# compile-time width), one specialisation per width combination, with every
# weight in a register for the whole chunk and the per-sample dependency
# chain kept short (two products are regrouped to shorten it, so results
# agree with NumPy to rounding).  Included by _ckernels.pyx.

cdef enum:
    # the tiny-net path: at most TINY_LAYERS layers no wider than TINY
    TINY = 4
    TINY_LAYERS = 2


# The tiny-net kernels take their layer widths as types: ``width1`` .. ``width4`` are
# empty-looking C structs of 1..4 bytes, so inside a specialisation
# ``sizeof(InputWidth)`` is a compile-time constant.  Cython's fused types then
# play the part of C++ templates: one copy of each kernel per width combination,
# with literal loop bounds, fully unrolled, every weight a scalar the compiler
# keeps in a register.
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

ctypedef fused InputWidth:   # input width of a tiny net
    width1
    width2
    width3
    width4

ctypedef fused FirstWidth:   # width of its first layer
    width1
    width2
    width3
    width4

ctypedef fused SecondWidth:  # width of its second layer (two-layer nets)
    width1
    width2
    width3
    width4

ctypedef fused HiddenAct:    # activation of its hidden layer (the output layer is linear)
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
    ``relu`` is a literal in every caller (the ``HiddenAct`` type), so a linear
    layer carries no test at all; relu is written ``0 if 0 > z else z``, one
    branch-free ``maxsd`` that lets NaN through as ``np.maximum`` does.
    """
    cdef Py_ssize_t i, j
    cdef floating acc, zero = 0
    for j in range(n_out):
        acc = b[j]
        for i in range(n_in):
            acc = acc + a[i] * K[i * n_out + j]
        if relu:
            acc = zero if zero > acc else acc
        z[j] = acc


cdef inline void tiny_update(floating* K, floating* b, const floating* a, const floating* d,
                             Py_ssize_t n_in, Py_ssize_t n_out, floating lr) noexcept nogil:
    """Plain SGD on a tiny layer: ``K -= lr * outer(a, d)``, ``b -= lr * d``."""
    cdef Py_ssize_t i, j
    for i in range(n_in):
        for j in range(n_out):
            K[i * n_out + j] -= lr * (a[i] * d[j])
    for j in range(n_out):
        b[j] -= lr * d[j]


cdef inline double tiny_delta(const floating* pred, const floating* y, floating* err,
                              Py_ssize_t n) noexcept nogil:
    """The one loss the tiny kernels take, mse: ``err = pred - y`` and the summed ``err**2``."""
    cdef Py_ssize_t j
    cdef double total = 0
    for j in range(n):
        err[j] = pred[j] - y[j]
        total += <double> (err[j] * err[j])
    return total


cdef inline bint tiny_eligible(const Net* net, int loss, const Update* rule,
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
    if batch_size != 1 or rule.kind != SGD or net.n_layers > TINY_LAYERS:
        return False
    if net.max_width > TINY or loss != MSE or net.acts[net.n_layers - 1] != LINEAR:
        return False
    return net.n_layers == 1 or net.acts[0] == LINEAR or net.acts[0] == RELU


cdef inline int tiny_two_layers(InputWidth* input_width, FirstWidth* first_width,
                                SecondWidth* second_width, floating* params, const Net* net,
                                const floating* X, const floating* Y, Py_ssize_t n_rows,
                                const int64_t* order, Py_ssize_t n_order, floating lr,
                                double* loss_out, Py_ssize_t* done_out) except -1 nogil:
    """Per-sample plain SGD for a two-layer net, widths ``InputWidth``, ``FirstWidth``, ``SecondWidth``.

    The Numba twin generates scalar code per architecture; this is the same
    idea done with fused types.  The hidden activation (linear or relu) is a
    type too: one copy of the loop for each, so a linear layer costs no
    test at all (left to the compiler, the relu test got merged with the
    data-dependent ``z < 0`` into one unpredictable branch).  The output
    layer is linear (see :c:func:`tiny_eligible`).
    """
    if net.acts[0] == RELU:
        return tiny_two_layers_loop(input_width, first_width, second_width, <act_relu*> NULL,
                                    params, net, X, Y, n_rows, order, n_order, lr, loss_out,
                                    done_out)
    return tiny_two_layers_loop(input_width, first_width, second_width, <act_linear*> NULL,
                                params, net, X, Y, n_rows, order, n_order, lr, loss_out,
                                done_out)


cdef int tiny_two_layers_loop(InputWidth* input_width, FirstWidth* first_width,
                              SecondWidth* second_width, HiddenAct* hidden_act,
                              floating* params, const Net* net, const floating* X,
                              const floating* Y, Py_ssize_t n_rows, const int64_t* order,
                              Py_ssize_t n_order, floating lr, double* loss_out,
                              Py_ssize_t* done_out) except -1 nogil:
    """The loop of :c:func:`tiny_two_layers` for the hidden activation ``HiddenAct``.

    The weights live in local arrays indexed by constants -- registers --
    for the whole chunk and are written back at the end, so the per-sample
    dependency chain runs through registers only.
    """
    cdef Py_ssize_t n_in = sizeof(InputWidth), n_hidden = sizeof(FirstWidth)
    cdef Py_ssize_t n_out = sizeof(SecondWidth)
    cdef floating K1[16]
    cdef floating b1[4]
    cdef floating K2[16]
    cdef floating b2[4]
    cdef floating x[4]
    cdef floating hidden[4]
    cdef floating out[4]
    cdef floating out_delta[4]
    cdef floating hidden_delta[4]
    cdef floating err[4]
    cdef floating lr_x[4]
    cdef floating acc
    cdef Py_ssize_t i, j, k, row
    cdef Py_ssize_t ahead = prefetch_distance(net.n_params)
    # 2 / n rounded is exactly 2 * (1 / n rounded): doubling is exact
    cdef floating two_scale = <floating> (2.0 / n_out)
    cdef double total = 0, value
    cdef const floating* x_row
    cdef floating* layer2 = params + n_in * n_hidden + n_hidden
    for i in range(n_in * n_hidden):
        K1[i] = params[i]
    for j in range(n_hidden):
        b1[j] = params[n_in * n_hidden + j]
    for i in range(n_hidden * n_out):
        K2[i] = layer2[i]
    for j in range(n_out):
        b2[j] = layer2[n_hidden * n_out + j]
    k = 0
    while k < n_order:
        if k + ahead < n_order:
            prefetch_row(X, Y, order[k + ahead], n_in, n_out)
        row = order[k]
        if FASTBP_DEBUG and (row < 0 or row >= n_rows):
            bad_row(row, n_rows)
        x_row = X + row * n_in
        for i in range(n_in):
            x[i] = x_row[i]
        for i in range(n_in):
            lr_x[i] = lr * x[i]      # off the critical path: the row is known early
        tiny_layer(x, K1, b1, hidden, n_in, n_hidden, HiddenAct is act_relu)
        tiny_layer(hidden, K2, b2, out, n_hidden, n_out, False)
        value = tiny_delta(out, Y + row * n_out, err, n_out) / n_out
        if not isfinite(value):
            break
        total += value
        # The chain from one sample's first-layer weights to the next sample's
        # runs through err, hidden_delta and the update; two regroupings (each a
        # rounding-level change, like the Numba twin's reassociation) keep it short:
        #   hidden_delta_j = sum_m K2[j, m] d_m with d = err * 2s becomes
        #   sum_m (K2[j, m] 2s) err_m (the OLD weights, known early), and
        #   K1[i, j] -= lr (x_i hidden_delta_j) becomes K1[i, j] -= (lr x_i) hidden_delta_j:
        #   one FMA after hidden_delta.
        for j in range(n_hidden):
            acc = (K2[j * n_out] * two_scale) * err[0]
            for i in range(1, n_out):
                acc = acc + (K2[j * n_out + i] * two_scale) * err[i]
            hidden_delta[j] = acc
        for i in range(n_out):
            out_delta[i] = err[i] * two_scale
        tiny_update(K2, b2, hidden, out_delta, n_hidden, n_out, lr)
        if HiddenAct is act_relu:
            times_derivative(hidden_delta, hidden, n_hidden, RELU)
        for i in range(n_in):
            for j in range(n_hidden):
                K1[i * n_hidden + j] -= lr_x[i] * hidden_delta[j]
        for j in range(n_hidden):
            b1[j] -= lr * hidden_delta[j]
        k += 1
    for i in range(n_in * n_hidden):
        params[i] = K1[i]
    for j in range(n_hidden):
        params[n_in * n_hidden + j] = b1[j]
    for i in range(n_hidden * n_out):
        layer2[i] = K2[i]
    for j in range(n_out):
        layer2[n_hidden * n_out + j] = b2[j]
    loss_out[0] = total
    done_out[0] = k
    return 0


cdef inline int tiny_one_layer(InputWidth* input_width, FirstWidth* first_width,
                               floating* params, const Net* net, const floating* X,
                               const floating* Y, Py_ssize_t n_rows, const int64_t* order,
                               Py_ssize_t n_order, floating lr, double* loss_out,
                               Py_ssize_t* done_out) except -1 nogil:
    """As :c:func:`tiny_two_layers` for one linear layer (widths ``InputWidth``, ``FirstWidth``)."""
    cdef Py_ssize_t n_in = sizeof(InputWidth), n_out = sizeof(FirstWidth)
    cdef floating K1[16]
    cdef floating b1[4]
    cdef floating x[4]
    cdef floating out[4]
    cdef floating out_delta[4]
    cdef floating err[4]
    cdef Py_ssize_t i, j, k, row
    cdef Py_ssize_t ahead = prefetch_distance(net.n_params)
    cdef floating two_scale = <floating> (2.0 / n_out)
    cdef double total = 0, value
    cdef const floating* x_row
    for i in range(n_in * n_out):
        K1[i] = params[i]
    for j in range(n_out):
        b1[j] = params[n_in * n_out + j]
    k = 0
    while k < n_order:
        if k + ahead < n_order:
            prefetch_row(X, Y, order[k + ahead], n_in, n_out)
        row = order[k]
        if FASTBP_DEBUG and (row < 0 or row >= n_rows):
            bad_row(row, n_rows)
        x_row = X + row * n_in
        for i in range(n_in):
            x[i] = x_row[i]
        tiny_layer(x, K1, b1, out, n_in, n_out, False)
        value = tiny_delta(out, Y + row * n_out, err, n_out) / n_out
        if not isfinite(value):
            break
        total += value
        for j in range(n_out):
            out_delta[j] = err[j] * two_scale
        tiny_update(K1, b1, x, out_delta, n_in, n_out, lr)
        k += 1
    for i in range(n_in * n_out):
        params[i] = K1[i]
    for j in range(n_out):
        params[n_in * n_out + j] = b1[j]
    loss_out[0] = total
    done_out[0] = k
    return 0


# Dispatch on the widths, one level per layer, down to the specialised kernel:
# train_tiny (input width) -> tiny_by_first_width -> tiny_by_depth (one or two
# layers) -> tiny_by_second_width -> tiny_two_layers / tiny_one_layer.
cdef int tiny_by_second_width(InputWidth* input_width, FirstWidth* first_width,
                              floating* params, const Net* net, const floating* X,
                              const floating* Y, Py_ssize_t n_rows, const int64_t* order,
                              Py_ssize_t n_order, floating lr, double* loss_out,
                              Py_ssize_t* done_out) except -1 nogil:
    cdef Py_ssize_t width = net.sizes[2]
    if width == 1:
        return tiny_two_layers(input_width, first_width, <width1*> NULL, params, net, X, Y,
                               n_rows, order, n_order, lr, loss_out, done_out)
    if width == 2:
        return tiny_two_layers(input_width, first_width, <width2*> NULL, params, net, X, Y,
                               n_rows, order, n_order, lr, loss_out, done_out)
    if width == 3:
        return tiny_two_layers(input_width, first_width, <width3*> NULL, params, net, X, Y,
                               n_rows, order, n_order, lr, loss_out, done_out)
    return tiny_two_layers(input_width, first_width, <width4*> NULL, params, net, X, Y,
                           n_rows, order, n_order, lr, loss_out, done_out)


cdef inline int tiny_by_depth(InputWidth* input_width, FirstWidth* first_width,
                              floating* params, const Net* net, const floating* X,
                              const floating* Y, Py_ssize_t n_rows, const int64_t* order,
                              Py_ssize_t n_order, floating lr, double* loss_out,
                              Py_ssize_t* done_out) except -1 nogil:
    if net.n_layers == 1:
        return tiny_one_layer(input_width, first_width, params, net, X, Y, n_rows, order,
                              n_order, lr, loss_out, done_out)
    return tiny_by_second_width(input_width, first_width, params, net, X, Y, n_rows, order,
                                n_order, lr, loss_out, done_out)


cdef int tiny_by_first_width(InputWidth* input_width, floating* params, const Net* net,
                             const floating* X, const floating* Y, Py_ssize_t n_rows,
                             const int64_t* order, Py_ssize_t n_order, floating lr,
                             double* loss_out, Py_ssize_t* done_out) except -1 nogil:
    cdef Py_ssize_t width = net.sizes[1]
    if width == 1:
        return tiny_by_depth(input_width, <width1*> NULL, params, net, X, Y, n_rows, order,
                             n_order, lr, loss_out, done_out)
    if width == 2:
        return tiny_by_depth(input_width, <width2*> NULL, params, net, X, Y, n_rows, order,
                             n_order, lr, loss_out, done_out)
    if width == 3:
        return tiny_by_depth(input_width, <width3*> NULL, params, net, X, Y, n_rows, order,
                             n_order, lr, loss_out, done_out)
    return tiny_by_depth(input_width, <width4*> NULL, params, net, X, Y, n_rows, order,
                         n_order, lr, loss_out, done_out)


cdef int train_tiny(floating* params, const Net* net, const floating* X, const floating* Y,
                    Py_ssize_t n_rows, const int64_t* order, Py_ssize_t n_order, floating lr,
                    double* loss_out, Py_ssize_t* done_out) except -1 nogil:
    """Run the tiny kernel for this net (1 or 2 layers, widths <= ``TINY``) on ``params``.

    ``params`` is in the caller's flat layout (the tiny path needs no
    working layout: its weights live in registers).
    """
    cdef Py_ssize_t width = net.sizes[0]
    if width == 1:
        return tiny_by_first_width(<width1*> NULL, params, net, X, Y, n_rows, order, n_order,
                                   lr, loss_out, done_out)
    if width == 2:
        return tiny_by_first_width(<width2*> NULL, params, net, X, Y, n_rows, order, n_order,
                                   lr, loss_out, done_out)
    if width == 3:
        return tiny_by_first_width(<width3*> NULL, params, net, X, Y, n_rows, order, n_order,
                                   lr, loss_out, done_out)
    return tiny_by_first_width(<width4*> NULL, params, net, X, Y, n_rows, order, n_order, lr,
                               loss_out, done_out)
