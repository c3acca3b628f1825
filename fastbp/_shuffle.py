"""The row order of a shuffled epoch: a keyed bijection of ``[0, n)``, computed chunk by chunk.

Drawing ``rng.permutation(n)`` for a whole epoch cost about as much as the
training itself on a tiny net (W1, 2-2-1 per sample: ~20 ns a row for both),
and it held the whole order in memory.  Instead the epoch draws four 32-bit
round keys from the network's shuffle generator and each chunk computes its
own slice of the order, position by position:

``order[p] = walk(p)``, where ``walk(x) = E(x)`` if ``E(x) < n`` else
``walk(E(x))`` ("cycle-walking"), and ``E`` is this Feistel network on
``k``-bit integers, ``k`` the smallest with ``2**k >= n``:

* split ``x`` into a left part ``L = x >> b`` of ``a = ceil(k / 2)`` bits and
  a right part ``R = x & (2**b - 1)`` of ``b = floor(k / 2)`` bits;
* for each round key ``K_r``, ``r = 0..3``: ``(L, R) <- (R, L ^ (F(R ^ K_r) &
  (2**a - 1)))`` and then ``a, b <- b, a`` (the widths swap with the parts);
* ``E(x) = (L << b) | R``.

``F`` is the 32-bit integer hash ``x ^= x >> 16; x *= 0x7feb352d;
x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16`` (modulo ``2**32``).  Each round
is invertible, so ``E`` is a permutation of ``[0, 2**k)``; following it from
a position below ``n`` must come back below ``n``, so ``walk`` is a
permutation of ``[0, n)``, on average fewer than two evaluations of ``E`` per
row.  The keys are ``rng.integers(0, 2**32, size=4, dtype=np.uint32)``, drawn
once at the start of each shuffled epoch of data in memory, and once per
block (per chunk on a Dask worker) as it is reached for memory-mapped data:
the same seed gives the same orders, every epoch a new one, and a resumed
epoch (which restores the generator's state at its start) recomputes
exactly the rows it skips to.

The order is computed by the C extension (``shuffle_order`` in
``csrc/_shuffle.pxi``: one vectorised pass over the chunk, then the few
rows that walk; a few nanoseconds per row, without the GIL) when it is built, and otherwise
by :func:`_numpy_order`, which yields the same integers.  Every backend
trains on the same order: it is made here, in the data layer.
"""

import numpy as np

#: Feistel rounds, and the number of 32-bit keys drawn per shuffled epoch (or block).
ROUNDS = 4

_M1 = np.uint32(0x7FEB352D)
_M2 = np.uint32(0x846CA68B)

_compiled = []  # [function or None], filled on first use


def draw_keys(rng):
    """The round keys of one shuffled epoch: four draws of ``rng.integers`` as uint32."""
    return rng.integers(0, 1 << 32, size=ROUNDS, dtype=np.uint32)


def _bits(n):
    """The smallest ``k`` with ``2**k >= n`` (0 for one row)."""
    return int(n - 1).bit_length()


def _mix(x):
    """The round function ``F`` on a uint32 array (wraps modulo 2**32)."""
    x = x ^ (x >> np.uint32(16))
    x = x * _M1
    x = x ^ (x >> np.uint32(15))
    x = x * _M2
    return x ^ (x >> np.uint32(16))


def _encrypt(x, keys, bits):
    """``E`` of the module docstring on a uint64 array ``x`` of ``bits``-bit integers."""
    wl, wr = (bits + 1) >> 1, bits >> 1
    left = x >> np.uint64(wr)
    right = x & np.uint64((1 << wr) - 1)
    for key in keys:
        mixed = _mix(right.astype(np.uint32) ^ np.uint32(key)).astype(np.uint64)
        left, right = right, left ^ (mixed & np.uint64((1 << wl) - 1))
        wl, wr = wr, wl
    return (left << np.uint64(wr)) | right


def _numpy_order(keys, n, start, stop):
    """Entries ``start:stop`` of the epoch's order, in NumPy (the fallback; same integers)."""
    bits = _bits(n)
    y = _encrypt(np.arange(start, stop, dtype=np.uint64), keys, bits)
    outside = np.flatnonzero(y >= np.uint64(n))
    while outside.size:  # cycle-walking, on the rows still outside [0, n) only
        y[outside] = _encrypt(y[outside], keys, bits)
        outside = outside[y[outside] >= np.uint64(n)]
    return y.astype(np.int64)


def _compiled_order():
    """``shuffle_order`` of the C extension's copy for this CPU, or None when it is not built.

    The copy the ``cython`` backend runs (AVX2 vectors hold twice the rows);
    the baseline copy when that one cannot be loaded.  Every copy, and the
    NumPy fallback, computes the same integers.
    """
    if not _compiled:
        fn = None
        try:
            from ._backends import cython_
            fn = getattr(cython_._kernels, "shuffle_order", None)
        except ImportError:
            try:
                from . import _ckernels
                fn = getattr(_ckernels, "shuffle_order", None)
            except ImportError:  # no C extension built: the NumPy fallback
                pass
        _compiled.append(fn)
    return _compiled[0]


def order(keys, n, start, stop):
    """Entries ``start:stop`` of the order of an epoch of ``n`` rows with round ``keys``.

    An int64 array of ``stop - start`` distinct row indices in ``[0, n)``;
    over ``start = 0 .. n`` in any chunks, every row exactly once.
    """
    if not 0 <= start <= stop <= n:
        raise ValueError(f"rows {start}:{stop} are not inside an epoch of {n} rows")
    fn = _compiled_order()
    if fn is None or start == stop:
        return _numpy_order(keys, n, start, stop)
    out = np.empty(stop - start, dtype=np.int64)
    fn(np.ascontiguousarray(keys, dtype=np.uint32), n, start, out)
    return out


def visit(keys, n, start=0, stop=None):
    """Entries ``start:stop`` of the visiting order of ``n`` rows: shuffled, or in order.

    ``keys`` from :func:`draw_keys` (or the same four numbers as ints) gives
    :func:`order`'s keyed order; None gives the rows in order (``arange(start, stop)``).  ``stop`` defaults to
    ``n``.  A memory-mapped block and a Dask worker's chunk are visited this
    way, so that a worker needs only the four keys, not the order itself.
    """
    stop = n if stop is None else stop
    if keys is None:
        return np.arange(start, stop, dtype=np.int64)
    return order(keys, n, start, stop)
