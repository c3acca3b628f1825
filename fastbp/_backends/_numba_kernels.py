"""Numba kernels of the ``numba`` backend, written once for any layer widths.

An ordinary module: importing it gives the float64 kernels, compiled on first
use and not cached on disk, and that is what ``fastbp._backends.numba_`` uses
when caching is off (``FASTBP_NO_CACHE=1``, or ``NUMBA_DISABLE_JIT=1``, where
nothing is compiled).  For every other case the backend *materialises* it:
it takes this module's source (through its loader), rewrites the header block
below (dtype, caching) and compiles one module per dtype from that text,
written to and verified in the per-user cache directory
(``fastbp._config.cache_dir()``).  The architecture-specialised modules that
``_numba_codegen`` writes import their helpers from the module of the same
dtype.  Why the text step stays (measured with Numba 0.68):

* Numba's ``cache=True`` stores the machine code beside the function's source
  file (``__pycache__``); for this file that is site-packages, which may be
  read-only or writable by others (the cache holds pickles that Numba
  unpickles and code that runs, so it must be private).  A materialised copy
  in the private cache directory puts the cache there with Numba's public
  behaviour only; the alternative is a custom cache locator built on
  Numba's private ``numba.core.caching._CacheLocator`` / ``_CacheImpl``.
* The dtype-dependent globals (``DT``, ``TINY``, ``VECTOR``, ``TILE_WIDTH``...)
  cannot simply become per-dtype closures: a factory ``make_kernels(dtype)``
  defining the ``@njit`` functions in a closure compiles, but Numba's cache
  index keys a closure by the pickled contents of its cells, and a captured
  dispatcher pickles with a per-process id, so a second process never hits
  the cache (measured: 0 hits, a new ``.nbc`` per process).  Reading the
  dtype from the arrays instead (not attempted) would turn ~80 ``DT(...)``
  casts, ``TINY`` and the tile constants into typed helpers, a rewrite of
  every kernel line that risks the numbers, for no gain in speed.
* The tiny-net modules name the materialised module (its file name is the
  hash of its text), which ties their cache entries to these exact kernels.

It imports NumPy, Numba and ``fastbp._backends._codes`` only.  Its numbers
follow ``numpy_.py`` (the reference); ``csrc/_ckernels.pyx`` is the Cython
twin of the same contract.

Every entry point is compiled for exactly one signature (``SIGNATURES``),
which keeps Numba's on-disk cache index at one entry per function: that is
what makes several processes compiling into a cold cache at once safe.

Numerical choices (they mirror ``numpy_.py``):

* All arithmetic runs in the parameter dtype ``DT``; constants are cast to
  ``DT`` first, as NumPy does with Python scalars (NEP 50).  Only loss sums are
  accumulated in float64, like ``value.sum(dtype=np.float64)``.
* ``FASTMATH`` allows reassociation (vectorised reductions), contraction
  (FMA), no-signed-zeros and reciprocals; it never includes ``nnan`` or
  ``ninf``, so NaN and inf propagate.  The divergence check is written as a
  comparison, ``abs(loss) <= F64_MAX`` (see there): Numba's
  ``math.isfinite`` does not survive these flags.

Performance choices, each measured on the benchmark workloads:

* No array views (bar one per call, ``transpose_scratch``): the kernels
  index flat buffers at offsets.  A view made in a loop costs two atomic
  reference-count updates (``NRT_incref`` / ``NRT_decref``, calls into the
  Numba runtime): at ~30 views per sample they took half the time of a
  20-64-64-1 net.  Each view site also costs ~40 ms
  of compile time (slicing and reshaping code with its error paths).
* Flat indices are cast to unsigned (``U``): Numba then emits no
  negative-index wraparound, so ``buf[uidx(offset + j)]`` stays an affine
  address and the loop vectorises like a loop over a view.
* Kernel rows, biases and activation rows start on 64-byte boundaries (see
  "working layout"): an AVX-512 load that straddles two cache lines costs
  about twice as much (measured 2x on the minibatch products).
* Few, flat helpers: every compiled function adds a fixed share to the
  first-use compile time, and every level of nested helpers is optimised
  again by LLVM, so helpers call no helpers (bar the scalar ones).  The one
  helper that must call others, ``batch_rows_gradient`` (shared by
  ``train_batch`` and ``batch_part_gradient``), is inlined into its callers
  in Numba's IR (``_inline_helper``) instead of being compiled on its own:
  measured, that level of re-optimisation was ~15% of the first minibatch
  fit's compile time.
* The minibatch products run in register tiles (``gemm_tile``, LLVM IR
  written through an intrinsic, as ``csrc/_gemm.h`` is the Cython twin's one
  piece of C): 1.4x (float64) and 1.6x (float32) the axpy form on a
  20-64-64-1 net in batches of 32, level with the Cython twin, for a few
  tenths of a second on a ~4 s cold compile.
"""

import math

import numba
import numpy as np
from numba import types as nbtypes
from numba.extending import intrinsic

from fastbp._backends import _codes as C

# ---- header: rewritten when the module is materialised -------------------
# (as imported: float64, no on-disk cache)
DTYPE = "float64"
CACHE = False
# ---- end of header --------------------------------------------------------

DT = np.dtype(DTYPE).type
ITEMSIZE = np.dtype(DTYPE).itemsize
_NUMBA_DT = numba.from_dtype(np.dtype(DTYPE))

#: Index cast (see the module docstring): unsigned, so no wraparound code.
uidx = np.uint64

#: LLVM fast-math flags: reassociate / contract / no signed zeros / allow
#: reciprocals.  Never nnan or ninf: they would delete the NaN checks.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}

#: Divergence test: ``not abs(x) <= F64_MAX`` is true exactly for NaN and
#: +-inf.  ``math.isfinite`` cannot be used under fast-math flags: Numba
#: implements it as ``(x - x) == (x - x)`` and, with these flags, LLVM folds
#: ``x - x`` to 0, so the check vanishes (test_numba checks this stays fixed).
F64_MAX = np.finfo(np.float64).max

#: Optimizer state (velocities, moments) smaller in magnitude than this, the
#: smallest normal number of ``DT``, is stored as zero.  A weight whose
#: gradient stays zero (a dead ReLU unit, a constant input) has its state
#: decay geometrically, m <- 0.9 m, until it is subnormal, where it stays
#: (0.9 times the smallest subnormal rounds back to it).  Arithmetic on
#: subnormals takes a slow microcode path on x86 CPUs: measured 2.5-3x on the
#: whole Adam update when half the state was subnormal, which made per-sample
#: Adam the slowest optimizer.  Dropping a state value below ~1e-308 (float64)
#: or ~1e-38 (float32) changes the weight update by less than that divided by
#: epsilon, far below the rounding of any weight that is not itself tiny
#: (numpy_ keeps the subnormals; the parity tolerances cover the difference,
#: which is zero in every test).  ``abs(x) < TINY`` is False for NaN, so a
#: NaN state still propagates.
TINY = DT(np.finfo(np.dtype(DTYPE)).tiny)

#: Adam's moments need higher floors than ``TINY``: a moment ``s`` that the
#: next step multiplies by a factor ``c < 1`` makes that product subnormal
#: while ``TINY <= |s| < TINY / c``.  The update computes ``(g - v) * (1 -
#: beta_2)`` (with Keras's 0.999 an idle weight's v spends ~6,900 steps in
#: that band) and ``alpha * m`` (the step size, ~1e-3).  Those products cost
#: float32 per-sample Adam 1.8x on a 100-256-256-1 net and 1.8x on
#: 20-64-64-1 (measured with the CPU's flush-to-zero mode as the reference).
#: So ``v`` is stored as zero below ``TINY / (1 - beta_2)`` and ``m`` below
#: ``TINY / min(1 - beta_1, alpha)`` (:func:`state_floor`), the factor taken
#: no smaller than FLOOR_MIN_FACTOR: a floor is at most ``2**20 TINY``
#: (~1.2e-32 in float32, ~2.3e-302 in float64).  Dropping such a ``v``
#: changes ``sqrt(v) + epsilon`` by ~1e-16, below the rounding of Keras's
#: epsilon (1e-7) in either dtype; dropping such an ``m`` changes the update
#: by at most ``TINY / epsilon`` (~1e-31 in float32).
FLOOR_MIN_FACTOR = 2.0 ** -20

#: RMSprop's ``lr * g / sqrt(v + eps)`` in the float64 per-sample pass
#: (:func:`scaled_rsqrt`): one float64 square root and one division per
#: parameter cost 2.2 ns here (Intel Xeon, AVX-512), the same float32 pair
#: 0.6 ns.  So ``1 / sqrt(x)`` is seeded in float32 (relative error < 3e-7)
#: and refined in float64 by one third-order step, ``y (1 + r/2 + 3r^2/8)``
#: with ``r = 1 - x y^2``: the result is within ~2 ulp of the correctly
#: rounded one (measured: 4e-16 relative over x in [1e-30, 1e30]), the
#: division's numbers within the parity bounds, at 1.5x the rate of the
#: exact form on 20-64-64-1 and 100-256-256-1 nets (with the RMSprop loops of
#: :func:`backward_flat_fused`).  It is used while every ``x =
#: v + eps`` is within ``[SEED_MIN, 2 SEED_LIMIT]``, inside float32's normal
#: range: ``eps`` at least SEED_MIN, and ``eps``, every ``v`` and every
#: gradient's square at most SEED_LIMIT (``v`` is a convex combination of
#: its old value and ``g^2``).  :func:`seeded_rsqrt_valid` checks the state
#: when a call starts, :func:`gradient_bound` each sample's gradients; a
#: sample that fails runs the exact form, and so does the rest of the call.
#: float32 and the minibatch update always run the exact form.
RSQRT_SEEDED = DTYPE == "float64"
SEED_MIN = 2.0 ** -100
SEED_LIMIT = 2.0 ** 98

#: Output widths below this use the dot form of the forward pass.
AXPY_MIN_WIDTH = 8

#: The minibatch loops take this many rows at a time; blocks are padded to a
#: multiple of it with zero inputs and zero deltas, which add nothing.
ROW_BLOCK = 4

#: Rows of the working-layout table ``lay`` (built by numba_._layout; see
#: "working layout" below).
LAY_KERNEL = 0     # kernel offset
LAY_BIAS = 1       # bias offset
LAY_KERNEL_LD = 2  # kernel row stride
LAY_ACT_LD = 3     # activation row stride
LAY_ACT = 4        # activation block offset

#: Bytes per cache line; at most PREFETCH_LINES lines of a row are prefetched.
CACHE_LINE = 64
PREFETCH_LINES = 8


def target_cpu_features():
    """The feature string of the CPU Numba compiles for, as its code generator reads it.

    ``NUMBA_CPU_FEATURES`` when set -- also when empty, as ``NUMBA_CPU_NAME=
    generic`` leaves it: a portable build with no extension -- else the host's.
    """
    if numba.config.CPU_FEATURES is not None:
        return numba.config.CPU_FEATURES
    from numba.core.codegen import get_host_cpu_features
    return get_host_cpu_features()


def _vector_bytes():
    """Bytes per SIMD register of the CPU Numba compiles for (honours NUMBA_CPU_FEATURES)."""
    try:
        features = target_cpu_features()
    except Exception:  # an unknown platform: the narrowest common width
        return 16
    if "+avx512f" in features:
        return 64
    return 32 if "+avx" in features else 16


#: The register tile of the minibatch products (``gemm_tile``): TILE_ROWS rows
#: by two SIMD vectors of columns, 8 accumulators, plus two vectors of B and a
#: broadcast of A: 11 of the 16 (AVX2) or 32 (AVX-512) vector registers.
#: ROW_BLOCK is a multiple of TILE_ROWS, so a padded block has full row tiles.
VECTOR = _vector_bytes() // ITEMSIZE
TILE_ROWS = 4
TILE_WIDTH = 2 * VECTOR

#: Vectorise the per-sample passes at 512 bits where the CPU has AVX-512
#: (:func:`full_vector_width`, called first in each of their functions).
#: LLVM tunes most AVX-512 Intel CPUs to prefer 256-bit vectors (the old
#: 512-bit clock penalty), so Numba's loops run 4 doubles wide even where the
#: CPU has 8.  Full width, alternating both forms in one process (Intel Xeon,
#: Sapphire Rapids class): float64 RMSprop 1.56x on 20-64-64-1 and 1.63x on
#: 100-256-256-1 (the seeded root's float32 half runs at the full width),
#: momentum 1.05-1.12x, plain SGD 1.1-1.3x; Adam (bound by the divider,
#: whose throughput per element is the same at either width) unchanged.  The
#: minibatch products set their width themselves (``gemm_tile``).  Sums
#: reassociate with the width, so results move in the last bits (within the
#: parity bounds).
FULL_WIDTH = VECTOR * ITEMSIZE == 64


# Argument types of the entry points.  Every array is C-contiguous; arrays the
# kernels only read are typed read-only, so read-only arrays (e.g. memory-
# mapped data) reuse the same compiled code.  ``wp``/``wg``/``wst`` are the
# working parameter, gradient and optimizer-state buffers and ``work`` the
# activation/delta workspace, all allocated and laid out by numba_.py (``lay``,
# see "working layout" below).
_BUF = nbtypes.Array(_NUMBA_DT, 1, "C")                         # wp, wg, work
_STATE = nbtypes.Array(_NUMBA_DT, 2, "C")                       # wst: optimizer state (2, size)
_DATA = nbtypes.Array(_NUMBA_DT, 2, "C", readonly=True)         # X, Y
_OUT = nbtypes.Array(_NUMBA_DT, 2, "C")                         # out
_INTS = nbtypes.Array(nbtypes.int64, 1, "C", readonly=True)     # sizes, acts, order
_LAYOUT = nbtypes.Array(nbtypes.int64, 2, "C", readonly=True)   # lay
_HYPER = nbtypes.Array(nbtypes.float64, 1, "C", readonly=True)  # hyper
_INT = nbtypes.int64                                            # codes, counts, step
_TRAIN_RESULT = nbtypes.Tuple((nbtypes.float64, nbtypes.int64))  # (loss sum, rows done)
_SYNC = nbtypes.Array(nbtypes.int64, 1, "C")                    # train_split's barrier words
_LOSSES = nbtypes.Array(nbtypes.float64, 1, "C")                # train_split's part losses

SIGNATURES = {
    "predict": nbtypes.none(_BUF, _LAYOUT, _INTS, _INTS, _DATA, _OUT, _BUF, _INT),
    "loss_sum": nbtypes.float64(_BUF, _LAYOUT, _INTS, _INTS, _INT, _DATA, _DATA, _BUF, _INT),
    "loss_and_gradients": nbtypes.float64(_BUF, _BUF, _LAYOUT, _INTS, _INTS, _INT, _DATA,
                                          _DATA, _BUF, _INT),
    "train_sgd": _TRAIN_RESULT(_BUF, _LAYOUT, _INTS, _INTS, _INT, _DATA, _DATA, _INTS, _HYPER,
                               _BUF),
    "train_single": _TRAIN_RESULT(_BUF, _BUF, _STATE, _LAYOUT, _INTS, _INTS, _INT, _DATA,
                                  _DATA, _INTS, _INT, _HYPER, _INT, _BUF),
    "train_batch": _TRAIN_RESULT(_BUF, _BUF, _STATE, _LAYOUT, _INTS, _INTS, _INT, _DATA, _DATA,
                                 _INTS, _INT, _INT, _INT, _HYPER, _INT, _BUF),
    "batch_part_gradient": nbtypes.float64(_BUF, _BUF, _LAYOUT, _INTS, _INTS, _INT, _DATA,
                                           _DATA, _INTS, _INT, _INT, _BUF),
    "sum_and_update": nbtypes.none(_BUF, _STATE, _STATE, _INT, _HYPER, _INT),
    "train_split": _TRAIN_RESULT(_BUF, _STATE, _STATE, _LAYOUT, _INTS, _INTS, _INT, _DATA,
                                 _DATA, _INTS, _INT, _INT, _INT, _HYPER, _INT, _BUF, _INT,
                                 _INT, _SYNC, _LOSSES),
    # the architecture-specialised kernel (generated by _numba_codegen)
    "train_scalar": _TRAIN_RESULT(_BUF, _INTS, _INT, _DATA, _DATA, _INTS, _HYPER),
}


if numba.config.DISABLE_JIT:
    def prefetch(arr, index):
        """No-op stand-in when Numba is disabled."""
else:
    @intrinsic
    def prefetch(typingctx, arr, index):
        """Hint the CPU to fetch element ``index`` of ``arr``'s flat buffer into cache.

        Lowered to ``llvm.prefetch`` (read, high locality).  Issued a few
        samples ahead of a shuffled order, so the cache misses of future rows
        overlap the current sample's work instead of stalling it; a hint
        never faults, even out of bounds.
        """
        from llvmlite import ir

        def codegen(context, builder, signature, args):
            ary = context.make_array(signature.args[0])(context, builder, args[0])
            address = builder.gep(ary.data, [args[1]])
            i8p = ir.PointerType(ir.IntType(8))
            i32 = ir.IntType(32)
            fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
            fn = builder.module.declare_intrinsic("llvm.prefetch", [i8p], fnty)
            builder.call(fn, [builder.bitcast(address, i8p), ir.Constant(i32, 0),
                              ir.Constant(i32, 3), ir.Constant(i32, 1)])
            return context.get_dummy_value()

        return nbtypes.void(arr, index), codegen


if numba.config.DISABLE_JIT:
    def full_vector_width():
        """No-op stand-in when Numba is disabled."""
else:
    @intrinsic
    def full_vector_width(typingctx):
        """Let LLVM vectorise the calling function's loops at the CPU's full AVX-512 width.

        See FULL_WIDTH.  Adds the string attribute ``"prefer-vector-width"=
        "512"`` to the LLVM function being lowered.  llvmlite's
        ``AttributeSet.add`` accepts only the attribute names it knows, none
        of them a key-value string attribute, so the set's own ``set.add``
        stores it; llvmlite writes the set's items into the IR as they are.
        Emits no instruction; a no-op where FULL_WIDTH is off.
        """
        def codegen(context, builder, signature, args):
            if FULL_WIDTH:
                set.add(builder.function.attributes, '"prefer-vector-width"="512"')
            return context.get_dummy_value()

        return nbtypes.void(), codegen


#: Slots of ``train_split``'s barrier array (int64), a cache line apart so that
#: the word every thread spins on is not written by the arrivals.
SYNC_COUNT, SYNC_GENERATION, SYNC_ABORT = 0, 8, 16
SYNC_WORDS = 24
#: Spins (with the CPU's pause hint) before a waiting thread starts yielding its core.
SPIN_LIMIT = 20000

if not numba.config.DISABLE_JIT:
    @intrinsic
    def atomic_add(typingctx, arr, index, value):
        """``arr[index] += value`` as one sequentially consistent atomic; the old value."""
        def codegen(context, builder, signature, args):
            ary = context.make_array(signature.args[0])(context, builder, args[0])
            address = builder.gep(ary.data, [args[1]])
            return builder.atomic_rmw("add", address, args[2], "seq_cst")

        return nbtypes.int64(arr, index, value), codegen

    @intrinsic
    def atomic_load(typingctx, arr, index):
        """``arr[index]`` read with acquire ordering (never hoisted out of a spin loop)."""
        def codegen(context, builder, signature, args):
            ary = context.make_array(signature.args[0])(context, builder, args[0])
            address = builder.gep(ary.data, [args[1]])
            return builder.load_atomic(address, "acquire", 8)

        return nbtypes.int64(arr, index), codegen

    @intrinsic
    def atomic_store(typingctx, arr, index, value):
        """``arr[index] = value`` with release ordering."""
        def codegen(context, builder, signature, args):
            ary = context.make_array(signature.args[0])(context, builder, args[0])
            address = builder.gep(ary.data, [args[1]])
            builder.store_atomic(args[2], address, "release", 8)
            return context.get_dummy_value()

        return nbtypes.void(arr, index, value), codegen

    @intrinsic
    def spin_pause(typingctx):
        """The CPU's spin-wait hint (``pause`` on x86; nothing elsewhere)."""
        import platform

        from llvmlite import ir

        def codegen(context, builder, signature, args):
            if platform.machine().lower() in ("x86_64", "amd64", "i686", "x86"):
                fnty = ir.FunctionType(ir.VoidType(), [])
                fn = builder.module.declare_intrinsic("llvm.x86.sse2.pause", fnty=fnty)
                builder.call(fn, [])
            return context.get_dummy_value()

        return nbtypes.void(), codegen

    @intrinsic
    def yield_core(typingctx):
        """``sched_yield()``: let another runnable thread have this core (POSIX)."""
        from llvmlite import ir

        def codegen(context, builder, signature, args):
            fnty = ir.FunctionType(ir.IntType(32), [])
            fn = builder.module.globals.get("sched_yield")
            if fn is None:
                fn = ir.Function(builder.module, fnty, "sched_yield")
            builder.call(fn, [])
            return context.get_dummy_value()

        return nbtypes.void(), codegen


if numba.config.DISABLE_JIT:
    def gemm_tile(A, a, rsa, csa, B, b, ldb, Z, z, ldz, kc, accumulate):
        """Plain-Python stand-in of the register tile (same sums, same order)."""
        for r in range(TILE_ROWS):
            for n in range(TILE_WIDTH):
                s = DT(0)
                for k in range(kc):
                    s += A[a + r * rsa + k * csa] * B[b + k * ldb + n]
                if accumulate:
                    s += Z[z + r * ldz + n]
                Z[z + r * ldz + n] = s
else:
    @intrinsic
    def gemm_tile(typingctx, A, a, rsa, csa, B, b, ldb, Z, z, ldz, kc, accumulate):
        """One TILE_ROWS x TILE_WIDTH tile of ``Z (+)= A @ B`` over the whole ``k`` range.

        ``A[r, k]`` is ``A[a + r * rsa + k * csa]`` (strides make a transposed
        operand free), ``B[k, :]`` the TILE_WIDTH values from ``B[b + k *
        ldb]`` and ``Z[r, :]`` those from ``Z[z + r * ldz]``; ``accumulate``
        (a constant) adds the tile to ``Z`` instead of overwriting it.  Per
        ``k``: two vector loads of B, TILE_ROWS broadcasts of A and eight
        FMAs into accumulators that stay in registers for the whole loop.

        Written as LLVM IR because Numba cannot express it: with its SLP
        vectoriser off, scalar accumulators stay scalar, and under
        ``reassoc`` the loop vectoriser vectorises the ``k`` reduction
        instead, spilling every accumulator; a tile in memory (``Z``) cannot
        stay in registers because Z may alias A and B.  Each element of Z is
        summed over ``k`` in order with fused multiply-adds, as in the
        Cython twin (csrc/_gemm.h); loads are unaligned-safe (aligned rows
        just make them faster).
        """
        from llvmlite import ir
        from numba.core import cgutils

        def codegen(context, builder, signature, args):
            pa, pb, pz = (context.make_array(signature.args[i])(context, builder, args[i]).data
                          for i in (0, 4, 7))
            a, rsa, csa, _, b, ldb, _, z, ldz, kc, accumulate = args[1:]
            i64 = ir.IntType(64)
            vt = ir.VectorType(pa.type.pointee, VECTOR)
            vp = vt.as_pointer()
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vt, [vt, vt, vt]),
                "llvm.fma.v%d%s" % (VECTOR, "f64" if ITEMSIZE == 8 else "f32"))
            splat = ir.Constant(ir.VectorType(ir.IntType(32), VECTOR), None)
            undef = ir.Constant(vt, ir.Undefined)
            lane0 = ir.Constant(ir.IntType(32), 0)
            # accumulators as stack slots: LLVM promotes them to registers
            acc = []
            for _ in range(TILE_ROWS * 2):
                slot = cgutils.alloca_once(builder, vt)
                builder.store(ir.Constant(vt, None), slot)
                acc.append(slot)
            rows = [builder.add(a, builder.mul(rsa, ir.Constant(i64, r)))
                    for r in range(TILE_ROWS)]
            with cgutils.for_range(builder, kc) as loop:
                k = loop.index
                bk = builder.add(b, builder.mul(k, ldb))
                bv = [builder.load(builder.bitcast(
                    builder.gep(pb, [builder.add(bk, ir.Constant(i64, v * VECTOR))]), vp),
                    align=ITEMSIZE) for v in range(2)]
                ak = builder.mul(k, csa)
                for r in range(TILE_ROWS):
                    s = builder.load(builder.gep(pa, [builder.add(rows[r], ak)]))
                    av = builder.shuffle_vector(builder.insert_element(undef, s, lane0),
                                                undef, splat)
                    for v in range(2):
                        slot = acc[2 * r + v]
                        builder.store(builder.call(fma, [av, bv[v], builder.load(slot)]), slot)
            add = builder.icmp_unsigned("!=", accumulate, ir.Constant(accumulate.type, 0))
            for r in range(TILE_ROWS):
                zr = builder.add(z, builder.mul(ldz, ir.Constant(i64, r)))
                for v in range(2):
                    ptr = builder.bitcast(
                        builder.gep(pz, [builder.add(zr, ir.Constant(i64, v * VECTOR))]), vp)
                    slot = acc[2 * r + v]
                    with builder.if_then(add):  # folded away: accumulate is a constant
                        builder.store(builder.fadd(builder.load(slot),
                                                   builder.load(ptr, align=ITEMSIZE)), slot)
                    builder.store(builder.load(slot), ptr, align=ITEMSIZE)
            return context.get_dummy_value()

        i8 = nbtypes.int64  # offsets and strides, cast by the caller
        return nbtypes.void(A, i8, i8, i8, B, i8, i8, Z, i8, i8, i8, nbtypes.boolean), codegen


#: Options of every kernel.  ``error_model="numpy"``: a float division by zero
#: gives inf/NaN as in NumPy (numpy_ divides arrays) instead of raising, and
#: the divisions carry no zero test, which would keep their loops scalar.
_OPTIONS = dict(nogil=True, fastmath=FASTMATH, error_model="numpy")


def _entry(fn):
    """Decorator for entry points: compiled lazily, for ``SIGNATURES`` only."""
    return numba.njit(cache=CACHE, **_OPTIONS)(fn)


def _helper(fn):
    """Decorator for helpers: inlined by LLVM into the entry points.

    Helpers are not cached themselves (a cached entry point carries their
    code) and get no Python wrapper.
    """
    return numba.njit(no_cpython_wrapper=True, **_OPTIONS)(fn)


def _inline_helper(fn):
    """Decorator for a helper that calls helpers: inlined in Numba's IR into each caller.

    Its body is typed as part of the entry point that calls it, so its code
    (with the helpers it calls) is optimised by LLVM once, in the entry
    point, instead of once on its own and again in every caller (see the
    module docstring).  The generated machine code is the same.
    """
    return numba.njit(inline="always", no_cpython_wrapper=True, **_OPTIONS)(fn)


# --------------------------------------------------------------------- scalar helpers
# Used by the all-scalar kernels of tiny nets (_numba_codegen); the vector
# helpers below write the same formulas out per code, so the branch on the
# code sits outside their loops.  A softmax output (a row-wise activation with
# a summed loss) never reaches the scalar kernels: numba_ trains it with the
# generic ones.

@_helper
def activate1(z, code):
    """Activation ``code`` of one value."""
    if code == C.RELU:
        return DT(0) if z < 0 else z  # NaN < 0 is False: NaN passes, as in np.maximum
    if code == C.SIGMOID:
        # 1 / (exp(-z) + 1): exp overflows to inf for very negative z, and
        # 1 / inf = 0 is the right limit (numpy_'s order of operations).
        return DT(1) / (math.exp(-z) + DT(1))
    if code == C.TANH:
        return math.tanh(z)
    return z


@_helper
def derivative1(a, code):
    """Activation derivative written through the output ``a`` (1 for linear)."""
    if code == C.RELU:
        return DT(1) if a > 0 else DT(0)  # relu'(0) = 0, as in Keras
    if code == C.SIGMOID:
        return a * (DT(1) - a)
    if code == C.TANH:
        return DT(1) - a * a
    return DT(1)


@_helper
def sign(e):
    """np.sign: -1, 0 or 1, and NaN for NaN."""
    if e > 0:
        return DT(1)
    if e < 0:
        return DT(-1)
    return e  # 0 (or NaN) itself


@_helper
def loss_value(p, y, code):
    """Element-wise loss (before the mean over outputs)."""
    e = p - y
    if code == C.MSE:
        return e * e
    if code == C.MAE:
        return abs(e)
    if code == C.HUBER:
        a = abs(e)
        if a <= DT(C.HUBER_DELTA):
            return DT(0.5) * e * e
        return DT(C.HUBER_DELTA) * (a - DT(0.5 * C.HUBER_DELTA))  # NaN lands here
    # binary cross-entropy on p clipped to [eps, 1 - eps]; NaN passes the clip
    eps = DT(C.BCE_EPSILON)
    hi = DT(1) - eps
    pc = p
    if pc < eps:
        pc = eps
    elif pc > hi:
        pc = hi
    return -(y * math.log(pc) + (DT(1) - y) * math.log(DT(1) - pc))


@_helper
def loss_grad(p, y, code):
    """Element-wise d loss / d p (before the mean over outputs)."""
    e = p - y
    if code == C.MSE:
        return DT(2) * e
    if code == C.MAE:
        return sign(e)
    if code == C.HUBER:
        if abs(e) <= DT(C.HUBER_DELTA):
            return e
        return DT(C.HUBER_DELTA) * sign(e)
    eps = DT(C.BCE_EPSILON)
    hi = DT(1) - eps
    if p >= eps and p <= hi:
        return -(y / p - (DT(1) - y) / (DT(1) - p))
    return DT(0)  # the clip passes no gradient (also for NaN p)


# --------------------------------------------------------------------- vector helpers
# Blocks of rows live in flat buffers: element (r, j) of a block at offset
# ``o`` with row stride ``ld`` is ``buf[uidx(o + r * ld + j)]`` (one row: r = 0).

@_helper
def activate_rows(x, z0, ld, m, n, code):
    """Apply activation ``code`` in place to the first ``n`` columns of ``m`` rows."""
    if code == C.RELU:
        for r in range(m):
            o = z0 + r * ld
            for j in range(n):
                if x[uidx(o + j)] < 0:  # NaN < 0 is False: NaN passes, as in np.maximum
                    x[uidx(o + j)] = DT(0)
    elif code == C.SIGMOID:
        for r in range(m):
            o = z0 + r * ld
            for j in range(n):
                # 1 / (exp(-z) + 1): exp overflows to inf for very negative z,
                # and 1 / inf = 0 is the right limit (numpy_'s order of operations)
                x[uidx(o + j)] = DT(1) / (math.exp(-x[uidx(o + j)]) + DT(1))
    elif code == C.TANH:
        for r in range(m):
            o = z0 + r * ld
            for j in range(n):
                x[uidx(o + j)] = math.tanh(x[uidx(o + j)])
    elif code == C.SOFTMAX:
        # the log-softmax of each row (see _codes): z - max - log(sum(exp(z - max))),
        # numpy_'s order of operations; NaN fails the comparison but poisons the sum
        for r in range(m):
            o = z0 + r * ld
            top = x[uidx(o)]
            for j in range(1, n):
                if x[uidx(o + j)] > top:
                    top = x[uidx(o + j)]
            total = DT(0)
            for j in range(n):
                x[uidx(o + j)] = x[uidx(o + j)] - top
                total += math.exp(x[uidx(o + j)])
            log_total = math.log(total)
            for j in range(n):
                x[uidx(o + j)] = x[uidx(o + j)] - log_total


@_helper
def derivative_rows(x, d0, a0, ld, m, n, code):
    """Deltas at ``d0`` times the activation derivative, written through the outputs at ``a0``.

    A multiply (not a select) for relu, like numpy_: an infinite delta times
    a zero derivative is NaN, not 0.
    """
    if code == C.RELU:
        for r in range(m):
            o = r * ld
            for j in range(n):
                relu_d = DT(1) if x[uidx(a0 + o + j)] > 0 else DT(0)
                x[uidx(d0 + o + j)] = x[uidx(d0 + o + j)] * relu_d
    elif code == C.SIGMOID:
        for r in range(m):
            o = r * ld
            for j in range(n):
                a = x[uidx(a0 + o + j)]
                x[uidx(d0 + o + j)] = x[uidx(d0 + o + j)] * (a * (DT(1) - a))
    elif code == C.TANH:
        for r in range(m):
            o = r * ld
            for j in range(n):
                a = x[uidx(a0 + o + j)]
                x[uidx(d0 + o + j)] = x[uidx(d0 + o + j)] * (DT(1) - a * a)


@_helper
def output_delta(x, z0, d0, ld, Y, y0, m, n, loss, scale):
    """Losses of ``m`` output rows (at ``z0``) against ``Y[y0:y0 + m]`` and their deltas.

    Writes the delta of row r, column j at ``d0 + r * ld + j``: dloss/dz *
    ``scale`` (``scale`` = 1 / (rows * outputs) in ``DT``, rounded as numpy_
    rounds it, with outputs = 1 for categorical cross-entropy; before the
    activation's derivative).  Returns the summed loss
    in float64.  The formulas are ``loss_value`` / ``loss_grad``'s, written out
    per loss so the branch sits outside the loops.
    """
    total = 0.0
    if loss == C.MSE:
        for r in range(m):
            o = r * ld
            for j in range(n):
                e = x[uidx(z0 + o + j)] - Y[y0 + r, j]
                total += np.float64(e * e)
                x[uidx(d0 + o + j)] = (DT(2) * e) * scale
    elif loss == C.MAE:
        for r in range(m):
            o = r * ld
            for j in range(n):
                e = x[uidx(z0 + o + j)] - Y[y0 + r, j]
                total += np.float64(abs(e))
                g = DT(1) if e > 0 else (DT(-1) if e < 0 else e)  # np.sign; NaN stays NaN
                x[uidx(d0 + o + j)] = g * scale
    elif loss == C.HUBER:
        delta = DT(C.HUBER_DELTA)
        for r in range(m):
            o = r * ld
            for j in range(n):
                e = x[uidx(z0 + o + j)] - Y[y0 + r, j]
                a = abs(e)
                if a <= delta:
                    total += np.float64(DT(0.5) * e * e)
                    x[uidx(d0 + o + j)] = e * scale
                else:  # NaN lands here and stays NaN
                    total += np.float64(delta * (a - DT(0.5 * C.HUBER_DELTA)))
                    g = DT(1) if e > 0 else (DT(-1) if e < 0 else e)
                    x[uidx(d0 + o + j)] = (delta * g) * scale
    elif loss == C.CATEGORICAL_CROSSENTROPY:
        # the outputs hold the log-softmax (the pairing is checked): loss -y log p,
        # delta (p - y) with respect to the logits, as numpy_
        for r in range(m):
            o = r * ld
            for j in range(n):
                logp = x[uidx(z0 + o + j)]
                y = Y[y0 + r, j]
                total += np.float64(-(y * logp))
                x[uidx(d0 + o + j)] = (math.exp(logp) - y) * scale
    else:
        # binary cross-entropy on p clipped to [eps, 1 - eps]: the clip passes
        # no gradient, and NaN passes the clip (comparisons with NaN are False)
        eps = DT(C.BCE_EPSILON)
        one = DT(1)
        hi = one - eps
        for r in range(m):
            o = r * ld
            for j in range(n):
                p = x[uidx(z0 + o + j)]
                y = Y[y0 + r, j]
                pc = p
                if pc < eps:
                    pc = eps
                elif pc > hi:
                    pc = hi
                total += np.float64(-(y * math.log(pc) + (one - y) * math.log(one - pc)))
                if p >= eps and p <= hi:
                    x[uidx(d0 + o + j)] = -(y / p - (one - y) / (one - p)) * scale
                else:
                    x[uidx(d0 + o + j)] = DT(0)
    return total


@_helper
def state_floor(c):
    """Magnitude below which a moment multiplied by ``c`` in the next step is stored as zero."""
    return DT(np.float64(TINY) / max(c, FLOOR_MIN_FACTOR))


@_helper
def adam_alpha(hyper, step):
    """Adam's bias-corrected step size at the 1-based step ``step``.

    Formed in float64 and then rounded to ``DT``, as numpy_ forms it from
    Python floats; computed once per step, not per parameter or row.
    """
    step_f = np.float64(step)
    return DT(hyper[0] * math.sqrt(1.0 - hyper[2] ** step_f) / (1.0 - hyper[1] ** step_f))


@_helper
def momentum_step(wk, gk, vk, lr, mu, nesterov):
    """SGD with momentum (or Nesterov's) on one parameter: ``(w, v)`` after the step.

    The velocity is flushed below TINY (see there).
    """
    v = vk * mu - lr * gk
    if nesterov:
        w = wk + (mu * v - lr * gk)
    else:
        w = wk + v
    if abs(v) < TINY:
        v = DT(0)
    return w, v


@_helper
def adam_step(wk, gk, mk, vk, alpha, c1, c2, eps, m_floor, v_floor):
    """Adam on one parameter: ``(w, m, v)`` after the step.

    ``alpha`` is this step's bias-corrected step size (:func:`adam_alpha`),
    ``c1 = 1 - beta_1``, ``c2 = 1 - beta_2``; epsilon outside the root (Keras).
    The moments are stored as zero below their floors (``state_floor(c1)``,
    ``state_floor(c2)``; see FLOOR_MIN_FACTOR).
    """
    m = mk + (gk - mk) * c1
    v = vk + (gk * gk - vk) * c2
    w = wk - alpha * m / (math.sqrt(v) + eps)
    if abs(m) < m_floor:
        m = DT(0)
    if abs(v) < v_floor:
        v = DT(0)
    return w, m, v


@_helper
def scaled_rsqrt(u, x, seeded):
    """``u / sqrt(x)``; with ``seeded`` (float64 only), through the refined float32 seed.

    See RSQRT_SEEDED: the caller guarantees ``SEED_MIN <= x <= 2 SEED_LIMIT``.
    """
    if RSQRT_SEEDED and seeded:
        y = np.float64(np.float32(1) / math.sqrt(np.float32(x)))
        r = 1.0 - (x * y) * y
        uy = u * y
        return DT(uy + uy * (r * (0.5 + 0.375 * r)))
    return u / math.sqrt(x)


@_helper
def rmsprop_step(wk, gk, vk, lr, rho, c, eps, seeded):
    """RMSprop on one parameter, epsilon inside the root (Keras): ``(w, v)`` after the step.

    ``c = 1 - rho``; ``seeded``: see :func:`scaled_rsqrt`.
    """
    v = vk * rho + c * (gk * gk)
    w = wk - scaled_rsqrt(lr * gk, v + eps, seeded)
    if abs(v) < TINY:
        v = DT(0)
    return w, v


@_helper
def rmsprop_momentum_step(wk, gk, vk, bk, lr, rho, c, eps, mom, seeded):
    """RMSprop with momentum on one parameter: ``(w, v, b)``, ``b`` the momentum buffer."""
    v = vk * rho + c * (gk * gk)
    b = bk * mom + scaled_rsqrt(lr * gk, v + eps, seeded)
    w = wk - b
    if abs(v) < TINY:
        v = DT(0)
    if abs(b) < TINY:
        b = DT(0)
    return w, v, b


@_helper
def apply_update(w, g, s, opt, hyper, alpha, start, stop):
    """One optimizer step on parameters ``start:stop`` (Keras 3 formulas, see _codes).

    ``w`` parameters, ``g`` gradient (same offsets), ``s`` state (2, size);
    ``alpha`` is :func:`adam_alpha` of this step (unused by the other
    optimizers).  Scalars are cast to ``DT`` first, as NumPy does with Python
    floats.  Element-wise, so a range may cover any part of the layout (its
    zero padding included).  State values below ``TINY`` are stored as zero
    (see there).  The per-parameter formulas are the ``*_step`` helpers,
    shared with the fused per-sample pass (:func:`backward_flat_fused`).
    """
    lr = DT(hyper[0])
    if opt == C.SGD:
        for q in range(start, stop):
            k = uidx(q)
            w[k] -= lr * g[k]
    elif opt == C.SGD_MOMENTUM or opt == C.SGD_NESTEROV:
        mu = DT(hyper[1])
        nesterov = opt == C.SGD_NESTEROV
        for q in range(start, stop):
            k = uidx(q)
            w[k], s[0, k] = momentum_step(w[k], g[k], s[0, k], lr, mu, nesterov)
    elif opt == C.ADAM:
        c1 = DT(1.0 - hyper[1])
        c2 = DT(1.0 - hyper[2])
        eps = DT(hyper[3])
        m_floor = state_floor(min(1.0 - hyper[1], np.float64(alpha)))
        v_floor = state_floor(1.0 - hyper[2])
        for q in range(start, stop):
            k = uidx(q)
            w[k], s[0, k], s[1, k] = adam_step(w[k], g[k], s[0, k], s[1, k], alpha, c1, c2, eps,
                                               m_floor, v_floor)
    else:  # RMSprop (Keras): eps inside the root
        rho = DT(hyper[1])
        c = DT(1.0 - hyper[1])
        eps = DT(hyper[3])
        if opt == C.RMSPROP_MOMENTUM:
            mom = DT(hyper[2])
            for q in range(start, stop):
                k = uidx(q)
                w[k], s[0, k], s[1, k] = rmsprop_momentum_step(w[k], g[k], s[0, k], s[1, k], lr,
                                                               rho, c, eps, mom, False)
        else:
            for q in range(start, stop):
                k = uidx(q)
                w[k], s[0, k] = rmsprop_step(w[k], g[k], s[0, k], lr, rho, c, eps, False)


@_helper
def seeded_rsqrt_valid(s, opt, hyper):
    """May this call's per-sample RMSprop run the seeded ``u / sqrt(x)`` (see RSQRT_SEEDED)?

    Float64 only; ``eps`` within ``[SEED_MIN, SEED_LIMIT]`` and every stored
    ``v`` (slot 0) within ``[0, SEED_LIMIT]`` (NaN fails).
    """
    if not (RSQRT_SEEDED and (opt == C.RMSPROP or opt == C.RMSPROP_MOMENTUM)):
        return False
    if not SEED_MIN <= hyper[3] <= SEED_LIMIT:
        return False
    for k in range(s.shape[1]):
        if not DT(0) <= s[0, k] <= SEED_LIMIT:
            return False
    return True


@_helper
def gradient_bound(x, a0, dx, d0, n_in, n_out):
    """``max(1, max |a_i|) * max |d_j|``: a bound on one layer's gradients for one row.

    Infinite where an ``a_i`` or ``d_j`` is (NaN does not raise it; NaN
    gradients give NaN in either form of :func:`scaled_rsqrt`).
    """
    full_vector_width()
    a_max = 1.0
    for i in range(n_in):
        a_max = max(a_max, abs(np.float64(x[uidx(a0 + i)])))
    d_max = 0.0
    for j in range(n_out):
        d_max = max(d_max, abs(np.float64(dx[uidx(d0 + j)])))
    return a_max * d_max


# --------------------------------------------------------------------- dense layers
# Kernels are (n_in, n_out) row-major (stride ``ld``).  The forward pass of a
# wide layer runs in "axpy" form, z[:] += a_i * K[i, :], contiguous along the
# outputs (vectorises without reassociation), unrolled over four inputs so
# each store of z serves four multiply-adds.  The delta of the layer below,
# p_i = sum_j K[i, j] d_j, is a contiguous dot product along the same rows (a
# reduction: it needs "reassoc" to vectorise).  A one-unit head (n_out == 1)
# keeps a dense kernel, a contiguous column, so its loops run along i.  The
# minibatch forms (rows_*) hand the full tiles of their products to
# ``gemm_tile`` and keep these loops for the edges.

@_helper
def dense_flat(x, a0, w, k0, ld, b0, z0, n_in, n_out):
    """``x[z0:z0+n_out] = x[a0:a0+n_in] @ K + b`` for one row, K at ``w[k0:]``, b at ``w[b0:]``.

    The bias is added after the sum, as numpy_ does.
    """
    full_vector_width()
    if n_out >= AXPY_MIN_WIDTH:
        for j in range(n_out):
            x[uidx(z0 + j)] = DT(0)
        n4 = n_in - n_in % 4
        for i in range(0, n4, 4):
            c0 = x[uidx(a0 + i)]
            c1 = x[uidx(a0 + i + 1)]
            c2 = x[uidx(a0 + i + 2)]
            c3 = x[uidx(a0 + i + 3)]
            r = k0 + i * ld
            for j in range(n_out):
                x[uidx(z0 + j)] += ((c0 * w[uidx(r + j)] + c1 * w[uidx(r + ld + j)])
                                 + (c2 * w[uidx(r + 2 * ld + j)] + c3 * w[uidx(r + 3 * ld + j)]))
        for i in range(n4, n_in):
            ci = x[uidx(a0 + i)]
            r = k0 + i * ld
            for j in range(n_out):
                x[uidx(z0 + j)] += ci * w[uidx(r + j)]
        for j in range(n_out):
            x[uidx(z0 + j)] += w[uidx(b0 + j)]
    else:  # dot form; a one-unit head's kernel is a contiguous column
        for j in range(n_out):
            s = DT(0)
            for i in range(n_in):
                s += x[uidx(a0 + i)] * w[uidx(k0 + i * ld + j)]
            x[uidx(z0 + j)] = s + w[uidx(b0 + j)]


@_helper
def backward_flat_sgd(x, a0, dx, d0, p0, w, k0, ld, b0, n_in, n_out, lr, propagate):
    """Backward pass of one layer for one row fused with the plain-SGD update.

    ``x[a0:]`` is the layer's input, ``dx[d0:]`` its output delta; with
    ``propagate`` the delta of the layer below, ``dx[p0 + i] = sum_j K[i, j]
    d_j`` from the OLD weights, is written in the same sweep that updates
    ``K[i, j] -= lr * (a_i * d_j)``: numpy_'s numbers, without a gradient buffer.
    """
    full_vector_width()
    if n_out == 1:  # a contiguous column: run along i
        e = dx[uidx(d0)]
        if propagate:
            for i in range(n_in):
                k = w[uidx(k0 + i)]
                dx[uidx(p0 + i)] = k * e
                w[uidx(k0 + i)] = k - lr * (x[uidx(a0 + i)] * e)
        else:
            for i in range(n_in):
                w[uidx(k0 + i)] -= lr * (x[uidx(a0 + i)] * e)
    elif propagate:
        for i in range(n_in):
            ai = x[uidx(a0 + i)]
            r = k0 + i * ld
            s = DT(0)
            for j in range(n_out):
                kij = w[uidx(r + j)]
                dj = dx[uidx(d0 + j)]
                s += kij * dj
                w[uidx(r + j)] = kij - lr * (ai * dj)
            dx[uidx(p0 + i)] = s
    else:
        for i in range(n_in):
            ai = x[uidx(a0 + i)]
            r = k0 + i * ld
            for j in range(n_out):
                w[uidx(r + j)] -= lr * (ai * dx[uidx(d0 + j)])
    for j in range(n_out):
        w[uidx(b0 + j)] -= lr * dx[uidx(d0 + j)]


@_helper
def backward_flat_fused(x, a0, dx, d0, p0, w, s, k0, ld, b0, n_in, n_out, propagate, opt,
                        hyper, alpha, seeded):
    """Backward pass of one layer for one row fused with a stateful optimizer's update.

    As :func:`backward_flat_sgd` does for plain SGD: in one sweep over the
    kernel, each element's gradient ``a_i d_j`` is formed in a register and
    the element and its state updated at once, while the delta of the layer
    below (with ``propagate``) is summed from the OLD weights.  numpy_'s
    numbers (every delta from weights not yet updated, each parameter the
    same ``*_step`` formula), but the weights and state are streamed once per
    sample and no gradient buffer is written and read back: the pass is
    bound by the square root and division of Adam and RMSprop or by cache
    bandwidth (the 100-256-256-1 net's weights and moments outgrow L2).
    One loop nest per optimizer keeps the branch on ``opt`` outside the
    loops.  RMSprop's sums the delta below in a loop of its own before
    updating the row (float64 1.1-1.2x the one-loop form, where the seeded
    root's float32 conversions left the loop at half the vector width's
    rate; Adam's and momentum's one loop measured as fast or faster).  Runs
    over ``n_out`` columns of each kernel row (the zero padding to ``ld`` is
    left alone: it stays zero).  ``seeded``: may RMSprop use the seeded
    ``u / sqrt(x)`` (see RSQRT_SEEDED)?  Returns whether it still may after
    this row's gradients (:func:`gradient_bound`).
    """
    full_vector_width()
    lr = DT(hyper[0])
    if seeded and (opt == C.RMSPROP or opt == C.RMSPROP_MOMENTUM):
        bound = gradient_bound(x, a0, dx, d0, n_in, n_out)
        seeded = bound * bound <= SEED_LIMIT
    if opt == C.ADAM:
        c1 = DT(1.0 - hyper[1])
        c2 = DT(1.0 - hyper[2])
        eps = DT(hyper[3])
        m_floor = state_floor(min(1.0 - hyper[1], np.float64(alpha)))
        v_floor = state_floor(1.0 - hyper[2])
        for i in range(n_in):
            ai = x[uidx(a0 + i)]
            r = k0 + i * ld
            acc = DT(0)
            for j in range(n_out):
                k = uidx(r + j)
                kij = w[k]
                dj = dx[uidx(d0 + j)]
                acc += kij * dj
                w[k], s[0, k], s[1, k] = adam_step(kij, ai * dj, s[0, k], s[1, k], alpha, c1,
                                                   c2, eps, m_floor, v_floor)
            if propagate:
                dx[uidx(p0 + i)] = acc
        for j in range(n_out):
            k = uidx(b0 + j)
            w[k], s[0, k], s[1, k] = adam_step(w[k], dx[uidx(d0 + j)], s[0, k], s[1, k], alpha,
                                               c1, c2, eps, m_floor, v_floor)
    elif opt == C.RMSPROP:
        rho = DT(hyper[1])
        c = DT(1.0 - hyper[1])
        eps = DT(hyper[3])
        for i in range(n_in):
            ai = x[uidx(a0 + i)]
            r = k0 + i * ld
            if propagate:
                acc = DT(0)
                for j in range(n_out):
                    acc += w[uidx(r + j)] * dx[uidx(d0 + j)]
                dx[uidx(p0 + i)] = acc
            for j in range(n_out):
                k = uidx(r + j)
                w[k], s[0, k] = rmsprop_step(w[k], ai * dx[uidx(d0 + j)], s[0, k], lr, rho, c,
                                             eps, seeded)
        for j in range(n_out):
            k = uidx(b0 + j)
            w[k], s[0, k] = rmsprop_step(w[k], dx[uidx(d0 + j)], s[0, k], lr, rho, c, eps,
                                         seeded)
    elif opt == C.RMSPROP_MOMENTUM:
        rho = DT(hyper[1])
        c = DT(1.0 - hyper[1])
        mom = DT(hyper[2])
        eps = DT(hyper[3])
        for i in range(n_in):
            ai = x[uidx(a0 + i)]
            r = k0 + i * ld
            if propagate:
                acc = DT(0)
                for j in range(n_out):
                    acc += w[uidx(r + j)] * dx[uidx(d0 + j)]
                dx[uidx(p0 + i)] = acc
            for j in range(n_out):
                k = uidx(r + j)
                w[k], s[0, k], s[1, k] = rmsprop_momentum_step(w[k], ai * dx[uidx(d0 + j)],
                                                               s[0, k], s[1, k], lr, rho, c,
                                                               eps, mom, seeded)
        for j in range(n_out):
            k = uidx(b0 + j)
            w[k], s[0, k], s[1, k] = rmsprop_momentum_step(w[k], dx[uidx(d0 + j)], s[0, k],
                                                           s[1, k], lr, rho, c, eps, mom, seeded)
    else:  # SGD with momentum, or Nesterov's
        mu = DT(hyper[1])
        nesterov = opt == C.SGD_NESTEROV
        for i in range(n_in):
            ai = x[uidx(a0 + i)]
            r = k0 + i * ld
            acc = DT(0)
            for j in range(n_out):
                k = uidx(r + j)
                kij = w[k]
                dj = dx[uidx(d0 + j)]
                acc += kij * dj
                w[k], s[0, k] = momentum_step(kij, ai * dj, s[0, k], lr, mu, nesterov)
            if propagate:
                dx[uidx(p0 + i)] = acc
        for j in range(n_out):
            k = uidx(b0 + j)
            w[k], s[0, k] = momentum_step(w[k], dx[uidx(d0 + j)], s[0, k], lr, mu, nesterov)
    return seeded


@_helper
def rows_forward(x, a0, lda, w, k0, ldk, b0, z0, ldz, m, n_in, n_out):
    """``Z = A @ K + b`` for ``m`` rows (a multiple of ROW_BLOCK: the caller pads).

    A at ``x[a0:]`` (row stride ``lda``), Z at ``x[z0:]`` (``ldz``), K at
    ``w[k0:]`` (``ldk``), b at ``w[b0:]``.  Wide layers go through register
    tiles (``gemm_tile``: TILE_ROWS rows x TILE_WIDTH outputs, the K panel
    staying in L1 across the row tiles); the outputs past the last full tile
    take two rows at a time in axpy form, unrolled over four inputs.  The
    bias is added after the sum, as numpy_ does; the caller applies the
    activation.
    """
    if n_out < AXPY_MIN_WIDTH:
        for r in range(m):
            a = a0 + r * lda
            for j in range(n_out):
                s = DT(0)
                for i in range(n_in):
                    s += x[uidx(a + i)] * w[uidx(k0 + i * ldk + j)]
                x[uidx(z0 + r * ldz + j)] = s + w[uidx(b0 + j)]
        return
    nt = n_out - n_out % TILE_WIDTH  # outputs in full tiles
    for j in range(0, nt, TILE_WIDTH):
        for r in range(0, m, TILE_ROWS):
            gemm_tile(x, a0 + r * lda, lda, 1, w, k0 + j, ldk, x, z0 + r * ldz + j, ldz, n_in,
                      False)
    if nt < n_out:
        n4 = n_in - n_in % 4
        for r in range(0, m, 2):
            a = a0 + r * lda
            c = a + lda
            z = z0 + r * ldz
            y = z + ldz
            for j in range(nt, n_out):
                x[uidx(z + j)] = DT(0)
                x[uidx(y + j)] = DT(0)
            for i in range(0, n4, 4):
                a_0 = x[uidx(a + i)]
                a_1 = x[uidx(a + i + 1)]
                a_2 = x[uidx(a + i + 2)]
                a_3 = x[uidx(a + i + 3)]
                c_0 = x[uidx(c + i)]
                c_1 = x[uidx(c + i + 1)]
                c_2 = x[uidx(c + i + 2)]
                c_3 = x[uidx(c + i + 3)]
                k = k0 + i * ldk
                for j in range(nt, n_out):
                    w0 = w[uidx(k + j)]
                    w1 = w[uidx(k + ldk + j)]
                    w2 = w[uidx(k + 2 * ldk + j)]
                    w3 = w[uidx(k + 3 * ldk + j)]
                    x[uidx(z + j)] += (a_0 * w0 + a_1 * w1) + (a_2 * w2 + a_3 * w3)
                    x[uidx(y + j)] += (c_0 * w0 + c_1 * w1) + (c_2 * w2 + c_3 * w3)
            for i in range(n4, n_in):
                a_i = x[uidx(a + i)]
                c_i = x[uidx(c + i)]
                k = k0 + i * ldk
                for j in range(nt, n_out):
                    x[uidx(z + j)] += a_i * w[uidx(k + j)]
                    x[uidx(y + j)] += c_i * w[uidx(k + j)]
    for r in range(m):
        z = z0 + r * ldz
        for j in range(n_out):
            x[uidx(z + j)] += w[uidx(b0 + j)]


@_helper
def rows_backward(x, a0, lda, d0, ldd, p0, w, g, k0, ldk, b0, m, n_in, n_out, propagate, kt):
    """Minibatch backward of one layer for ``m`` rows (a multiple of ROW_BLOCK; the
    caller pads with zero deltas): gK += A.T @ D and gb += the column sums of D.

    A (the layer's input) at ``x[a0:]`` (row stride ``lda``), D (its output
    delta) at ``x[d0:]`` (``ldd``); K and gK at offset ``k0`` of ``w`` and
    ``g`` (``ldk``), gb at ``g[b0:]``.  With ``propagate``, also P = D @ K.T
    (the delta of the layer below, before its activation derivative) at
    ``x[p0:]`` with A's stride; ``kt`` is scratch for K.T
    (``transpose_scratch``).  Both products go through register tiles (``gemm_tile``):
    gK's tiles read A transposed through its strides (four inputs per tile
    row, adjacent in A's rows) and D's rows as B; P's read D as A and the
    transposed kernel as B, since the tile needs B contiguous along its
    outputs.  The edges past the last full tiles use the plain loops: four
    rows of rank-1 updates per gradient row, four dot products per kernel
    row.  A one-unit head, whose kernel is a contiguous column, runs its
    loops along the inputs instead.
    """
    if n_out == 1:
        for r in range(m):
            e = x[uidx(d0 + r * ldd)]
            a = a0 + r * lda
            for i in range(n_in):
                g[uidx(k0 + i)] += x[uidx(a + i)] * e
            g[uidx(b0)] += e
            if propagate:
                p = p0 + r * lda
                for i in range(n_in):
                    x[uidx(p + i)] = w[uidx(k0 + i)] * e
        return
    nt = n_out - n_out % TILE_WIDTH  # gK columns in full tiles
    it = n_in - n_in % TILE_ROWS     # gK rows in full tiles
    for j in range(0, nt, TILE_WIDTH):
        for i in range(0, it, TILE_ROWS):
            gemm_tile(x, a0 + i, 1, lda, x, d0 + j, ldd, g, k0 + i * ldk + j, ldk, m, True)
    for r in range(0, m, 4):
        d_0 = d0 + r * ldd
        d_1 = d_0 + ldd
        d_2 = d_1 + ldd
        d_3 = d_2 + ldd
        a = a0 + r * lda
        # the edges: columns nt: of the tiled rows (if any), then every column of the rest
        for i in range(0 if nt < n_out else it, n_in):
            x0 = x[uidx(a + i)]
            x1 = x[uidx(a + lda + i)]
            x2 = x[uidx(a + 2 * lda + i)]
            x3 = x[uidx(a + 3 * lda + i)]
            k = k0 + i * ldk
            for j in range(nt if i < it else 0, n_out):
                g[uidx(k + j)] += ((x0 * x[uidx(d_0 + j)] + x1 * x[uidx(d_1 + j)])
                                   + (x2 * x[uidx(d_2 + j)] + x3 * x[uidx(d_3 + j)]))
        for j in range(n_out):
            g[uidx(b0 + j)] += ((x[uidx(d_0 + j)] + x[uidx(d_1 + j)])
                                + (x[uidx(d_2 + j)] + x[uidx(d_3 + j)]))
    if not propagate:
        return
    # K.T into the scratch, rows a multiple of a cache line apart
    ldt = (n_in + VECTOR - 1) // VECTOR * VECTOR
    for i in range(n_in):
        for j in range(n_out):
            kt[uidx(j * ldt + i)] = w[uidx(k0 + i * ldk + j)]
    pt = n_in - n_in % TILE_WIDTH  # P columns in full tiles
    for i in range(0, pt, TILE_WIDTH):
        for r in range(0, m, TILE_ROWS):
            gemm_tile(x, d0 + r * ldd, ldd, 1, kt, i, ldt, x, p0 + r * lda + i, lda, n_out,
                      False)
    for r in range(0, m, 4):
        d_0 = d0 + r * ldd
        d_1 = d_0 + ldd
        d_2 = d_1 + ldd
        d_3 = d_2 + ldd
        p = p0 + r * lda
        for i in range(pt, n_in):
            k = k0 + i * ldk
            s0 = DT(0)
            s1 = DT(0)
            s2 = DT(0)
            s3 = DT(0)
            for j in range(n_out):
                kj = w[uidx(k + j)]
                s0 += kj * x[uidx(d_0 + j)]
                s1 += kj * x[uidx(d_1 + j)]
                s2 += kj * x[uidx(d_2 + j)]
                s3 += kj * x[uidx(d_3 + j)]
            x[uidx(p + i)] = s0
            x[uidx(p + lda + i)] = s1
            x[uidx(p + 2 * lda + i)] = s2
            x[uidx(p + 3 * lda + i)] = s3


@_helper
def transpose_scratch(sizes):
    """``rows_backward``'s scratch for K.T: the widest propagating layer's, cache-line aligned.

    Allocated once per call of an entry point (Numba's arrays are 32-byte
    aligned; the tile's 64-byte loads of K.T rows should not straddle lines).
    """
    n = 1
    for li in range(1, sizes.shape[0] - 1):
        n = max(n, sizes[li + 1] * ((sizes[li] + VECTOR - 1) // VECTOR * VECTOR))
    buf = np.empty(n + CACHE_LINE // ITEMSIZE, dtype=DT)
    return buf[(-buf.ctypes.data) % CACHE_LINE // ITEMSIZE:]


# --------------------------------------------------------------------- working layout
# The kernels never compute on the caller's flat buffer.  numba_.py copies
# the parameters (and the optimizer state a rule uses) into zeroed, 64-byte-
# aligned working buffers in which every kernel row, bias and activation row
# starts on a cache-line boundary, calls one kernel for a whole chunk, and
# copies back: O(n_params) per call.  ``lay`` (int64, shape (5, n_layers + 1))
# describes that layout; its rows, per layer li:
#   lay[LAY_KERNEL, li]     kernel offset in wp / wg / wst[k]; rows of stride
#                           lay[LAY_KERNEL_LD, li]
#   lay[LAY_BIAS, li]       bias offset
#   lay[LAY_KERNEL_LD, li]  kernel row stride: the width rounded up to a cache
#                           line (a one- to three-unit layer keeps a dense
#                           kernel: a one-unit head is a contiguous column)
#   lay[LAY_ACT_LD, li]     row stride of layer li's activations in the workspace
#   lay[LAY_ACT, li]        offset of layer li's (rows, lay[LAY_ACT_LD, li])
#                           block of activations in the workspace
# (the first three for li < n_layers, the last two also for li = n_layers).
# The workspace ``work`` holds the activations in its first half and the
# deltas, at the same offsets plus ``half``, in its second.  The optimizer
# update is element-wise, so it runs over the whole working buffer at once;
# padding starts at zero and is never read.

@_helper
def load_block(X, x0, m, mp, work, ld, n0):
    """Copy rows ``x0:x0+m`` of X into layer 0 of the workspace, zeroing rows ``m:mp``."""
    for r in range(m):
        for i in range(n0):
            work[uidx(r * ld + i)] = X[x0 + r, i]
    for r in range(m, mp):
        for i in range(n0):
            work[uidx(r * ld + i)] = DT(0)


# --------------------------------------------------------------------- entry points
@_entry
def predict(wp, lay, sizes, acts, X, out, work, rows):
    """Network outputs for the rows of ``X`` into ``out``, ``rows`` rows per block."""
    n_layers = sizes.shape[0] - 1
    n_out = sizes[n_layers]
    top = lay[LAY_ACT, n_layers]
    ldt = lay[LAY_ACT_LD, n_layers]
    n = X.shape[0]
    for start in range(0, n, rows):
        m = min(rows, n - start)
        mp = (m + ROW_BLOCK - 1) // ROW_BLOCK * ROW_BLOCK
        load_block(X, start, m, mp, work, lay[LAY_ACT_LD, 0], sizes[0])
        for li in range(n_layers):  # forward
            rows_forward(work, lay[LAY_ACT, li], lay[LAY_ACT_LD, li], wp, lay[LAY_KERNEL, li],
                         lay[LAY_KERNEL_LD, li], lay[LAY_BIAS, li], lay[LAY_ACT, li + 1],
                         lay[LAY_ACT_LD, li + 1], mp, sizes[li], sizes[li + 1])
            if acts[li] != C.LINEAR:
                activate_rows(work, lay[LAY_ACT, li + 1], lay[LAY_ACT_LD, li + 1], mp,
                              sizes[li + 1], acts[li])
        if acts[n_layers - 1] == C.SOFTMAX:  # the activations hold the log-softmax
            for r in range(m):
                for j in range(n_out):
                    out[start + r, j] = math.exp(work[uidx(top + r * ldt + j)])
        else:
            for r in range(m):
                for j in range(n_out):
                    out[start + r, j] = work[uidx(top + r * ldt + j)]


@_entry
def loss_sum(wp, lay, sizes, acts, loss, X, Y, work, rows):
    """Sum over rows of the per-row loss (mean over outputs), ``rows`` rows per block."""
    n_layers = sizes.shape[0] - 1
    n_out = sizes[n_layers]
    # what a row's element losses are divided by: the outputs (a mean), or 1 (a sum)
    n_mean = 1 if loss == C.CATEGORICAL_CROSSENTROPY else n_out
    half = work.shape[0] // 2
    top = lay[LAY_ACT, n_layers]
    ldt = lay[LAY_ACT_LD, n_layers]
    n = X.shape[0]
    total = 0.0
    for start in range(0, n, rows):
        m = min(rows, n - start)
        mp = (m + ROW_BLOCK - 1) // ROW_BLOCK * ROW_BLOCK
        load_block(X, start, m, mp, work, lay[LAY_ACT_LD, 0], sizes[0])
        for li in range(n_layers):  # forward
            rows_forward(work, lay[LAY_ACT, li], lay[LAY_ACT_LD, li], wp, lay[LAY_KERNEL, li],
                         lay[LAY_KERNEL_LD, li], lay[LAY_BIAS, li], lay[LAY_ACT, li + 1],
                         lay[LAY_ACT_LD, li + 1], mp, sizes[li], sizes[li + 1])
            if acts[li] != C.LINEAR:
                activate_rows(work, lay[LAY_ACT, li + 1], lay[LAY_ACT_LD, li + 1], mp,
                              sizes[li + 1], acts[li])
        total += output_delta(work, top, half + top, ldt, Y, start, m, n_out, loss, DT(1))
    return total / n_mean


@_entry
def loss_and_gradients(wp, wg, lay, sizes, acts, loss, X, Y, work, rows):
    """Loss sum over rows; adds d(loss sum)/d(param) into ``wg`` (working layout).

    Rows go in blocks of ``rows``; each block's gradient is added, so the
    result is the full-batch gradient numpy_ computes with ``scale = 1``.
    """
    n_layers = sizes.shape[0] - 1
    n_out = sizes[n_layers]
    # what a row's element losses are divided by: the outputs (a mean), or 1 (a sum)
    n_mean = 1 if loss == C.CATEGORICAL_CROSSENTROPY else n_out
    half = work.shape[0] // 2
    top = lay[LAY_ACT, n_layers]
    ldt = lay[LAY_ACT_LD, n_layers]
    scale = DT(1.0 / n_mean)
    kt = transpose_scratch(sizes)
    n = X.shape[0]
    total = 0.0
    for start in range(0, n, rows):
        m = min(rows, n - start)
        mp = (m + ROW_BLOCK - 1) // ROW_BLOCK * ROW_BLOCK
        load_block(X, start, m, mp, work, lay[LAY_ACT_LD, 0], sizes[0])
        for li in range(n_layers):  # forward
            rows_forward(work, lay[LAY_ACT, li], lay[LAY_ACT_LD, li], wp, lay[LAY_KERNEL, li],
                         lay[LAY_KERNEL_LD, li], lay[LAY_BIAS, li], lay[LAY_ACT, li + 1],
                         lay[LAY_ACT_LD, li + 1], mp, sizes[li], sizes[li + 1])
            if acts[li] != C.LINEAR:
                activate_rows(work, lay[LAY_ACT, li + 1], lay[LAY_ACT_LD, li + 1], mp,
                              sizes[li + 1], acts[li])
        total += output_delta(work, top, half + top, ldt, Y, start, m, n_out, loss, scale)
        for r in range(m, mp):  # padding rows: zero deltas add nothing
            for j in range(n_out):
                work[uidx(half + top + r * ldt + j)] = DT(0)
        for li in range(n_layers - 1, -1, -1):  # backward
            if acts[li] != C.LINEAR:  # d loss / d z of this layer
                derivative_rows(work, half + lay[LAY_ACT, li + 1], lay[LAY_ACT, li + 1],
                                lay[LAY_ACT_LD, li + 1], mp, sizes[li + 1], acts[li])
            rows_backward(work, lay[LAY_ACT, li], lay[LAY_ACT_LD, li], half + lay[LAY_ACT, li + 1],
                          lay[LAY_ACT_LD, li + 1], half + lay[LAY_ACT, li], wp, wg,
                          lay[LAY_KERNEL, li], lay[LAY_KERNEL_LD, li], lay[LAY_BIAS, li], mp,
                          sizes[li], sizes[li + 1], li > 0, kt)
    return total / n_mean


@_entry
def train_sgd(wp, lay, sizes, acts, loss, X, Y, order, hyper, work):
    """Batch size 1, plain SGD, any widths: the per-sample training loop.

    Per sample: forward pass, loss, then one sweep per layer that computes
    the delta below from the old weights and applies the update
    (``backward_flat_sgd``), so no gradient buffer is touched.  Stops before
    the update of a sample whose loss is not finite.  Returns
    ``(loss_sum, rows_done)`` as ``numba_.train_chunk`` documents.
    """
    full_vector_width()
    n_layers = sizes.shape[0] - 1
    half = work.shape[0] // 2  # activations of the current sample, then their deltas
    n0 = sizes[0]
    n_out = sizes[n_layers]
    # what a row's element losses are divided by: the outputs (a mean), or 1 (a sum)
    n_mean = 1 if loss == C.CATEGORICAL_CROSSENTROPY else n_out
    top = lay[LAY_ACT, n_layers]
    lr = DT(hyper[0])
    scale = DT(1.0 / n_mean)  # d(mean over outputs)/dp for a batch of one row
    ahead = 32 if wp.shape[0] <= 256 else (8 if wp.shape[0] <= 8192 else 2)
    lines = min(PREFETCH_LINES, (n0 * ITEMSIZE + CACHE_LINE - 1) // CACHE_LINE)
    n = order.shape[0]
    total = 0.0
    for q in range(n):
        if q + ahead < n:  # start the cache misses of a later row now
            nxt = order[q + ahead]
            for c in range(lines):
                prefetch(X, nxt * n0 + c * (CACHE_LINE // ITEMSIZE))
            prefetch(Y, nxt * n_out)
        row = order[q]
        for i in range(n0):
            work[i] = X[row, i]
        for li in range(n_layers):
            dense_flat(work, lay[LAY_ACT, li], wp, lay[LAY_KERNEL, li], lay[LAY_KERNEL_LD, li],
                       lay[LAY_BIAS, li], lay[LAY_ACT, li + 1], sizes[li], sizes[li + 1])
            if acts[li] != C.LINEAR:
                activate_rows(work, lay[LAY_ACT, li + 1], 0, 1, sizes[li + 1], acts[li])
        lsum = output_delta(work, top, half + top, 0, Y, row, 1, n_out, loss, scale)
        if not abs(lsum) <= F64_MAX:  # NaN or inf (see F64_MAX)
            return total, q  # this sample's update is not applied
        total += lsum / n_mean
        for li in range(n_layers - 1, -1, -1):
            if acts[li] != C.LINEAR:  # d loss / d z of this layer
                derivative_rows(work, half + lay[LAY_ACT, li + 1], lay[LAY_ACT, li + 1], 0, 1,
                                sizes[li + 1], acts[li])
            backward_flat_sgd(work, lay[LAY_ACT, li], work, half + lay[LAY_ACT, li + 1],
                              half + lay[LAY_ACT, li], wp, lay[LAY_KERNEL, li],
                              lay[LAY_KERNEL_LD, li], lay[LAY_BIAS, li], sizes[li], sizes[li + 1],
                              lr, li > 0)
    return total, n


@_entry
def train_single(wp, wg, wst, lay, sizes, acts, loss, X, Y, order, opt, hyper, step, work):
    """Batch size 1 with momentum, Nesterov, Adam or RMSprop, any widths.

    Per sample: forward pass, loss, then per layer the backward pass fused
    with the update (:func:`backward_flat_fused`: each parameter updated
    while its gradient is in a register; ``wg`` is not used).  Returns
    ``(loss_sum, rows_done)``.
    """
    full_vector_width()
    n_layers = sizes.shape[0] - 1
    half = work.shape[0] // 2
    n0 = sizes[0]
    n_out = sizes[n_layers]
    # what a row's element losses are divided by: the outputs (a mean), or 1 (a sum)
    n_mean = 1 if loss == C.CATEGORICAL_CROSSENTROPY else n_out
    top = lay[LAY_ACT, n_layers]
    scale = DT(1.0 / n_mean)
    ahead = 32 if wp.shape[0] <= 256 else (8 if wp.shape[0] <= 8192 else 2)
    lines = min(PREFETCH_LINES, (n0 * ITEMSIZE + CACHE_LINE - 1) // CACHE_LINE)
    n = order.shape[0]
    total = 0.0
    opt_step = step  # updates done so far: Adam's t after the += 1 below
    seeded = seeded_rsqrt_valid(wst, opt, hyper)
    for q in range(n):
        if q + ahead < n:
            nxt = order[q + ahead]
            for c in range(lines):
                prefetch(X, nxt * n0 + c * (CACHE_LINE // ITEMSIZE))
            prefetch(Y, nxt * n_out)
        row = order[q]
        for i in range(n0):
            work[i] = X[row, i]
        for li in range(n_layers):
            dense_flat(work, lay[LAY_ACT, li], wp, lay[LAY_KERNEL, li], lay[LAY_KERNEL_LD, li],
                       lay[LAY_BIAS, li], lay[LAY_ACT, li + 1], sizes[li], sizes[li + 1])
            if acts[li] != C.LINEAR:
                activate_rows(work, lay[LAY_ACT, li + 1], 0, 1, sizes[li + 1], acts[li])
        lsum = output_delta(work, top, half + top, 0, Y, row, 1, n_out, loss, scale)
        if not abs(lsum) <= F64_MAX:  # NaN or inf (see F64_MAX)
            return total, q  # this sample's update is not applied
        total += lsum / n_mean
        opt_step += 1
        alpha = adam_alpha(hyper, opt_step) if opt == C.ADAM else DT(0)
        for li in range(n_layers - 1, -1, -1):
            if acts[li] != C.LINEAR:  # d loss / d z of this layer
                derivative_rows(work, half + lay[LAY_ACT, li + 1], lay[LAY_ACT, li + 1], 0, 1,
                                sizes[li + 1], acts[li])
            seeded = backward_flat_fused(work, lay[LAY_ACT, li], work,
                                         half + lay[LAY_ACT, li + 1], half + lay[LAY_ACT, li],
                                         wp, wst, lay[LAY_KERNEL, li], lay[LAY_KERNEL_LD, li],
                                         lay[LAY_BIAS, li], sizes[li], sizes[li + 1], li > 0,
                                         opt, hyper, alpha, seeded)
    return total, n


@_inline_helper
def batch_rows_gradient(wp, wg, lay, sizes, acts, loss, X, Y, order, lo, hi, n, rows, scale,
                        work, yb, kt):
    """Forward and backward of rows ``order[lo:hi]``; their gradient, times ``scale``, added to ``wg``.

    The rows go through in blocks of at most ``rows`` (a multiple of
    ROW_BLOCK), gathered into the aligned workspace so every layer is a small
    matrix product (``rows_forward`` / ``rows_backward``); the rows of the
    next block (up to ``order[n - 1]``) are prefetched meanwhile.  ``scale``
    multiplies the output deltas: ``1 / (batch rows * outputs)`` gives the
    batch mean's gradient.  Returns the rows' loss sum times ``n_mean`` (the
    outputs, or 1 for categorical cross-entropy, whose row loss is a sum).
    """
    n_layers = sizes.shape[0] - 1
    half = work.shape[0] // 2
    n0 = sizes[0]
    ld0 = lay[LAY_ACT_LD, 0]
    n_out = sizes[n_layers]
    top = lay[LAY_ACT, n_layers]
    ldt = lay[LAY_ACT_LD, n_layers]
    lines = min(PREFETCH_LINES, (n0 * ITEMSIZE + CACHE_LINE - 1) // CACHE_LINE)
    lsum = 0.0
    for first in range(lo, hi, rows):
        m = min(rows, hi - first)
        mp = (m + ROW_BLOCK - 1) // ROW_BLOCK * ROW_BLOCK
        for r in range(m):  # gather the block
            row = order[first + r]
            for i in range(n0):
                work[uidx(r * ld0 + i)] = X[row, i]
            for j in range(n_out):
                yb[r, j] = Y[row, j]
        for r in range(m, mp):  # padding rows: zero inputs
            for i in range(n0):
                work[uidx(r * ld0 + i)] = DT(0)
        for r in range(first + m, min(first + m + rows, n)):  # the next block
            nxt = order[r]
            for c in range(lines):
                prefetch(X, nxt * n0 + c * (CACHE_LINE // ITEMSIZE))
            prefetch(Y, nxt * n_out)
        for li in range(n_layers):  # forward
            rows_forward(work, lay[LAY_ACT, li], lay[LAY_ACT_LD, li], wp, lay[LAY_KERNEL, li],
                         lay[LAY_KERNEL_LD, li], lay[LAY_BIAS, li], lay[LAY_ACT, li + 1],
                         lay[LAY_ACT_LD, li + 1], mp, sizes[li], sizes[li + 1])
            if acts[li] != C.LINEAR:
                activate_rows(work, lay[LAY_ACT, li + 1], lay[LAY_ACT_LD, li + 1], mp,
                              sizes[li + 1], acts[li])
        lsum += output_delta(work, top, half + top, ldt, yb, 0, m, n_out, loss, scale)
        for r in range(m, mp):  # padding rows: zero deltas add nothing
            for j in range(n_out):
                work[uidx(half + top + r * ldt + j)] = DT(0)
        for li in range(n_layers - 1, -1, -1):  # backward
            if acts[li] != C.LINEAR:  # d loss / d z of this layer
                derivative_rows(work, half + lay[LAY_ACT, li + 1], lay[LAY_ACT, li + 1],
                                lay[LAY_ACT_LD, li + 1], mp, sizes[li + 1], acts[li])
            rows_backward(work, lay[LAY_ACT, li], lay[LAY_ACT_LD, li],
                          half + lay[LAY_ACT, li + 1], lay[LAY_ACT_LD, li + 1],
                          half + lay[LAY_ACT, li], wp, wg, lay[LAY_KERNEL, li],
                          lay[LAY_KERNEL_LD, li], lay[LAY_BIAS, li], mp, sizes[li],
                          sizes[li + 1], li > 0, kt)
    return lsum


@_entry
def train_batch(wp, wg, wst, lay, sizes, acts, loss, X, Y, order, batch_size, rows, opt, hyper,
                step, work):
    """Minibatches, any widths: per batch a forward pass, the mean loss's gradient, one update.

    A batch goes through ``batch_rows_gradient`` (all of a small batch in one
    block); the update waits until the batch's loss is known to be finite.
    Returns ``(loss_sum, rows_done)``.
    """
    n = order.shape[0]
    n_out = sizes[sizes.shape[0] - 1]
    # what a row's element losses are divided by: the outputs (a mean), or 1 (a sum)
    n_mean = 1 if loss == C.CATEGORICAL_CROSSENTROPY else n_out
    yb = np.empty((rows, n_out), dtype=DT)
    kt = transpose_scratch(sizes)
    total = 0.0
    opt_step = step  # updates done so far: Adam's t after the += 1 below
    for start in range(0, n, batch_size):
        size = min(batch_size, n - start)
        scale = DT(1.0 / size / n_mean)  # d(batch mean)/dp, rounded like numpy_
        for k in range(wg.shape[0]):
            wg[k] = DT(0)
        lsum = batch_rows_gradient(wp, wg, lay, sizes, acts, loss, X, Y, order, start,
                                   start + size, n, rows, scale, work, yb, kt)
        if not abs(lsum) <= F64_MAX:  # NaN or inf (see F64_MAX)
            return total, start  # this batch's update is not applied
        total += lsum / n_mean
        opt_step += 1
        alpha = adam_alpha(hyper, opt_step) if opt == C.ADAM else DT(0)
        apply_update(wp, wg, wst, opt, hyper, alpha, 0, wp.shape[0])
    return total, n


@_entry
def batch_part_gradient(wp, wg, lay, sizes, acts, loss, X, Y, order, size, rows, work):
    """One part of a split minibatch of ``size`` rows: the gradient of rows ``order`` into ``wg``.

    ``wg`` is overwritten with this part's share of the batch mean's gradient
    (deltas scaled by ``1 / (size * outputs)``, as ``train_batch`` scales
    them), so the parts' sum is the batch's gradient.  Returns the part's
    loss sum.  Threads call it on the same ``wp`` with their own ``wg`` and
    ``work``; ``sum_and_update`` then takes the step.
    """
    n_out = sizes[sizes.shape[0] - 1]
    n_mean = 1 if loss == C.CATEGORICAL_CROSSENTROPY else n_out  # as in train_batch
    yb = np.empty((rows, n_out), dtype=DT)
    kt = transpose_scratch(sizes)
    for k in range(wg.shape[0]):
        wg[k] = DT(0)
    n = order.shape[0]
    lsum = batch_rows_gradient(wp, wg, lay, sizes, acts, loss, X, Y, order, 0, n, n, rows,
                               DT(1.0 / size / n_mean), work, yb, kt)
    return lsum / n_mean


@_entry
def sum_and_update(wp, grads, wst, opt, hyper, step):
    """Add the parts' gradients ``grads[1:]`` into ``grads[0]`` in order, then one step.

    ``step`` counts the updates before this one (Adam's t is ``step + 1``).
    """
    for k in range(1, grads.shape[0]):
        for i in range(grads.shape[1]):
            grads[0, uidx(i)] += grads[k, uidx(i)]
    g = grads[0]
    alpha = adam_alpha(hyper, step + 1) if opt == C.ADAM else DT(0)
    apply_update(wp, g, wst, opt, hyper, alpha, 0, wp.shape[0])


@_helper
def barrier(sync, parts, generation):
    """Wait until all ``parts`` threads have arrived at this barrier (the ``generation``-th).

    The last to arrive resets the count and opens the next generation; the
    others spin on the generation word (a pause hint per spin, then yielding
    the core after SPIN_LIMIT spins, so that more threads than cores still
    progress).  The sequentially consistent arrival and the acquire load order
    every write made before the barrier before every read after it.  False
    when another thread raised the abort word instead (its task failed).
    """
    if atomic_add(sync, SYNC_COUNT, 1) == parts - 1:
        atomic_store(sync, SYNC_COUNT, 0)
        atomic_store(sync, SYNC_GENERATION, generation + 1)
        return True
    spins = 0
    while atomic_load(sync, SYNC_GENERATION) == generation:
        if atomic_load(sync, SYNC_ABORT) != 0:
            return False
        if spins < SPIN_LIMIT:
            spins += 1
            spin_pause()
        else:
            yield_core()
    return True


@_entry
def train_split(wp, grads, wst, lay, sizes, acts, loss, X, Y, order, batch_size, rows, opt,
                hyper, step, work, part, parts, sync, losses):
    """Part ``part`` of ``parts`` threads training one chunk of split minibatches together.

    Every thread calls it at once on the same buffers (``sync`` zeroed
    before), each with its own ``work``.  Per batch: this thread's share of
    the rows (``fastbp._parallel.batch_shares``: whole shares of
    ``ceil(size / parts)`` rows) has its part of the batch-mean gradient
    written to ``grads[part]`` and its loss to ``losses[part]``, as
    ``batch_part_gradient`` computes them; after a barrier, every part adds
    the losses and, if finite, adds the gradients in part order and takes
    the step (as ``sum_and_update``) on its own slice of the parameters,
    whole cache lines; after a second barrier every thread goes on to the
    next batch.  A non-finite batch loss stops every part at once, its step
    not taken.  One call per chunk instead of two thread hand-offs per
    batch.  Returns ``(loss_sum, rows_done)`` (the same in every part), or
    ``(0, -1)`` when the abort word was raised.
    """
    n = order.shape[0]
    n_out = sizes[sizes.shape[0] - 1]
    n_mean = 1 if loss == C.CATEGORICAL_CROSSENTROPY else n_out  # as in train_batch
    yb = np.empty((rows, n_out), dtype=DT)
    kt = transpose_scratch(sizes)
    wg = grads[part]
    line = CACHE_LINE // ITEMSIZE
    lines = (wp.shape[0] + line - 1) // line
    p_lo = min(part * lines // parts * line, wp.shape[0])  # this part's slice of the step
    p_hi = min((part + 1) * lines // parts * line, wp.shape[0])
    total = 0.0
    generation = 0
    opt_step = step
    for start in range(0, n, batch_size):
        size = min(batch_size, n - start)
        share = (size + parts - 1) // parts
        n_shares = (size + share - 1) // share
        lo = min(start + part * n_shares // parts * share, start + size)
        hi = min(start + (part + 1) * n_shares // parts * share, start + size)
        for k in range(wg.shape[0]):
            wg[k] = DT(0)
        lsum = 0.0
        if lo < hi:
            lsum = batch_rows_gradient(wp, wg, lay, sizes, acts, loss, X, Y, order, lo, hi, hi,
                                       rows, DT(1.0 / size / n_mean), work, yb, kt)
        losses[part] = lsum / n_mean
        if not barrier(sync, parts, generation):
            return 0.0, -1
        generation += 1
        batch_loss = 0.0  # every part adds the same losses in the same order
        for k in range(parts):
            batch_loss += losses[k]
        if not abs(batch_loss) <= F64_MAX:  # NaN or inf: no part takes the step (see F64_MAX)
            return total, start
        total += batch_loss
        # Every part sums and steps its own slice of the parameters (whole cache
        # lines, so no line is written by two threads): the same operations on
        # each element as one thread doing it all, but the step is not serial,
        # and each thread then fetches the other's updated lines only, not all.
        for k in range(1, parts):
            for i in range(p_lo, p_hi):
                grads[0, uidx(i)] += grads[k, uidx(i)]
        opt_step += 1
        alpha = adam_alpha(hyper, opt_step) if opt == C.ADAM else DT(0)
        apply_update(wp, grads[0], wst, opt, hyper, alpha, p_lo, p_hi)
        if not barrier(sync, parts, generation):
            return 0.0, -1
        generation += 1
    return total, n
