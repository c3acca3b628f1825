"""The shuffled epoch's row order (fastbp._shuffle): a seeded permutation, computed per chunk.

The order is checked against a slow pure-Python implementation of the
formula written out in ``fastbp._shuffle``'s docstring (integers only, no
NumPy), so that the C routine and the NumPy fallback are both tied to the
documented stream rather than to each other.
"""

import numpy as np
import pytest

import fastbp
from fastbp import _data, _shuffle

from . import naive
from .conftest import COMPILED, assert_close, require_backend


# ----------------------------------------------------------------------------- reference
def _ref_mix(x):
    mask = 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & mask
    x ^= x >> 15
    x = (x * 0x846CA68B) & mask
    x ^= x >> 16
    return x


def _ref_encrypt(x, keys, k):
    a, b = (k + 1) // 2, k // 2
    left, right = x >> b, x % (1 << b)
    for key in keys:
        left, right = right, left ^ (_ref_mix(right ^ int(key)) % (1 << a))
        a, b = b, a
    return left * (1 << b) + right


def _ref_order(keys, n, start, stop):
    """Entries start:stop of the documented order, one Python int at a time."""
    k = 0
    while (1 << k) < n:
        k += 1
    out = []
    for p in range(start, stop):
        y = _ref_encrypt(p, keys, k)
        while y >= n:
            y = _ref_encrypt(y, keys, k)
        out.append(y)
    return out


def _keys(seed):
    return _shuffle.draw_keys(np.random.default_rng(seed))


def _routines():
    """The order routines to check: the NumPy fallback and every C copy this CPU runs."""
    import importlib

    routines = [pytest.param(_shuffle._numpy_order, id="numpy")]
    try:
        from fastbp import _ckernels
    except ImportError:
        routines.append(pytest.param(None, id="compiled",
                                     marks=pytest.mark.skip(reason="C extension not built")))
        return routines
    copies = [("baseline", _ckernels)]
    for isa, check in (("avx2", "cpu_has_avx2_fma"), ("avx512", "cpu_has_avx512")):
        if getattr(_ckernels, check)():
            try:
                copies.append((isa, importlib.import_module(f"fastbp._ckernels_{isa}")))
            except ImportError:
                pass

    def bind(module):
        def compiled(keys, n, start, stop):
            out = np.empty(stop - start, dtype=np.int64)
            module.shuffle_order(np.asarray(keys, dtype=np.uint32), n, start, out)
            return out
        return compiled

    routines += [pytest.param(bind(module), id=isa) for isa, module in copies]
    return routines


ROUTINES = _routines()
SIZES = [1, 2, 3, 4, 5, 7, 8, 9, 17, 100, 1000, 4097]


# ----------------------------------------------------------------------------- the routines
@pytest.mark.parametrize("routine", ROUTINES)
@pytest.mark.parametrize("n", SIZES)
def test_every_row_exactly_once(routine, n):
    for seed in range(3):
        got = routine(_keys(seed), n, 0, n)
        assert got.dtype == np.int64 and got.shape == (n,)
        np.testing.assert_array_equal(np.sort(got), np.arange(n))


@pytest.mark.parametrize("routine", ROUTINES)
@pytest.mark.parametrize("n", SIZES)
def test_matches_the_documented_formula(routine, n):
    keys = _keys(n)
    assert routine(keys, n, 0, n).tolist() == _ref_order(keys, n, 0, n)


@pytest.mark.parametrize("routine", ROUTINES)
@pytest.mark.parametrize("n", [2**31 + 5, 2**40 + 3, 2**62 + 1])
def test_large_epochs_match_the_formula(routine, n):
    """Row counts past 32 bits (halves of up to 31 bits, deep cycle-walks): slices only."""
    keys = _keys(7)
    for start in (0, n // 2, n - 50):
        got = routine(keys, n, start, start + 50)
        assert got.tolist() == _ref_order(keys, n, start, start + 50)
        assert all(0 <= r < n for r in got.tolist()) and len(set(got.tolist())) == 50


@pytest.mark.parametrize("n", [1000, 32771])
def test_chunks_concatenate_to_the_whole_order(n):
    keys = _keys(3)
    whole = _shuffle.order(keys, n, 0, n)
    for step in (1, 7, 1000, n):
        parts = [_shuffle.order(keys, n, s, min(s + step, n)) for s in range(0, n, step)]
        np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_compiled_and_numpy_agree_on_random_slices():
    rng = np.random.default_rng(11)
    for _ in range(50):
        n = int(rng.integers(1, 10**7))
        start = int(rng.integers(0, n))
        stop = min(n, start + int(rng.integers(0, 3000)))
        keys = rng.integers(0, 1 << 32, size=4, dtype=np.uint32)
        np.testing.assert_array_equal(_shuffle.order(keys, n, start, stop),
                                      _shuffle._numpy_order(keys, n, start, stop))


def test_different_keys_give_different_orders():
    n = 1000
    orders = {tuple(_shuffle.order(_keys(seed), n, 0, n)) for seed in range(20)}
    assert len(orders) == 20
    assert tuple(range(n)) not in orders


def test_order_is_shuffled_not_structured():
    """Consecutive positions land on unrelated rows: no arithmetic progression, no blocks."""
    n = 100_000
    order = _shuffle.order(_keys(5), n, 0, n).astype(np.float64)
    steps = np.diff(order)
    assert len(np.unique(steps)) > n // 2
    # positions and rows uncorrelated, as for a uniform random permutation (sd ~ 1/sqrt(n))
    assert abs(np.corrcoef(np.arange(n), order)[0, 1]) < 5 / np.sqrt(n)
    assert abs(np.corrcoef(order[:-1], order[1:])[0, 1]) < 5 / np.sqrt(n)
    # the first tenth of the epoch draws rows from all over the set
    hist = np.histogram(order[: n // 10], bins=10, range=(0, n))[0]
    assert hist.min() > 0.8 * n / 100


def test_bad_ranges_are_refused():
    with pytest.raises(ValueError, match="not inside"):
        _shuffle.order(_keys(0), 10, 5, 11)
    with pytest.raises(ValueError, match="not inside"):
        _shuffle.order(_keys(0), 10, 6, 5)


# ----------------------------------------------------------------------------- the data layer
def _source(n):
    X = np.arange(2 * n, dtype=np.float64).reshape(n, 2)
    return _data.ArraySource(X, X[:, :1].copy())


def _epoch(source, rng, chunk_rows=64, start_row=0):
    return np.concatenate([order for _, _, order in
                           source.chunks(rng, True, chunk_rows, start_row)])


def test_array_source_epochs_are_seeded_permutations():
    n = 1000
    source = _source(n)
    rng_a, rng_b = np.random.default_rng(42), np.random.default_rng(42)
    epochs_a = [_epoch(source, rng_a) for _ in range(3)]
    epochs_b = [_epoch(source, rng_b) for _ in range(3)]
    for a, b in zip(epochs_a, epochs_b):
        np.testing.assert_array_equal(a, b)  # same seed, same orders
        np.testing.assert_array_equal(np.sort(a), np.arange(n))
    assert not np.array_equal(epochs_a[0], epochs_a[1])  # every epoch a new one
    assert not np.array_equal(epochs_a[1], epochs_a[2])
    # the documented stream: four uint32 keys from the generator, then the formula
    rng = np.random.default_rng(42)
    for got in epochs_a:
        keys = rng.integers(0, 1 << 32, size=4, dtype=np.uint32)
        assert got.tolist() == _ref_order(keys, n, 0, n)
    assert rng.bit_generator.state == rng_a.bit_generator.state


def test_stream_source_epochs_follow_the_documented_block_stream(tmp_path):
    """Memory-mapped: blocks in ``rng.permutation`` order, each block's rows by four fresh keys."""
    n, block = 203, 30
    ids = np.arange(n, dtype=np.float64).reshape(-1, 1)  # each row holds its own index
    np.save(tmp_path / "ids.npy", ids)
    source = _data.StreamSource(np.load(tmp_path / "ids.npy", mmap_mode="r"), ids, np.float64)
    rng, ref = np.random.default_rng(5), np.random.default_rng(5)
    for _ in range(2):
        got = np.concatenate([X[o, 0] for X, _, o in source.chunks(rng, True, block)])
        want = []
        for b in ref.permutation(-(-n // block)).tolist():
            lo, hi = b * block, min(b * block + block, n)
            keys = ref.integers(0, 1 << 32, size=4, dtype=np.uint32)
            want += [lo + i for i in _ref_order(keys, hi - lo, 0, hi - lo)]
        assert got.astype(int).tolist() == want
    assert rng.bit_generator.state == ref.bit_generator.state


def test_array_source_skipped_rows_resume_the_same_epoch():
    n, skip = 1000, 320
    source = _source(n)
    rng_full, rng_resumed = np.random.default_rng(9), np.random.default_rng(9)
    full = _epoch(source, rng_full)
    tail = _epoch(source, rng_resumed, start_row=skip)
    np.testing.assert_array_equal(tail, full[skip:])
    assert rng_full.bit_generator.state == rng_resumed.bit_generator.state


def test_no_shuffle_draws_nothing():
    rng = np.random.default_rng(1)
    before = rng.bit_generator.state
    np.testing.assert_array_equal(_epoch_plain(_source(100), rng), np.arange(100))
    assert rng.bit_generator.state == before


def _epoch_plain(source, rng):
    return np.concatenate([order for _, _, order in source.chunks(rng, False, 30)])


def test_fit_trains_rows_in_the_documented_order():
    """A shuffled per-sample fit (NumPy backend) equals the naive loop over the formula's order."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 2))
    y = X @ np.array([0.5, -1.0]) + 0.25
    net = fastbp.Network([2, 3, 1], activations="tanh", backend="numpy", seed=4)
    weights = net.get_weights()
    keys = _shuffle.draw_keys(np.random.default_rng(
        np.random.SeedSequence(4).spawn(2)[1]))  # the network's shuffle generator, seed 4
    order = _ref_order(keys, 40, 0, 40)
    expected, _ = naive.train(weights, ["tanh", "linear"], "mse", X, y.reshape(-1, 1), order, 1,
                              naive.Optimizer("sgd", learning_rate=0.01))
    net.fit(X, y, epochs=1, batch_size=1, optimizer=fastbp.SGD(0.01), shuffle=True, verbose=0)
    for got, want in zip(net.get_weights(), expected):
        np.testing.assert_allclose(got, np.array(want), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("batch", [1, 8])
def test_shuffled_fit_matches_numpy_in_every_backend(backend, batch):
    """Every backend trains on the order the data layer computed: a shuffled fit agrees."""
    require_backend(backend)
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 3))
    y = np.sin(X[:, 0]) + 0.5 * X[:, 1]
    nets = [fastbp.Network([3, 5, 1], activations="tanh", backend=name, seed=7)
            for name in ("numpy", backend)]
    for net in nets:
        net.fit(X, y, epochs=2, batch_size=batch, optimizer=fastbp.SGD(0.02), shuffle=True,
                verbose=0)
    for got, want in zip(nets[1].get_weights(), nets[0].get_weights()):
        assert_close(got, want, np.dtype(np.float64))
    assert nets[0]._rng.bit_generator.state == nets[1]._rng.bit_generator.state
    # and not the unshuffled result: the shuffle reached the kernels
    plain = fastbp.Network([3, 5, 1], activations="tanh", backend=backend, seed=7)
    plain.fit(X, y, epochs=2, batch_size=batch, optimizer=fastbp.SGD(0.02), shuffle=False,
              verbose=0)
    assert not np.allclose(plain.get_weights()[0], nets[1].get_weights()[0], rtol=1e-6)
