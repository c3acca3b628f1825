# The row order of a shuffled epoch: a keyed bijection of [0, n), one chunk at a time.
#
# The formula is documented in fastbp/_shuffle.py, whose NumPy fallback computes
# the same integers; this copy exists for speed (it runs at a few nanoseconds per
# row without the GIL, where NumPy's whole-set permutation cost as much as the
# training of a tiny net).  All arithmetic is unsigned, modulo 2**32 or 2**64.

#: Feistel rounds (fastbp._shuffle.ROUNDS: the number of keys).
cdef enum:
    SHUFFLE_ROUNDS = 4


cdef inline uint32_t _shuffle_mix(uint32_t x) noexcept nogil:
    # a 32-bit integer hash with full avalanche (xor-shift-multiply)
    x ^= x >> 16
    x *= <uint32_t>2146121005U   # 0x7feb352d
    x ^= x >> 15
    x *= <uint32_t>2221713035U   # 0x846ca68b
    x ^= x >> 16
    return x


cdef struct ShuffleRounds:
    # per round: the shift that takes the left part off, and the masks of the parts
    int right_bits[SHUFFLE_ROUNDS + 1]
    uint64_t left_mask[SHUFFLE_ROUNDS]
    uint32_t key[SHUFFLE_ROUNDS]


cdef inline void _shuffle_rounds(ShuffleRounds* rounds, const uint32_t* keys,
                                 int bits) noexcept nogil:
    # an unbalanced Feistel network on ``bits``-bit integers: the left part has
    # ceil(bits / 2) bits, the right part floor(bits / 2); each round replaces the
    # pair (L, R) by (R, L ^ F(R ^ key)) and the two widths swap.  The widths of
    # every round are fixed by ``bits``: computed once, outside the loop over rows.
    cdef int wl = (bits + 1) >> 1
    cdef int wr = bits >> 1
    cdef int w, r
    rounds.right_bits[0] = wr
    for r in range(SHUFFLE_ROUNDS):
        rounds.left_mask[r] = (<uint64_t>1 << wl) - 1
        rounds.key[r] = keys[r]
        w = wl
        wl = wr
        wr = w
        rounds.right_bits[r + 1] = wr


cdef inline uint64_t _shuffle_encrypt(uint64_t x, const ShuffleRounds* rounds) noexcept nogil:
    cdef int r
    cdef uint64_t left = x >> rounds.right_bits[0]
    cdef uint64_t right = x & ((<uint64_t>1 << rounds.right_bits[0]) - 1)
    cdef uint64_t mixed
    for r in range(SHUFFLE_ROUNDS):
        mixed = <uint64_t>_shuffle_mix(<uint32_t>right ^ rounds.key[r]) & rounds.left_mask[r]
        left, right = right, left ^ mixed
    return (left << rounds.right_bits[SHUFFLE_ROUNDS]) | right


cdef inline uint32_t _shuffle_encrypt32(uint32_t x, const ShuffleRounds* rounds) noexcept nogil:
    # the same for at most 32 bits (every part at most 16), in 32-bit lanes: twice
    # as many rows per vector as the 64-bit form
    cdef int r
    cdef uint32_t left = x >> rounds.right_bits[0]
    cdef uint32_t right = x & ((<uint32_t>1 << rounds.right_bits[0]) - 1)
    cdef uint32_t mixed
    for r in range(SHUFFLE_ROUNDS):
        mixed = _shuffle_mix(right ^ rounds.key[r]) & <uint32_t>rounds.left_mask[r]
        left, right = right, left ^ mixed
    return (left << rounds.right_bits[SHUFFLE_ROUNDS]) | right


def shuffle_order(const uint32_t[::1] keys, int64_t n, int64_t start, int64_t[::1] out):
    """Write entries ``start .. start + len(out) - 1`` of an epoch's row order into ``out``.

    See ``fastbp._shuffle`` for the formula; the GIL is released throughout.
    """
    cdef Py_ssize_t m = out.shape[0]
    cdef Py_ssize_t j, t, walkers
    cdef int bits = 0
    cdef uint64_t y
    cdef uint64_t un = <uint64_t>n
    cdef uint64_t first = <uint64_t>start
    cdef uint32_t first32
    cdef ShuffleRounds rounds
    cdef int64_t* dst
    cdef Py_ssize_t* walking
    if keys.shape[0] != SHUFFLE_ROUNDS:
        raise ValueError(f"keys: expected {SHUFFLE_ROUNDS} round keys; found {keys.shape[0]}")
    if n < 1 or start < 0 or start + m > n:
        raise ValueError(f"rows {start}..{start + m} are not inside an epoch of {n} rows")
    if m == 0:
        return
    while bits < 64 and (<uint64_t>1 << bits) < un:
        bits += 1
    _shuffle_rounds(&rounds, &keys[0], bits)
    walking = <Py_ssize_t*>malloc(m * sizeof(Py_ssize_t))
    if walking == NULL:
        raise MemoryError()
    dst = &out[0]
    with nogil:
        # One pass without branches (so that the compiler can vectorise it) ...
        if bits <= 32:
            first32 = <uint32_t>first
            for j in range(m):
                dst[j] = <int64_t>_shuffle_encrypt32(first32 + <uint32_t>j, &rounds)
        else:
            for j in range(m):
                dst[j] = <int64_t>_shuffle_encrypt(first + <uint64_t>j, &rounds)
        # ... then the rows that landed outside [0, n) walk on (cycle-walking: the
        # orbit of a row below n returns below n), gathered into a list first so
        # that no step of the walk is a branch the CPU mispredicts
        walkers = 0
        for j in range(m):
            walking[walkers] = j
            walkers += <uint64_t>dst[j] >= un
        while walkers:
            t = 0
            for j in range(walkers):
                y = _shuffle_encrypt(<uint64_t>dst[walking[j]], &rounds)
                dst[walking[j]] = <int64_t>y
                walking[t] = walking[j]
                t += y >= un
            walkers = t
    free(walking)
