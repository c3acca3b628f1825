"""Optimizer state never stays subnormal in the compiled CPU backends, and the weights don't notice.

A weight whose gradient stays zero (here: an input column that becomes
constant zero) has its velocity or moments decay geometrically until they are
subnormal, where they would stay; arithmetic on subnormals is many times
slower on x86.  The Numba and Cython kernels store such state as zero.  The
weights must still equal the NumPy reference's, which keeps the subnormals.
"""

import numpy as np
import pytest

import fastbp

from .conftest import assert_close, require_backend

OPTIMIZERS = {
    "momentum": lambda: fastbp.SGD(0.01, momentum=0.9),
    "nesterov": lambda: fastbp.SGD(0.01, momentum=0.9, nesterov=True),
    "adam": lambda: fastbp.Adam(0.001, beta_1=0.5, beta_2=0.5),
    "rmsprop": lambda: fastbp.RMSprop(0.001, rho=0.9),
    # a smaller step: at 1e-3 this run is chaotic, and rounding differences between
    # any two summation orders grow to 1e-4 over its 29k updates (flushing or not)
    "rmsprop_momentum": lambda: fastbp.RMSprop(0.0001, rho=0.9, momentum=0.9),
}


def _data(rows, dead_column, seed):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, size=(rows, 3))
    y = np.tanh(X[:, :1] + X[:, 1:2])
    if dead_column:
        X[:, 0] = 0.0  # from now on the first layer's row 0 gets exactly zero gradient
    return X, y


@pytest.mark.parametrize("backend", ["numba", "cython"])
@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize("batch_size", [1, 4])
def test_decayed_state_is_zero_not_subnormal_and_weights_match_numpy(backend, opt, batch_size,
                                                                     dtype):
    require_backend(backend)
    # Enough updates for a factor-0.5 (or 0.9) decay to pass the smallest normal
    # number of either dtype: 0.9 ** 7000 ~ 1e-320.
    rows = 7200 * batch_size
    results = {}
    for name in ("numpy", backend):
        net = fastbp.Network([3, 4, 1], activations="tanh", dtype=dtype, backend=name, seed=2)
        optimizer = OPTIMIZERS[opt]()
        net.fit(*_data(40, False, 0), epochs=1, batch_size=batch_size, optimizer=optimizer,
                shuffle=False, verbose=0)
        net.fit(*_data(rows, True, 1), epochs=1, batch_size=batch_size, optimizer=optimizer,
                shuffle=False, verbose=0)
        results[name] = net
    tiny = np.finfo(dtype).tiny
    reference = np.abs(results["numpy"]._state)
    assert ((reference > 0) & (reference < tiny)).any(), \
        "the reference run should hold subnormal state, or the test checks nothing"
    state = np.abs(results[backend]._state)
    assert not ((state > 0) & (state < tiny)).any(), "subnormal optimizer state was stored"
    assert_close(results[backend].get_weights(), results["numpy"].get_weights(), dtype)


@pytest.mark.parametrize("backend", ["numba", "cython"])
def test_adam_moments_below_their_floors_are_zero_and_weights_match_numpy(backend, dtype):
    # Adam stores v as zero below tiny / (1 - beta_2) and m below
    # tiny / min(1 - beta_1, alpha): the next step multiplies them by those
    # factors, and the products would be subnormal.  beta_2 = 1 - 1/16 makes v's
    # band (tiny, 16 tiny) ~43 steps wide, beta_1 = 0.5 makes m's ten halvings
    # wide; checking every 8 steps sees the reference inside each band.
    require_backend(backend)
    lr, beta_1, beta_2 = 0.001, 0.5, 0.9375
    tiny = np.finfo(dtype).tiny
    # alpha -> lr once beta ** t is negligible; 1% margin for alpha's rounding
    floors = (0.99 * tiny / min(1 - beta_1, lr), 0.99 * tiny / (1 - beta_2))
    nets, optimizers = {}, {}
    for name in ("numpy", backend):
        nets[name] = fastbp.Network([3, 4, 1], activations="tanh", dtype=dtype, backend=name,
                                    seed=2)
        optimizers[name] = fastbp.Adam(lr, beta_1=beta_1, beta_2=beta_2)
        nets[name].fit(*_data(40, False, 0), epochs=1, batch_size=1,
                       optimizer=optimizers[name], shuffle=False, verbose=0)
    # ~11,000 steps take float64's v from ~1e-6 to 16 tiny (0.9375 ** 11000 ~ 1e-308)
    X, y = _data(12000, True, 1)
    reference_in_band = [False, False]
    for start in range(0, len(X), 8):
        for name in nets:
            nets[name].fit(X[start:start + 8], y[start:start + 8], epochs=1, batch_size=1,
                           optimizer=optimizers[name], shuffle=False, verbose=0)
        for slot, floor in enumerate(floors):
            reference = np.abs(nets["numpy"]._state[slot])
            reference_in_band[slot] |= bool(((reference > tiny) & (reference < floor)).any())
            state = np.abs(nets[backend]._state[slot])
            assert not ((state > 0) & (state < floor)).any(), \
                f"slot {slot}: a moment below its floor {floor:.3g} was stored"
    assert reference_in_band == [True, True], \
        "the reference run should pass through both floors' bands, or the test checks nothing"
    assert_close(nets[backend].get_weights(), nets["numpy"].get_weights(), dtype)


@pytest.mark.parametrize("backend", ["numba", "cython"])
@pytest.mark.parametrize("case", ["huge gradients", "tiny epsilon"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_rmsprop_outside_the_seeds_range_runs_the_exact_form(backend, case, momentum):
    """Where ``v + eps`` may leave float32's range, float64 RMSprop divides exactly.

    Per sample, the compiled backends compute RMSprop's ``lr g / sqrt(v +
    eps)`` from a float32 reciprocal square root refined in float64 while
    the state and gradients keep ``v + eps`` inside float32's range.

    Targets of 1e25 make the squared gradients ~1e50, beyond float32 (the
    seed would be 0 and the update vanish); with an epsilon of 1e-60 the
    ``v + eps`` of a weight whose gradient stays zero falls below float32's
    range (the seed would be infinite, the update 0 * inf).  Either way the
    weights must equal the NumPy reference's.
    """
    require_backend(backend)
    rng = np.random.default_rng(3)
    X = rng.uniform(-1, 1, size=(300, 3))
    y = np.tanh(X[:, :1] - X[:, 1:2])
    epsilon = 1e-7
    if case == "huge gradients":
        y = y * 1e25
    else:
        epsilon = 1e-60
        X[:, 2] = 0.0  # a dead input: its weights' v decays to 0
    nets = {}
    for name in ("numpy", backend):
        net = fastbp.Network([3, 5, 1], activations="tanh", backend=name, seed=4)
        net.fit(X, y, epochs=3, batch_size=1, shuffle=False, verbose=0,
                optimizer=fastbp.RMSprop(0.001, rho=0.5, momentum=momentum, epsilon=epsilon))
        nets[name] = net
    assert_close(nets[backend].get_weights(), nets["numpy"].get_weights(), "float64")
