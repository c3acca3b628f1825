"""Argument checks of the backend contract, for backends whose kernels run unchecked.

The Cython and CUDA kernels index raw memory without bounds checks, so their
adapters refuse anything ``fastbp.Network`` would never pass -- wrong dtype,
layout or shape, row indices outside ``X``, unknown codes -- before the
first loop runs, with an expected / found / how-to-fix message.  Each
``check_*_call`` function checks one contract call's arguments and returns
the values the kernels need, normalised (dtype, loss code, ...).
"""

import numpy as np

from . import _codes as C
from ._layout import n_params

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
INT64 = np.dtype(np.int64)
_FIX = ("Pass what fastbp.Network passes: C-contiguous arrays in the parameter dtype "
        "(np.ascontiguousarray(a, dtype=params.dtype)).")

# (sizes bytes, acts bytes) -> parameter count, for layer descriptions already checked:
# the value checks of an architecture run once, not on every chunk
_checked_nets = {}


def check_array(a, name, dtype, ndim, writeable=False):
    """Type, dtype, dimensions, C-contiguity (and writeability) of one argument."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray; found {type(a).__name__}. {_FIX}")
    if a.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}; found {a.dtype}. {_FIX}")
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array; found shape {a.shape}. {_FIX}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array; found a strided or "
                         f"Fortran-ordered one (shape {a.shape}, strides {a.strides}). "
                         f"Copy it once with np.ascontiguousarray({name}).")
    if writeable and not a.flags.writeable:
        raise ValueError(f"{name}: the backend writes into this array, but it is read-only. "
                         "Pass a writeable array (e.g. a copy).")


def check_net(params, sizes, acts, writeable=False):
    """The parameter buffer and the layer description; returns the dtype."""
    if isinstance(params, np.ndarray) and params.dtype not in FLOATS:
        raise TypeError(f"params: expected dtype float32 or float64; found {params.dtype}. "
                        "Use Network(dtype='float32') or 'float64'.")
    check_array(params, "params", getattr(params, "dtype", None), 1, writeable)
    check_array(sizes, "sizes", INT64, 1)
    check_array(acts, "acts", INT64, 1)
    key = (sizes.tobytes(), acts.tobytes())
    expected = _checked_nets.get(key)
    if expected is None:
        if len(sizes) < 2 or (sizes < 1).any():
            raise ValueError(f"sizes: expected at least two positive layer widths; found "
                             f"{sizes.tolist()}.")
        if len(acts) != len(sizes) - 1:
            raise ValueError(f"acts: expected {len(sizes) - 1} activation codes (one per "
                             f"layer); found {len(acts)}.")
        if acts.min() < 0 or acts.max() >= len(C.ACTIVATIONS):
            raise ValueError(f"acts: expected codes in 0..{len(C.ACTIVATIONS) - 1}; found "
                             f"{acts.tolist()}.")
        expected = n_params(sizes)
        if len(_checked_nets) < 256:
            _checked_nets[key] = expected
    if params.shape[0] != expected:
        raise ValueError(f"params: expected {expected} values for layer widths "
                         f"{sizes.tolist()}; found {params.shape[0]}.")
    return params.dtype


def check_rows(A, name, dtype, n_cols, n_rows=None, writeable=False):
    """A 2-D array of ``n_cols`` columns (and ``n_rows`` rows, when given)."""
    check_array(A, name, dtype, 2, writeable)
    if A.shape[1] != n_cols or (n_rows is not None and A.shape[0] != n_rows):
        want = f"({'n' if n_rows is None else n_rows}, {n_cols})"
        raise ValueError(f"{name}: expected shape {want}; found {A.shape}.")


def check_loss(loss):
    """A loss code; returned as an int."""
    if not 0 <= int(loss) < len(C.LOSSES):
        raise ValueError(f"loss: expected a code in 0..{len(C.LOSSES) - 1}; found {loss!r}.")
    return int(loss)


# --------------------------------------------------------------------- one per contract call
def check_predict_call(params, sizes, acts, X, out):
    """``predict``'s arguments; returns the dtype."""
    dtype = check_net(params, sizes, acts)
    check_rows(X, "X", dtype, int(sizes[0]))
    check_rows(out, "out", dtype, int(sizes[-1]), X.shape[0], writeable=True)
    return dtype


def check_loss_call(params, sizes, acts, loss, X, Y):
    """``loss_sum``'s arguments; returns ``(dtype, loss)``."""
    dtype = check_net(params, sizes, acts)
    check_rows(X, "X", dtype, int(sizes[0]))
    check_rows(Y, "Y", dtype, int(sizes[-1]), X.shape[0])
    return dtype, check_loss(loss)


def check_gradients_call(params, sizes, acts, loss, X, Y, grad):
    """``loss_and_gradients``' arguments; returns ``(dtype, loss)``."""
    dtype = check_net(params, sizes, acts)
    check_rows(X, "X", dtype, int(sizes[0]))
    check_rows(Y, "Y", dtype, int(sizes[-1]), X.shape[0])
    check_array(grad, "grad", dtype, 1, writeable=True)
    if grad.shape != params.shape:
        raise ValueError(f"grad: expected shape {params.shape}; found {grad.shape}.")
    return dtype, check_loss(loss)


def check_train_call(params, sizes, acts, loss, X, Y, order, batch_size, optimizer, hyper,
                     state, step):
    """``train_chunk``'s arguments; returns ``(dtype, loss, batch_size, optimizer, step)``."""
    dtype = check_net(params, sizes, acts, writeable=True)
    check_rows(X, "X", dtype, int(sizes[0]))
    check_rows(Y, "Y", dtype, int(sizes[-1]), X.shape[0])
    check_array(order, "order", INT64, 1)
    if len(order):
        # the one O(n) check: every row index must be inside X before the unchecked loop
        low, high = int(order.min()), int(order.max())
        if low < 0 or high >= X.shape[0]:
            bad = low if low < 0 else high
            raise IndexError(f"order: expected row indices in [0, {X.shape[0]}); found {bad}. "
                             "Indices must refer to rows of X.")
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer; found {batch_size}.")
    optimizer = int(optimizer)
    if not C.SGD <= optimizer <= C.RMSPROP_MOMENTUM:
        raise ValueError(f"optimizer: expected a code in {C.SGD}..{C.RMSPROP_MOMENTUM}; "
                         f"found {optimizer}.")
    check_array(hyper, "hyper", np.dtype(np.float64), 1)
    if hyper.shape[0] != C.N_HYPER:
        raise ValueError(f"hyper: expected {C.N_HYPER} float64 values; found {hyper.shape[0]}.")
    check_array(state, "state", dtype, 2, writeable=True)
    if state.shape != (C.N_STATE_SLOTS, params.shape[0]):
        raise ValueError(f"state: expected shape {(C.N_STATE_SLOTS, params.shape[0])}; "
                         f"found {state.shape}.")
    return dtype, check_loss(loss), batch_size, optimizer, int(step)
