"""Source generator for the Numba backend's architecture-specialised kernel.

For a tiny net trained one sample at a time (W1, a 2-2-1 net, does ~30
flops per sample) the time per sample is the latency of one dependency
chain: weights -> forward pass -> loss -> delta -> updated weights -> the
next sample's forward pass.  A width-generic kernel keeps the weights in
memory (a store-to-load round trip on that chain) and pays loop set-up and
branch overhead per layer per sample.  This module writes, for one
architecture, a kernel in which every weight is a local variable (a
register) for the whole chunk, every layer is straight-line code and the
multiplies that are identities (the 1/n_out scale of a one-output net, the
derivative of a linear layer) are left off the chain.  Measured: several
times faster than the generic kernel on tiny nets (15x on 2-2-1).

Numba has no template parameters, so the widths become literals in
generated Python source.  ``numba_.py`` writes that source into the
per-user cache directory, checks that the file holds exactly this text and
compiles the module from the text itself (never from ``__pycache__``
bytecode); the code objects carry the file's path, so Numba's
``cache=True`` keeps the compiled code across processes, in pickled index
(``.nbi``) and machine-code (``.nbc``) files that Numba loads without any
check of its own: the cache directory must be private (``numba_.py``
creates it 0700 and refuses one that others can write to).  Wider nets do not
gain from this (the generic kernels vectorise the same loops; measured
within noise on 20-64-64-1 and 100-256-256-1) and would pay a compilation
per architecture, so they use the generic kernels.

Activations and loss stay run-time codes: their branches are perfectly
predictable and sit off the dependency chain, and one compilation per
architecture and dtype then serves every configuration, which keeps compile
counts low.

This module only produces text; it imports neither Numba nor the API.
"""

import hashlib

#: Nets with at most this many parameters (and widths at most MAX_WIDTH) get
#: the all-scalar per-sample SGD kernel.  Measured against the generic
#: kernel (float64, shuffled rows): 2-2-1 15x, 3-4-2 9x, 4-8-1 7x, 10-10-1 3.4x
#: faster, at a compile time that grows with the parameter count (0.5 s for
#: 2-2-1, 1.7 s for 10-10-1, 7 s for 337 parameters).
SCALAR_MAX_PARAMS = 128
SCALAR_MAX_WIDTH = 16

#: Bytes per cache line, and at most this many lines of a row are prefetched.
CACHE_LINE = 64
PREFETCH_LINES = 8

#: Samples ahead whose rows are prefetched (a tiny net takes nanoseconds per
#: sample, so the next rows' cache misses must be started well ahead).
PREFETCH_AHEAD = 32

#: Names the generated module takes from the kernels module of its dtype.
HELPERS = ("DT", "C", "CACHE", "F64_MAX", "SIGNATURES", "_entry", "prefetch", "activate1",
           "derivative1", "loss_value", "loss_grad")

_HEADER_START = "# ---- header: rewritten when the module is materialised"
_HEADER_END = "# ---- end of header"


def kernels_source(source, dtype, cache):
    """``source``, the text of ``_numba_kernels``, with its header set for ``dtype``, ``cache``."""
    head, rest = source.split(_HEADER_START, 1)
    _, tail = rest.split(_HEADER_END, 1)
    header = (f"{_HEADER_START} (done) --------\n"
              f"DTYPE = {dtype!r}\nCACHE = {bool(cache)!r}\n{_HEADER_END}")
    return head + header + tail


def digest(text):
    """Short content hash used in module names (a new source never reuses a stale cache)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def n_params(sizes):
    """Parameter count of a dense net (as ``_layout.n_params``)."""
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def wants_scalar(sizes):
    """Whether ``sizes`` is tiny enough for the all-scalar kernel."""
    return n_params(sizes) <= SCALAR_MAX_PARAMS and max(sizes) <= SCALAR_MAX_WIDTH


class _Writer:
    """Accumulates indented source lines."""

    def __init__(self):
        self.lines = []
        self.level = 0

    def __call__(self, line=""):
        self.lines.append(("    " * self.level + line) if line else "")

    def indent(self):
        self.level += 1

    def dedent(self):
        self.level -= 1

    def text(self):
        return "\n".join(self.lines) + "\n"


def _layers(sizes):
    """[(kernel offset, bias offset, n_in, n_out), ...]: the flat layout of _layout."""
    out = []
    offset = 0
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        out.append((offset, offset + n_in * n_out, n_in, n_out))
        offset += n_in * n_out + n_out
    return out


def _emit_prefetch_row(emit, row, n0, nl, itemsize):
    """Prefetch the cache lines of ``X[row]`` (up to PREFETCH_LINES) and ``Y[row]``."""
    per_line = CACHE_LINE // itemsize
    offsets = list(range(0, n0, per_line))[:PREFETCH_LINES]
    if n0 - 1 not in offsets and len(offsets) < PREFETCH_LINES:
        offsets.append(n0 - 1)  # a row that starts mid-line spills into one more line
    for off in offsets:
        emit(f"prefetch(X, {row} * {n0} + {off})")
    emit(f"prefetch(Y, {row} * {nl})")


def _emit_train_scalar(emit, sizes, itemsize):
    """Per-sample plain SGD with every weight in a local variable."""
    layers = _layers(sizes)
    n_layers = len(layers)
    n0, nl = sizes[0], sizes[-1]

    def weight(li, i, j):  # kernel entry (i, j) of layer li
        return f"k{li}_{i}_{j}"

    def unit(li, j):  # output j of layer li (li = 0: the input)
        return f"x_{j}" if li == 0 else f"h{li}_{j}"

    emit("@_entry")
    emit("def train_scalar(params, acts, loss, X, Y, order, hyper):")
    emit.indent()
    emit(f'"""Batch size 1, plain SGD, layers {"-".join(map(str, sizes))}: '
      'weights in registers for the whole chunk.')
    emit()
    emit("Same contract and numbers as the generic ``train_sgd``.")
    emit('"""')
    for li in range(1, n_layers + 1):
        emit(f"act{li} = acts[{li - 1}]")
    emit("lr = DT(hyper[0])")
    if nl != 1:
        emit(f"scale = DT(1.0 / {nl})  # d(mean over outputs)/dp for a batch of one row")
    emit("n = order.shape[0]")
    emit("total = 0.0")
    emit("done = n")
    for li, (k_off, b_off, n_in, n_out) in enumerate(layers, 1):
        for i in range(n_in):
            emit("; ".join(f"{weight(li, i, j)} = params[{k_off + i * n_out + j}]"
                           for j in range(n_out)))
        emit("; ".join(f"c{li}_{j} = params[{b_off + j}]" for j in range(n_out)))
    emit("for q in range(n):")
    emit.indent()
    emit(f"if q + {PREFETCH_AHEAD} < n:  # start the cache misses of a later row now")
    emit.indent()
    emit(f"ahead = order[q + {PREFETCH_AHEAD}]")
    _emit_prefetch_row(emit, "ahead", n0, nl, itemsize)
    emit.dedent()
    emit("row = order[q]")
    emit("; ".join(f"x_{i} = X[row, {i}]" for i in range(n0)))
    for li, (_, _, n_in, n_out) in enumerate(layers, 1):
        emit(f"# layer {li}: {n_in} -> {n_out}")
        for j in range(n_out):
            terms = " + ".join(f"{unit(li - 1, i)} * {weight(li, i, j)}" for i in range(n_in))
            emit(f"h{li}_{j} = ({terms}) + c{li}_{j}")
        emit(f"if act{li} != C.LINEAR:")
        emit.indent()
        for j in range(n_out):
            emit(f"h{li}_{j} = activate1(h{li}_{j}, act{li})")
        emit.dedent()
    emit("; ".join(f"y_{j} = Y[row, {j}]" for j in range(nl)))
    emit("lsum = " + " + ".join(f"np.float64(loss_value(h{n_layers}_{j}, y_{j}, loss))"
                             for j in range(nl)))
    emit("if not abs(lsum) <= F64_MAX:  # NaN or inf")
    emit("    done = q  # this sample's update is not applied")
    emit("    break")
    emit(f"total += lsum / {nl}")
    scale = " * scale" if nl != 1 else ""  # 1 / n_out is exactly 1 for one output
    for j in range(nl):
        emit(f"e{n_layers}_{j} = loss_grad(h{n_layers}_{j}, y_{j}, loss){scale}")
    emit(f"if act{n_layers} != C.LINEAR:")
    emit.indent()
    for j in range(nl):
        emit(f"e{n_layers}_{j} = e{n_layers}_{j} * derivative1(h{n_layers}_{j}, act{n_layers})")
    emit.dedent()
    for li in range(n_layers, 0, -1):
        _, _, n_in, n_out = layers[li - 1]
        emit(f"# layer {li} backward and update")
        if li > 1:  # delta of the layer below, from the OLD weights
            for i in range(n_in):
                terms = " + ".join(f"{weight(li, i, j)} * e{li}_{j}" for j in range(n_out))
                emit(f"e{li - 1}_{i} = {terms}")
            emit(f"if act{li - 1} != C.LINEAR:")
            emit.indent()
            for i in range(n_in):
                emit(f"e{li - 1}_{i} = e{li - 1}_{i} * derivative1(h{li - 1}_{i}, act{li - 1})")
            emit.dedent()
        for i in range(n_in):
            for j in range(n_out):
                emit(f"{weight(li, i, j)} -= lr * ({unit(li - 1, i)} * e{li}_{j})")
        for j in range(n_out):
            emit(f"c{li}_{j} -= lr * e{li}_{j}")
    emit.dedent()
    for li, (k_off, b_off, n_in, n_out) in enumerate(layers, 1):
        for i in range(n_in):
            emit("; ".join(f"params[{k_off + i * n_out + j}] = {weight(li, i, j)}"
                           for j in range(n_out)))
        emit("; ".join(f"params[{b_off + j}] = c{li}_{j}" for j in range(n_out)))
    emit("return total, done")
    emit.dedent()


def network_source(sizes, dtype, kernels_module):
    """Module source of the scalar kernel for the ``sizes`` net in ``dtype``.

    The helpers come from ``kernels_module``: the name of the kernels module
    for the same dtype and cache setting (a materialised module, whose name
    holds the hash of its text, or ``fastbp._backends._numba_kernels`` itself
    when nothing is cached); naming it in the source also ties this module's
    cache entries to exactly those kernels.
    """
    sizes = tuple(int(s) for s in sizes)
    itemsize = 4 if dtype == "float32" else 8
    emit = _Writer()
    emit(f'"""fastbp Numba kernel specialised to layers {list(sizes)}, {dtype}.')
    emit()
    emit("Generated by fastbp._backends._numba_codegen; do not edit: the file name is")
    emit('the hash of this content."""')
    emit()
    emit("import numpy as np")
    emit()
    emit(f"from {kernels_module} import ({', '.join(HELPERS)})")
    emit()
    emit(f"DTYPE = {dtype!r}")
    emit(f"SIZES = {sizes!r}")
    emit()
    emit()
    _emit_train_scalar(emit, sizes, itemsize)
    return emit.text()
