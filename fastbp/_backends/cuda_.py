"""CUDA backend: the reference semantics of ``numpy_.py`` as one ``numba.cuda`` kernel.

The kernel runs a thread block per network: ``predict``, ``loss_sum`` and
``loss_and_gradients`` launch one block (one network) and copy the results
back; a trainer (one per ``fit``) keeps the parameters, the optimizer state,
the network description and the training rows on the GPU, so that a chunk
copies over only each network's row order.  :func:`open_many_trainer` trains
many networks of one shape at once (sweeps, ensembles), each in its own
block with its own parameters, optimizer, state and row order, all reading
the same rows (``fastbp.fit_many`` uses it for networks on this backend): the
single-network trainer is its one-network case.  Inside a
block the rows are processed one after another -- per-sample SGD is
sequential by nature -- and the block's threads share the work within a row:
each thread owns some units of a layer (forward, deltas), some weights
(gradient accumulation) and some parameters (optimizer update), striding
when a layer is wider than the block.  ``cuda.syncthreads()`` separates the
steps, so every thread sees the values the others wrote.

Per batch the kernel runs the forward pass of each row, adds that row's loss
(float64) to the batch loss and its gradient to a gradient buffer, then --
only if the batch loss is finite -- applies the optimizer to every
parameter with exactly ``numpy_._apply_update``'s formulas.  A non-finite
batch loss raises the block's flag and its threads stop before the update,
so ``rows_done`` excludes that batch, as in the reference.

Arithmetic runs in the parameter dtype (float32 or float64); the constants
the kernel needs (learning rate, ``1 - beta``, the gradient scale, Adam's
bias-corrected step sizes ...) are computed on the host the way NumPy
computes them and handed over as an array in that dtype, so that one
compiled kernel serves both dtypes without mixing in float64 literals.

A minibatch goes through in tiles of up to :data:`TILE` rows: a thread
loads each weight once and applies it to every row of the tile, held in
registers, and the block meets once per layer and tile rather than per row
(:func:`_make_kernel`; per-sample training is the one-row tile).  The tile's
activations and deltas, the parameters, the gradient and the optimizer state
sit in the block's shared memory when they fit in :data:`SHARED_BYTES`, in
that order of preference, else in global memory, read by consecutive threads
at consecutive addresses (:func:`_placement`).  A
block uses one streaming multiprocessor, which suits small per-sample nets
and many of them at once; large batches of one network would want a
GEMM-shaped kernel spread over many blocks.

Importing this module raises ``ImportError`` unless ``numba.cuda`` reports a
usable GPU (or the CPU simulator, ``NUMBA_ENABLE_CUDASIM=1``, is enabled);
the registry turns that into "how to get it working".
"""

import math

import numpy as np

try:
    from numba import cuda
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(f"Numba is not installed ({exc}); install it with `pip install numba`."
                      ) from exc

if not cuda.is_available():
    raise ImportError("numba.cuda.is_available() is False: no usable NVIDIA GPU/driver was "
                      "found (set NUMBA_ENABLE_CUDASIM=1 to run the CUDA kernels on the CPU "
                      "simulator)")

import sys  # noqa: E402
import warnings  # noqa: E402
import weakref  # noqa: E402
from contextlib import contextmanager  # noqa: E402

from numba import config as _numba_config  # noqa: E402

#: True when the kernels run on Numba's CPU simulator (NUMBA_ENABLE_CUDASIM=1).
SIMULATOR = bool(_numba_config.ENABLE_CUDASIM)

from . import _codes as C  # noqa: E402
from . import _contract  # noqa: E402
from ._contract import (check_chunk, check_gradients_call, check_loss_call,  # noqa: E402
                        check_predict_call, check_trainer_call)

NAME = "cuda"
# host round trips and device launches hold the GIL: replicas run in turn
RELEASES_GIL = False

#: At most this many threads in the one block (the CUDA limit per block).
MAX_THREADS = 1024
_WARP = 32

# Kernel modes: what one launch computes.
_PREDICT, _LOSS, _GRADIENTS, _TRAIN = 0, 1, 2, 3

# Slots of the ``consts`` array (parameter dtype).
(_ZERO, _ONE, _HALF, _BCE_LO, _BCE_HI, _HUBER, _HUBER_HALF, _COEF, _COEF_LAST,
 _LR, _H1, _H2, _EPS, _ONE_MINUS_H1, _ONE_MINUS_H2, _N_CONSTS) = range(16)

# Slots of the ``place`` array: where a block's units, deltas, parameters, gradient and
# optimizer state live.
_AT_UNITS, _AT_DELTAS, _AT_PARAMS, _AT_GRAD, _AT_STATE = range(5)

#: Dynamic shared memory one block uses at most, in bytes: what every CUDA GPU grants a
#: launch without an opt-in attribute (Volta and later can opt in to more).
SHARED_BYTES = 48 * 1024


# ---------------------------------------------------------------------------- device code
@cuda.jit(device=True)
def _activate(z, code, zero, one):
    """Activation ``code`` of ``z``; NaN propagates as through ``numpy_._activate``."""
    if code == C.RELU:
        if z < zero:  # not ``max``: a NaN must stay NaN, as with np.maximum
            return zero
        return z
    if code == C.SIGMOID:
        # Two branches so that exp never overflows; the same function as
        # 1 / (1 + exp(-z)) up to rounding.
        if z >= zero:
            return one / (one + math.exp(-z))
        e = math.exp(z)
        return e / (one + e)
    if code == C.TANH:
        return math.tanh(z)
    return z  # linear; softmax: the logit, normalised over the row afterwards (_kernel)


@cuda.jit(device=True)
def _derivative(a, code, zero, one):
    """d act / d z through the activation's output ``a`` (relu'(0) = 0)."""
    if code == C.RELU:
        if a > zero:
            return one
        return zero
    if code == C.SIGMOID:
        return a * (one - a)
    if code == C.TANH:
        return one - a * a
    # linear: multiplying by one is exact; softmax: categorical cross-entropy's delta is
    # already taken with respect to the logits
    return one


@cuda.jit(device=True)
def _sign(e, zero, one):
    """np.sign: -1, 0 or 1, and NaN for NaN."""
    if e > zero:
        return one
    if e < zero:
        return -one
    if e == zero:
        return zero
    return e


@cuda.jit(device=True)
def _loss_value(p, y, loss, consts):
    """Element-wise loss (not yet averaged), as ``numpy_._loss_terms``."""
    e = p - y
    if loss == C.MSE:
        return e * e
    if loss == C.MAE:
        return abs(e)
    if loss == C.HUBER:
        a = abs(e)
        if a <= consts[_HUBER]:
            return consts[_HALF] * e * e
        return consts[_HUBER] * (a - consts[_HUBER_HALF])
    if loss == C.CATEGORICAL_CROSSENTROPY:
        return -(y * p)  # p is the log-softmax
    one = consts[_ONE]
    pc = p  # clip to [eps, 1 - eps]; comparisons keep a NaN as NaN
    if pc < consts[_BCE_LO]:
        pc = consts[_BCE_LO]
    if pc > consts[_BCE_HI]:
        pc = consts[_BCE_HI]
    return -(y * math.log(pc) + (one - y) * math.log(one - pc))


@cuda.jit(device=True)
def _loss_gradient(p, y, loss, consts):
    """d loss / d p (not yet averaged), as ``numpy_._loss_terms``."""
    zero = consts[_ZERO]
    one = consts[_ONE]
    e = p - y
    if loss == C.MSE:
        return e + e  # 2 e, exactly
    if loss == C.MAE:
        return _sign(e, zero, one)
    if loss == C.HUBER:
        if abs(e) <= consts[_HUBER]:
            return e
        return consts[_HUBER] * _sign(e, zero, one)
    if loss == C.CATEGORICAL_CROSSENTROPY:
        return math.exp(p) - y  # with respect to the logits: softmax - y (TensorFlow's)
    # binary cross-entropy: no gradient where the clip is active
    if p >= consts[_BCE_LO] and p <= consts[_BCE_HI]:
        return -(y / p - (one - y) / (one - p))
    return zero


@cuda.jit(device=True)
def _update(i, params, grad, optimizer, consts, alpha, state):
    """One optimizer step on parameter ``i`` (``numpy_._apply_update``, element-wise).

    ``state`` is the network's state flattened, slot ``s`` of parameter ``i``
    at ``s * n + i`` for ``n`` parameters (one row a network on the device:
    no 2-D view is needed, and a reshape would call into Numba's CPU runtime,
    which a GPU does not have).
    """
    g = grad[i]
    second = params.shape[0] + i
    lr = consts[_LR]
    if optimizer == C.SGD:
        params[i] = params[i] - lr * g
    elif optimizer == C.SGD_MOMENTUM or optimizer == C.SGD_NESTEROV:
        momentum = consts[_H1]
        velocity = state[i] * momentum
        velocity = velocity - lr * g
        state[i] = velocity
        if optimizer == C.SGD_NESTEROV:
            params[i] = params[i] + (momentum * velocity - lr * g)
        else:
            params[i] = params[i] + velocity
    elif optimizer == C.ADAM:
        m = state[i]
        v = state[second]
        m = m + (g - m) * consts[_ONE_MINUS_H1]
        v = v + (g * g - v) * consts[_ONE_MINUS_H2]
        state[i] = m
        state[second] = v
        params[i] = params[i] - alpha * m / (math.sqrt(v) + consts[_EPS])
    else:  # RMSprop, epsilon inside the square root (Keras)
        v = state[i] * consts[_H1]
        v = v + consts[_ONE_MINUS_H1] * (g * g)
        state[i] = v
        increment = lr * g / math.sqrt(v + consts[_EPS])
        if optimizer == C.RMSPROP_MOMENTUM:
            buffer = state[second] * consts[_H2]
            buffer = buffer + increment
            state[second] = buffer
            params[i] = params[i] - buffer
        else:
            params[i] = params[i] - increment


@cuda.jit(device=True)
def _block_copy(target, source, tid, n_threads):
    """``target[:] = source``, the block's threads striding over the values (no barrier)."""
    for i in range(tid, source.shape[0], n_threads):
        target[i] = source[i]


def _make_kernel(tile):
    """The kernel that takes the rows of a batch ``tile`` at a time.

    ``tile`` is a compile-time constant, so the per-row accumulators below
    are register arrays: a thread loads each weight once per tile and uses it
    for every row of the tile, and the block meets at ``syncthreads`` once
    per layer and tile instead of once per layer and row.  Each row's sums
    are taken in the same order whatever the tile (a row's inputs in order;
    a weight's gradient adds the rows in order), so every tile gives the same
    numbers; ``tile == 1`` is per-sample training.
    """

    @cuda.jit
    def kernel(mode, all_params, sizes, param_offsets, unit_offsets, acts, loss, X, Y, orders,
               counts, batch_size, optimizers, all_consts, all_alphas, all_state, all_units,
               all_deltas, all_losses, all_grad, all_out, stops, results, place):
        """Run ``mode`` for network ``blockIdx.x``: one thread block per network.

        Every network has the same layer widths, activations and loss; network
        ``k`` has its own parameters ``all_params[k]``, optimizer
        ``optimizers[k]`` with constants ``all_consts[k]`` (Adam's step sizes
        ``all_alphas[k]``), state ``all_state[k]`` (flat, see :func:`_update`)
        and row order ``orders[k]``:
        it visits rows ``X[orders[k, 0]], ..., X[orders[k, counts[k] - 1]]`` in
        batches of ``batch_size``, so the data is on the device once for all
        networks (a network with ``counts[k] == 0`` does nothing).
        ``all_units``/``all_deltas`` hold each network's activations/deltas of
        one tile (row ``t``'s layer ``l`` at ``t * n_units + unit_offsets[l]``),
        ``all_losses`` the tile's output loss terms; ``stops[k]`` is its "batch
        loss not finite" flag; ``results[k]`` receives ``(loss sum, rows
        done)``.  Predictions go to ``all_out[k, position]``.

        ``place`` says which of the units, deltas, parameters, gradient and
        optimizer state live in the block's dynamic shared memory (their
        offset in it) and which stay in global memory (-1): see
        :func:`_placement`.  Shared parameters and state are copied in at the
        start and back at the end of a training launch, a shared gradient
        back at the end of a gradient one.

        ``stops`` lives in global memory, not in a static ``cuda.shared.array``:
        each flag is one block's own, as good after ``syncthreads``, and the CPU
        simulator allocates a static shared array on each thread's first call
        with a check-then-insert that its threads can race through, handing
        threads different flags (some then left the batch loop early).  Its
        dynamic shared memory is one buffer made before the threads start.
        """
        k = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        n_threads = cuda.blockDim.x
        consts = all_consts[k]
        alphas = all_alphas[k]
        losses = all_losses[k]
        out = all_out[k]
        order = orders[k]
        optimizer = optimizers[k]
        n_layers = acts.shape[0]
        n_rows = counts[k]
        n_par = all_params.shape[1]
        n_out = sizes[n_layers]
        out_at = unit_offsets[n_layers]
        n_units = out_at + n_out  # one row's activations (or deltas), every layer
        span = tile * n_units
        shared = cuda.shared.array(0, dtype=all_params.dtype)
        if place[_AT_UNITS] >= 0:
            units = shared[place[_AT_UNITS]:place[_AT_UNITS] + span]
        else:
            units = all_units[k]
        if place[_AT_DELTAS] >= 0:
            deltas = shared[place[_AT_DELTAS]:place[_AT_DELTAS] + span]
        else:
            deltas = all_deltas[k]
        if place[_AT_GRAD] >= 0:
            grad = shared[place[_AT_GRAD]:place[_AT_GRAD] + n_par]
        else:
            grad = all_grad[k]
        if place[_AT_PARAMS] >= 0:
            params = shared[place[_AT_PARAMS]:place[_AT_PARAMS] + n_par]
            _block_copy(params, all_params[k], tid, n_threads)
        else:
            params = all_params[k]
        if place[_AT_STATE] >= 0:
            state = shared[place[_AT_STATE]:place[_AT_STATE] + all_state.shape[1]]
            _block_copy(state, all_state[k], tid, n_threads)
        else:
            state = all_state[k]
        cuda.syncthreads()
        # per-row accumulators of the tile, in registers
        z = cuda.local.array(tile, dtype=all_params.dtype)
        top = cuda.local.array(tile, dtype=all_params.dtype)
        norm = cuda.local.array(tile, dtype=all_params.dtype)
        # what a row's element losses are divided by: the outputs (a mean), or 1 (a sum)
        n_mean = 1 if loss == C.CATEGORICAL_CROSSENTROPY else n_out
        last_act = acts[n_layers - 1]
        zero = consts[_ZERO]
        one = consts[_ONE]
        total = 0.0  # float64 loss sums, meaningful in thread 0
        done = 0
        batch = 0
        start = 0
        while start < n_rows:
            end = start + batch_size  # not min(): it fails to type on the CUDA target
            if end > n_rows:
                end = n_rows
            coef = consts[_COEF] if end - start == batch_size else consts[_COEF_LAST]
            if mode >= _GRADIENTS:
                for i in range(tid, n_par, n_threads):
                    grad[i] = zero
            batch_sum = 0.0
            first = start
            while first < end:
                nt = end - first  # rows in this tile
                if nt > tile:
                    nt = tile
                # ---- forward
                n_in = sizes[0]
                for e in range(tid, nt * n_in, n_threads):
                    t = e // n_in
                    units[t * n_units + e - t * n_in] = X[order[first + t], e - t * n_in]
                cuda.syncthreads()
                for layer in range(n_layers):
                    n_in = sizes[layer]
                    width = sizes[layer + 1]
                    w = param_offsets[layer]
                    b = w + n_in * width
                    a_in = unit_offsets[layer]
                    a_out = unit_offsets[layer + 1]
                    code = acts[layer]
                    for j in range(tid, width, n_threads):
                        weight = params[w + j]
                        for t in range(tile):
                            if t < nt:
                                z[t] = units[t * n_units + a_in] * weight
                        for i in range(1, n_in):
                            weight = params[w + i * width + j]
                            for t in range(tile):
                                if t < nt:
                                    z[t] += units[t * n_units + a_in + i] * weight
                        bias = params[b + j]
                        for t in range(tile):
                            if t < nt:
                                units[t * n_units + a_out + j] = _activate(z[t] + bias, code,
                                                                           zero, one)
                    cuda.syncthreads()
                    if code == C.SOFTMAX:
                        # each row's log-softmax, z - max - log(sum(exp(z - max))) (see
                        # _codes): every thread reduces the rows itself, then writes its units
                        for t in range(tile):
                            if t < nt:
                                row = t * n_units + a_out
                                top[t] = units[row]
                                for j in range(1, width):
                                    if units[row + j] > top[t]:
                                        top[t] = units[row + j]
                                norm[t] = zero
                                for j in range(width):
                                    norm[t] += math.exp(units[row + j] - top[t])
                                norm[t] = math.log(norm[t])
                        cuda.syncthreads()
                        for e in range(tid, nt * width, n_threads):
                            t = e // width
                            at = t * n_units + a_out + e - t * width
                            units[at] = (units[at] - top[t]) - norm[t]
                        cuda.syncthreads()
                if mode == _PREDICT:
                    for e in range(tid, nt * n_out, n_threads):
                        t = e // n_out
                        j = e - t * n_out
                        if last_act == C.SOFTMAX:  # the log-softmax: exp() is the softmax
                            out[first + t, j] = math.exp(units[t * n_units + out_at + j])
                        else:
                            out[first + t, j] = units[t * n_units + out_at + j]
                    cuda.syncthreads()
                    first += nt
                    continue
                # ---- loss of these rows, and the output layer's deltas
                for e in range(tid, nt * n_out, n_threads):
                    t = e // n_out
                    j = e - t * n_out
                    r = order[first + t]
                    p = units[t * n_units + out_at + j]
                    losses[e] = _loss_value(p, Y[r, j], loss, consts)
                    if mode >= _GRADIENTS:
                        d = _loss_gradient(p, Y[r, j], loss, consts) * coef
                        deltas[t * n_units + out_at + j] = d * _derivative(p, last_act, zero,
                                                                            one)
                cuda.syncthreads()
                if tid == 0:  # row by row, each row's outputs in order
                    for e in range(nt * n_out):
                        batch_sum += losses[e]
                if mode < _GRADIENTS:
                    first += nt
                    continue
                # ---- backward: add these rows' gradients, row after row
                for layer in range(n_layers - 1, -1, -1):
                    n_in = sizes[layer]
                    width = sizes[layer + 1]
                    w = param_offsets[layer]
                    b = w + n_in * width
                    a_in = unit_offsets[layer]
                    a_out = unit_offsets[layer + 1]
                    for e in range(tid, n_in * width, n_threads):
                        i = e // width
                        j = e - i * width
                        g = grad[w + e]
                        for t in range(tile):
                            if t < nt:
                                g += (units[t * n_units + a_in + i]
                                      * deltas[t * n_units + a_out + j])
                        grad[w + e] = g
                    for j in range(tid, width, n_threads):
                        g = grad[b + j]
                        for t in range(tile):
                            if t < nt:
                                g += deltas[t * n_units + a_out + j]
                        grad[b + j] = g
                    if layer > 0:
                        code = acts[layer - 1]
                        for i in range(tid, n_in, n_threads):
                            row = w + i * width
                            weight = params[row]
                            for t in range(tile):
                                if t < nt:
                                    z[t] = deltas[t * n_units + a_out] * weight
                            for j in range(1, width):
                                weight = params[row + j]
                                for t in range(tile):
                                    if t < nt:
                                        z[t] += deltas[t * n_units + a_out + j] * weight
                            for t in range(tile):
                                if t < nt:
                                    at = t * n_units + a_in + i
                                    deltas[at] = z[t] * _derivative(units[at], code, zero, one)
                    cuda.syncthreads()
                first += nt
            if mode != _TRAIN:
                total += batch_sum / n_mean
                start = end
                done = end
                continue
            # ---- the batch loss decides, before the update, whether training goes on
            if tid == 0:
                batch_loss = batch_sum / n_mean
                if math.isfinite(batch_loss):
                    total += batch_loss
                    stops[k] = 0
                else:
                    stops[k] = 1
            cuda.syncthreads()
            if stops[k] != 0:
                break
            alpha = alphas[batch] if optimizer == C.ADAM else zero
            for i in range(tid, n_par, n_threads):
                _update(i, params, grad, optimizer, consts, alpha, state)
            cuda.syncthreads()
            batch += 1
            start = end
            done = end
        # ---- what lived in shared memory goes back where the host reads it
        if place[_AT_PARAMS] >= 0 and mode == _TRAIN:
            _block_copy(all_params[k], params, tid, n_threads)
        if place[_AT_STATE] >= 0 and mode == _TRAIN:
            _block_copy(all_state[k], state, tid, n_threads)
        if place[_AT_GRAD] >= 0 and mode == _GRADIENTS:
            _block_copy(all_grad[k], grad, tid, n_threads)
        if tid == 0:
            results[k, 0] = total
            results[k, 1] = done

    return kernel


#: Rows per tile of the minibatch kernel: each weight a thread loads serves this many rows
#: (the register arrays ``z``, ``top`` and ``norm`` hold one value per row).
TILE = 8
_kernels = {}


def _tile_for(batch_size):
    """The tile for batches of ``batch_size`` rows: 1 per sample, else a power of two <= TILE.

    The smallest power of two that holds a batch, so that a short batch does
    not step through empty rows (each tile is its own compiled kernel).
    """
    tile = 1
    while tile < min(int(batch_size), TILE):
        tile *= 2
    return tile


def _kernel_for(tile):
    """The compiled kernel for ``tile`` (built on first use)."""
    if tile not in _kernels:
        _kernels[tile] = _make_kernel(tile)
    return _kernels[tile]


# ---------------------------------------------------------------------------- host side
def _threads(sizes):
    """Threads in the block: the widest layer rounded up to whole warps, at most 1024.

    Wider layers are still handled (threads stride over their units), just
    with less parallelism per unit.  The simulator runs one Python thread
    per CUDA thread, so there the block is exactly as wide as the widest
    layer: warp-padding threads would only idle, slowly.
    """
    widest = int(np.max(sizes))
    if SIMULATOR:
        return min(MAX_THREADS, widest)
    return min(MAX_THREADS, -(-widest // _WARP) * _WARP)


@contextmanager
def _simulator_quirks():
    """On the simulator, adapt the interpreter while a kernel runs; elsewhere do nothing.

    The simulator polls its threads for ``syncthreads`` while holding the
    GIL, so with the default 5 ms switch interval every barrier costs
    milliseconds; a short interval makes a launch about 10x faster.  Its
    threads compute with NumPy scalars, which warn on overflow on the way to
    a divergence that the caller reports as one clear error (``numpy_``
    silences the same warnings with ``np.errstate``, which does not reach
    other threads).  Both settings are restored afterwards.
    """
    if not SIMULATOR:
        yield
        return
    previous = sys.getswitchinterval()
    sys.setswitchinterval(min(previous, 5e-5))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            yield
    finally:
        sys.setswitchinterval(previous)


def _per_row(loss, sizes):
    """What a row's summed element losses are divided by: the outputs (a mean), or 1 (a sum)."""
    return 1 if int(loss) == C.CATEGORICAL_CROSSENTROPY else int(sizes[-1])


def _consts(dtype, n_out, n_rows, batch_size, hyper=None):
    """The kernel's constants, rounded to ``dtype`` the way NumPy rounds them.

    ``_COEF``/``_COEF_LAST`` are the gradient scales ``1 / (n_batch * n_out)``
    of a full and of the short last batch (``numpy_._backward``'s
    ``p.dtype.type(scale / n_out)``); ``n_out`` is :func:`_per_row`'s divisor.
    """
    f = np.dtype(dtype).type
    c = np.zeros(_N_CONSTS, dtype=dtype)
    eps = f(C.BCE_EPSILON)
    c[_ZERO], c[_ONE], c[_HALF] = 0, 1, 0.5
    c[_BCE_LO], c[_BCE_HI] = eps, f(1) - eps
    c[_HUBER], c[_HUBER_HALF] = C.HUBER_DELTA, 0.5 * C.HUBER_DELTA
    last = n_rows % batch_size or batch_size
    c[_COEF] = f((1.0 / batch_size) / n_out)
    c[_COEF_LAST] = f((1.0 / last) / n_out)
    if hyper is not None:
        lr, h1, h2, epsilon = (float(h) for h in hyper)
        c[_LR], c[_H1], c[_H2], c[_EPS] = lr, h1, h2, epsilon
        c[_ONE_MINUS_H1], c[_ONE_MINUS_H2] = 1 - h1, 1 - h2
    return c


def _adam_alphas(dtype, hyper, step, n_batches):
    """Adam's bias-corrected step size for each batch, as ``numpy_._apply_update``."""
    lr, beta_1, beta_2 = float(hyper[0]), float(hyper[1]), float(hyper[2])
    alphas = np.empty(max(n_batches, 1), dtype=dtype)
    for b in range(n_batches):
        t = step + b + 1
        alphas[b] = lr * math.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
    return alphas


def network_bytes(sizes, dtype, chunk_rows, batch_size):
    """Device memory one network of a many-network trainer takes, in bytes.

    Its parameters, optimizer state (``N_STATE_SLOTS`` rows) and gradient,
    one tile's activations and deltas and float64 output losses (a tile of
    ``_tile_for(batch_size)`` rows), and what each launch uploads for it: a
    chunk's row order (int64) and Adam step sizes (one per batch).
    """
    sizes = [int(s) for s in sizes]
    n_params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    itemsize = np.dtype(dtype).itemsize
    tile = _tile_for(batch_size)
    per_launch = 8 * chunk_rows + itemsize * -(-chunk_rows // batch_size)
    return (itemsize * (n_params * (C.N_STATE_SLOTS + 2) + 2 * tile * sum(sizes))
            + 8 * tile * sizes[-1] + 64 + per_launch)


def free_bytes():
    """The GPU's free memory in bytes (infinite on the simulator)."""
    return cuda.current_context().get_memory_info().free


def max_networks(sizes, dtype, chunk_rows, batch_size, rows_bytes, free=None):
    """How many networks of this shape one launch can train in ``free`` bytes (default: now).

    ``rows_bytes`` is the training rows kept on the device; a tenth of the
    free memory is left for the runtime and the kernel's own needs.
    """
    free = free_bytes() if free is None else free
    if not math.isfinite(free):
        return sys.maxsize
    usable = 0.9 * free - rows_bytes
    return max(0, int(usable // network_bytes(sizes, dtype, chunk_rows, batch_size)))


def _placement(n_units, n_params, tile, itemsize, gradients=True, state_slots=0,
               budget=None):
    """Where a block keeps its working arrays: ``(place, shared bytes)``.

    In order of how often a row touches them -- the tile's units and deltas
    (``tile * n_units`` values each), the parameters, the gradient, the
    optimizer state (``state_slots`` rows of ``n_params``; training only);
    without ``gradients`` (predictions, losses) only the units and
    parameters -- each array goes into the block's dynamic shared memory if
    it still fits in ``budget`` bytes (default :data:`SHARED_BYTES`;
    ``place[slot]`` is its offset there, in values) and otherwise stays in
    global memory (``place[slot] = -1``), where the threads of a warp read
    consecutive addresses: in the forward pass thread ``j`` reads weight
    ``(i, j)``, in the update thread ``i`` parameter ``i`` and its state.
    The state comes last because each of its values is read and written
    only once per batch.  A 20-64-64-1 network keeps parameters and
    gradient in shared memory in float32, the parameters alone in float64.
    """
    budget = SHARED_BYTES if budget is None else budget
    place = np.full(5, -1, dtype=np.int64)
    used = 0
    wanted = ((_AT_UNITS, tile * n_units), (_AT_DELTAS, tile * n_units),
              (_AT_PARAMS, n_params), (_AT_GRAD, n_params), (_AT_STATE, state_slots * n_params))
    for slot, count in wanted:
        if count == 0 or not gradients and slot in (_AT_DELTAS, _AT_GRAD):
            continue
        if (used + count) * itemsize <= budget:
            place[slot] = used
            used += count
    return place, used * itemsize


class _DeviceNet:
    """The layer description and per-tile scratch of ``n_networks`` networks, on the device.

    Built once per contract call, or once per trainer (per ``fit``, with
    ``training``), for batches of ``batch_size`` rows: that picks the
    kernel's tile (:func:`_tile_for`) and, with ``gradients`` (whether the
    launches compute any), what goes into shared memory (:func:`_placement`).
    """

    def __init__(self, sizes, acts, dtype, n_networks=1, batch_size=1, gradients=True,
                 training=False):
        n_layers = len(acts)
        sizes = np.ascontiguousarray(sizes, dtype=np.int64)
        param_offsets = np.zeros(n_layers, dtype=np.int64)
        unit_offsets = np.zeros(n_layers + 1, dtype=np.int64)
        offset = 0
        for layer in range(n_layers):
            param_offsets[layer] = offset
            offset += int(sizes[layer]) * int(sizes[layer + 1]) + int(sizes[layer + 1])
            unit_offsets[layer + 1] = unit_offsets[layer] + sizes[layer]
        n_units = int(unit_offsets[-1] + sizes[-1])
        k = int(n_networks)
        self.dtype = np.dtype(dtype)
        self.n_networks = k
        self.n_params = offset
        self.threads = _threads(sizes)
        self.tile = _tile_for(batch_size)
        self.kernel = _kernel_for(self.tile)
        self.place, self.shared_bytes = _placement(
            n_units, offset, self.tile, self.dtype.itemsize, gradients,
            C.N_STATE_SLOTS if training else 0)
        self.sizes = cuda.to_device(sizes)
        self.param_offsets = cuda.to_device(param_offsets)
        self.unit_offsets = cuda.to_device(unit_offsets)
        self.acts = cuda.to_device(np.ascontiguousarray(acts, np.int64))
        self.activations = cuda.device_array((k, self.tile * n_units), dtype=dtype)
        self.deltas = cuda.device_array((k, self.tile * n_units), dtype=dtype)
        self.output_sums = cuda.device_array((k, self.tile * int(sizes[-1])), dtype=np.float64)
        self.stops = cuda.to_device(np.zeros(k, dtype=np.int32))
        # stand-ins, of the real arrays' ranks, for what a mode does not use
        self.no_targets = cuda.to_device(np.zeros((1, 1), dtype=dtype))
        self.no_state = cuda.device_array((k, 1), dtype=dtype)
        self.no_grad = cuda.device_array((k, 1), dtype=dtype)
        self.no_out = cuda.device_array((k, 1, 1), dtype=dtype)


def _run(mode, net, d_params, loss, d_X, d_Y, orders, counts, batch_size, *, optimizers,
         consts, alphas=None, d_state=None, d_grad=None, d_out=None):
    """Launch the kernel once, a block per network; returns ``(loss sums, rows done)`` per network.

    Network ``k`` visits rows ``orders[k, :counts[k]]``.  ``orders``,
    ``counts``, ``optimizers`` (codes), ``consts`` and ``alphas`` (one row per
    network) are copied to the device; the ``d_`` arrays are device arrays
    that the kernel reads and writes where the mode says.
    """
    if alphas is None:
        alphas = np.zeros((net.n_networks, 1), dtype=net.dtype)
    d_results = cuda.device_array((net.n_networks, 2), dtype=np.float64)
    args = (mode, d_params, net.sizes, net.param_offsets, net.unit_offsets, net.acts,
            int(loss), d_X, d_Y if d_Y is not None else net.no_targets,
            cuda.to_device(np.ascontiguousarray(orders, dtype=np.int64)),
            cuda.to_device(np.asarray(counts, dtype=np.int64)), int(batch_size),
            cuda.to_device(np.asarray(optimizers, dtype=np.int64)),
            cuda.to_device(consts), cuda.to_device(alphas),
            d_state if d_state is not None else net.no_state, net.activations, net.deltas,
            net.output_sums, d_grad if d_grad is not None else net.no_grad,
            d_out if d_out is not None else net.no_out, net.stops, d_results,
            cuda.to_device(net.place))
    # at least a few bytes: the simulator cannot make an empty dynamic shared array
    shared_bytes = max(net.shared_bytes, 16)
    with _simulator_quirks():
        net.kernel[net.n_networks, net.threads, 0, shared_bytes](*args)
    results = d_results.copy_to_host()
    return results[:, 0].copy(), results[:, 1].astype(np.int64)


def _launch(mode, params, sizes, acts, loss, X, Y, batch_size, *, consts, grad=None, out=None):
    """One stateless contract call: copy the parameters over, run the kernel, copy results back."""
    net = _DeviceNet(sizes, acts, params.dtype, batch_size=batch_size,
                     gradients=mode == _GRADIENTS)
    d_grad = cuda.to_device(grad[None]) if grad is not None else None
    d_out = cuda.to_device(out[None]) if out is not None else None
    orders = np.arange(X.shape[0], dtype=np.int64)[None]
    totals, done = _run(mode, net, cuda.to_device(params[None]), loss, cuda.to_device(X),
                        cuda.to_device(Y) if Y is not None else None, orders, [X.shape[0]],
                        batch_size, optimizers=[C.SGD], consts=consts[None], d_grad=d_grad,
                        d_out=d_out)
    if mode == _GRADIENTS:
        grad[...] = d_grad.copy_to_host()[0]
    elif mode == _PREDICT:
        out[...] = d_out.copy_to_host()[0]
    return float(totals[0]), int(done[0])


#: Training rows (X and Y together) up to this size stay on the device for a whole fit;
#: larger ones are copied over per chunk, the chunk's rows only.
RESIDENT_BYTES = 1 << 30


class _Trainer:
    """Parameters, optimizer state and the data on the device for a fit of one or more networks.

    Network ``k`` has host buffers ``params[k]``/``states[k]`` (written by
    :meth:`store`), optimizer code ``optimizers[k]`` and hyper-parameters
    ``hypers[k]``; all share the layer widths, activations, loss, batch size
    and dtype.  The training rows go to the device once: a chunk hands over
    the same ``X``/``Y`` again (held by a weak reference, so a streamed
    block is not kept alive) and only the networks' row orders travel.
    Parameters and state come back to the host once per launch, when first
    checked for finiteness or stored, into host mirrors that :meth:`store`
    copies from, for every network or for some.
    """

    def __init__(self, params, states, dtype, sizes, acts, loss, batch_size, optimizers, hypers):
        self._params, self._states = list(params), list(states)
        self._dtype, self._sizes, self._loss = dtype, sizes, loss
        self._batch_size, self._optimizers = batch_size, [int(o) for o in optimizers]
        self._hypers = list(hypers)
        self._net = _DeviceNet(sizes, acts, dtype, len(self._params), batch_size,
                               training=True)
        self._d_params = cuda.to_device(np.stack(self._params))
        # each network's state as one flat row (see _update)
        self._d_state = cuda.to_device(self._flat_states())
        self._d_grad = cuda.device_array(self._d_params.shape, dtype=dtype)
        # the device parameters and state as last copied back
        self._host, self._host_state = np.stack(self._params), self._flat_states()
        self._host_current = True
        self._rows = None  # (weak X, weak Y, device X, device Y) of the resident data

    def _flat_states(self):
        return np.stack([state.reshape(-1) for state in self._states])

    def _device_rows(self, X, Y, orders):
        """The rows on the device and the orders into them (the chunk's own rows when large)."""
        if X.nbytes + Y.nbytes > RESIDENT_BYTES:
            rows = np.unique(orders)  # copy just these, and renumber the orders
            return (cuda.to_device(np.ascontiguousarray(X[rows])),
                    cuda.to_device(np.ascontiguousarray(Y[rows])),
                    np.searchsorted(rows, orders))
        held = self._rows
        if held is None or held[0]() is not X or held[1]() is not Y:
            held = self._rows = (weakref.ref(X), weakref.ref(Y), cuda.to_device(X),
                                 cuda.to_device(Y))
        return held[2], held[3], orders

    def train(self, X, Y, order, step):
        """One network's chunk (the contract's ``Trainer.train``)."""
        check_chunk(self._dtype, self._sizes, X, Y, order)
        totals, done = self.train_many(X, Y, [order], [step], networks=[0])
        return float(totals[0]), int(done[0])

    def train_many(self, X, Y, orders, steps, networks=None):
        """Train networks on rows of ``X``/``Y``, all in one launch.

        Network ``networks[i]`` (default: every network, ``i = k``) trains on
        rows ``orders[i]`` from step ``steps[i]``; the other networks train
        nothing.  The orders may differ in length.  Returns the loss sums
        (float64) and rows done, one per entry of ``networks``.
        """
        if networks is None:
            networks = range(len(self._params))
        networks = [int(k) for k in networks]
        counts = np.zeros(len(self._params), dtype=np.int64)
        for k, order in zip(networks, orders):
            counts[k] = len(order)
        longest = int(counts.max())
        if longest == 0:
            return np.zeros(len(networks)), np.zeros(len(networks), dtype=np.int64)
        # one row per network, padded with row 0 past its count (never visited)
        padded = np.zeros((len(self._params), longest), dtype=np.int64)
        for k, order in zip(networks, orders):
            padded[k, :len(order)] = order
        d_X, d_Y, padded = self._device_rows(X, Y, padded)
        n_batches = -(-longest // self._batch_size)
        per_row = _per_row(self._loss, self._sizes)
        consts = np.stack([_consts(self._dtype, per_row, int(n), self._batch_size, hyper)
                           for n, hyper in zip(counts, self._hypers)])
        first = dict(zip(networks, (int(step) for step in steps)))
        alphas = np.stack([_adam_alphas(self._dtype, hyper, first.get(k, 0), n_batches)
                           if code == C.ADAM else np.zeros(n_batches, dtype=self._dtype)
                           for k, (code, hyper) in enumerate(zip(self._optimizers,
                                                                 self._hypers))])
        self._host_current = False
        totals, done = _run(_TRAIN, self._net, self._d_params, self._loss, d_X, d_Y, padded,
                            counts, self._batch_size, optimizers=self._optimizers,
                            consts=consts, alphas=alphas, d_state=self._d_state,
                            d_grad=self._d_grad)
        return totals[networks], done[networks]

    def _fetch(self):
        """Bring the device parameters and state into the host mirrors (once per launch)."""
        if not self._host_current:
            self._d_params.copy_to_host(self._host)
            self._d_state.copy_to_host(self._host_state)
            self._host_current = True

    def finite(self):
        """Whether every network's parameters are finite."""
        return bool(self.finite_many().all())

    def finite_many(self):
        """Per network: are its parameters finite?"""
        self._fetch()
        return np.isfinite(self._host).all(axis=1)

    def store(self, networks=None):
        """Write the parameters and state of ``networks`` (default all) into their host buffers."""
        self._fetch()
        for k in range(len(self._params)) if networks is None else networks:
            self._params[k][...] = self._host[k]
            self._states[k][...] = self._host_state[k].reshape(self._states[k].shape)

    def reload(self, networks=None):
        """Put the host buffers of ``networks`` (default all) back on the device.

        The other networks keep their device state: the mirrors are brought
        up to date first and the whole stack goes over in one copy.
        """
        self._fetch()
        for k in range(len(self._params)) if networks is None else networks:
            self._host[k] = self._params[k]
            self._host_state[k] = self._states[k].reshape(-1)
        self._d_params.copy_to_device(self._host)
        self._d_state.copy_to_device(self._host_state)

    def close(self):
        self._net = self._d_params = self._d_state = self._d_grad = self._rows = None


# ---------------------------------------------------------------------------- contract
def predict(params, sizes, acts, X, out):
    """Write the network's outputs for the rows of ``X`` into ``out``.

    Parameters
    ----------
    params : ndarray, 1-D float32 or float64
        Flat parameter buffer (layout in ``_layout.py``).
    sizes, acts : ndarray of int64
        Layer widths and one activation code per layer.
    X : ndarray, shape (n, sizes[0])
        Input rows in the parameter dtype.
    out : ndarray, shape (n, sizes[-1])
        Written in place.
    """
    dtype = check_predict_call(params, sizes, acts, X, out)
    if X.shape[0] == 0:
        return
    _launch(_PREDICT, params, sizes, acts, C.MSE, X, None, X.shape[0], out=out,
            consts=_consts(dtype, int(sizes[-1]), X.shape[0], X.shape[0]))


def loss_sum(params, sizes, acts, loss, X, Y):
    """Sum over rows of the per-row loss (a mean over outputs; for categorical
    cross-entropy the sum over them).

    Parameters
    ----------
    params, sizes, acts : ndarray
        As in :func:`predict`.
    loss : int
        Loss code (``_codes``).
    X, Y : ndarray
        Input rows and targets, shapes ``(n, sizes[0])`` and ``(n, sizes[-1])``.

    Returns
    -------
    float
        The loss sum, accumulated in float64.
    """
    dtype, loss = check_loss_call(params, sizes, acts, loss, X, Y)
    if X.shape[0] == 0:
        return 0.0
    total, _ = _launch(_LOSS, params, sizes, acts, loss, X, Y, X.shape[0],
                       consts=_consts(dtype, _per_row(loss, sizes), X.shape[0], X.shape[0]))
    return total


def loss_and_gradients(params, sizes, acts, loss, X, Y, grad):
    """Return the loss sum over rows and write d(loss sum)/d(param) into ``grad``.

    Parameters
    ----------
    params, sizes, acts, loss, X, Y
        As in :func:`loss_sum`.
    grad : ndarray, shaped like ``params``
        Written in place.

    Returns
    -------
    float
        The loss sum, accumulated in float64.
    """
    dtype, loss = check_gradients_call(params, sizes, acts, loss, X, Y, grad)
    if X.shape[0] == 0:
        grad[...] = 0
        return 0.0
    # the whole of X is one "batch" with scale 1: the gradient of the sum
    consts = _consts(dtype, _per_row(loss, sizes), 1, 1)
    total, _ = _launch(_GRADIENTS, params, sizes, acts, loss, X, Y, X.shape[0], grad=grad,
                       consts=consts)
    return total


def open_trainer(params, state, sizes, acts, loss, batch_size, optimizer, hyper):
    """A trainer for one fit (see ``_contract.Trainer``): parameters and state stay on the GPU."""
    dtype, loss, batch_size, optimizer = check_trainer_call(params, state, sizes, acts, loss,
                                                            batch_size, optimizer, hyper)
    return _Trainer([params], [state], dtype, sizes, acts, loss, batch_size, [optimizer],
                    [hyper])


def open_many_trainer(params, states, sizes, acts, loss, batch_size, optimizers, hypers):
    """A trainer of ``len(params)`` networks for one fit, a thread block per network.

    ``params[k]``/``states[k]`` are network ``k``'s buffers (as
    :func:`open_trainer`'s), ``optimizers[k]``/``hypers[k]`` its optimizer;
    the networks share ``sizes``, ``acts``, ``loss``, ``batch_size`` and the
    dtype.  ``train_many(X, Y, orders, steps)`` trains network ``k`` on rows
    ``orders[k]`` (``networks=`` picks some of them); ``finite_many`` and
    ``close`` act on all of them, ``store`` and ``reload`` on all or some.
    """
    if len(params) == 0 or not (len(params) == len(states) == len(optimizers) == len(hypers)):
        raise ValueError(f"open_many_trainer: expected as many states, optimizers and hypers "
                         f"as parameter buffers (at least one); found {len(params)}, "
                         f"{len(states)}, {len(optimizers)}, {len(hypers)}.")
    checked = [check_trainer_call(p, s, sizes, acts, loss, batch_size, o, h)
               for p, s, o, h in zip(params, states, optimizers, hypers)]
    dtypes = {c[0] for c in checked}
    if len(dtypes) != 1:
        raise ValueError(f"open_many_trainer: expected one dtype for every network; found "
                         f"{sorted(str(d) for d in dtypes)}.")
    dtype, loss, batch_size, _ = checked[0]
    return _Trainer(params, states, dtype, sizes, acts, loss, batch_size,
                    [c[3] for c in checked], hypers)


#: One chunk without a Network (tests, benchmarks): ``_contract.train_chunk`` on this module.
train_chunk = _contract.module_train_chunk(__name__)
