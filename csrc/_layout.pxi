# The network layout: per-layer geometry (Net), the line-aligned working
# layout the non-tiny kernels compute on, its allocation and the copies
# between it and the caller's flat layout.  Included by _ckernels.pyx.
#
# The caller's parameters are one flat C-contiguous buffer: for layer ``l``
# its kernel ``(sizes[l], sizes[l+1])`` row-major, then its bias.  At the
# start of a call ``net_init`` turns ``sizes`` into per-layer offsets once, so
# the loops walk each layer through its own base pointer (``K + i * ldk +
# j``), never through one flat ``offset + j`` index, and the innermost loops
# run over the *output units* ``j``, contiguous in the kernel row and in the
# activation vector alike: the compiler vectorises ``z[j] += a[i] * K[i, j]``.
# Except on the tiny path, the kernels work on a *working copy* of the
# parameters (and optimizer state) in which every kernel row, bias,
# activation row and delta row starts on a cache line (``LINE`` bytes; rows
# padded with zeros): NumPy hands over buffers aligned to 16 bytes only, and a
# vector load that straddles two cache lines costs about twice as much.  The
# copy in and out is O(n_params).  All scratch space is allocated once per
# call (or per trainer), never per sample.

cdef enum:
    LINE = 64   # bytes per cache line: the alignment of the working layout


cdef struct Net:
    # Per-layer geometry, computed once per call from ``sizes``.  Two layouts of
    # the parameters: the caller's flat one (``kernel_off``, ``bias_off``: kernel
    # rows ``n_out`` apart) and the working one the non-tiny kernels compute on
    # (``wk_off``, ``wb_off``, rows ``ldk`` apart), in which every kernel row and
    # bias starts on a cache line (see ``work_layout``).
    Py_ssize_t n_layers
    Py_ssize_t n_params       # length of the caller's flat buffer
    Py_ssize_t n_work         # length of the working buffer (a whole number of lines)
    Py_ssize_t max_width      # widest layer, inputs included
    Py_ssize_t ldd            # row stride of delta slabs: max_width rounded up to a line
    Py_ssize_t total_width    # row stride of activation rows (layers 1..n_layers, aligned)
    const int64_t* sizes      # n_layers + 1 widths
    const int64_t* acts       # n_layers activation codes
    Py_ssize_t* kernel_off    # caller's layout: offset of layer l's kernel
    Py_ssize_t* bias_off      # caller's layout: offset of layer l's bias
    Py_ssize_t* wk_off        # working layout: offset of layer l's kernel
    Py_ssize_t* wb_off        # working layout: offset of layer l's bias
    Py_ssize_t* ldk           # working layout: row stride of layer l's kernel
    Py_ssize_t* act_off       # offset of layer l's activations (l >= 1) within a row


cdef inline Py_ssize_t line_up(Py_ssize_t n, Py_ssize_t itemsize) noexcept nogil:
    """``n`` elements rounded up to a whole number of cache lines."""
    cdef Py_ssize_t per_line = LINE // itemsize
    return (n + per_line - 1) // per_line * per_line


cdef int net_init(Net* net, const int64_t[::1] sizes, const int64_t[::1] acts,
                  Py_ssize_t itemsize) except -1:
    """Fill ``net`` from ``sizes``/``acts`` (checked); allocates the offset arrays.

    The working layout: every kernel row, bias, activation row and delta
    row starts on a ``LINE``-byte boundary (buffers are allocated line-aligned),
    so no vector load splits a cache line -- the parameters the caller hands
    over start anywhere (NumPy aligns to 16 bytes) and a split load costs
    about twice a plain one.  A kernel narrower than a line keeps dense rows
    (a one-unit head stays a contiguous column).  Pair with :c:func:`net_free`.
    """
    cdef Py_ssize_t n_layers = sizes.shape[0] - 1
    cdef Py_ssize_t l, offset = 0, work = 0, width = 0, total = 0, n_in, n_out
    if n_layers < 1:
        raise ValueError(f"sizes: expected at least 2 layer widths; found {sizes.shape[0]}.")
    if acts.shape[0] != n_layers:
        raise ValueError(f"acts: expected {n_layers} activation codes (one per layer); "
                         f"found {acts.shape[0]}.")
    for l in range(n_layers + 1):
        if sizes[l] < 1:
            raise ValueError(f"sizes: expected positive widths; found {sizes[l]} at {l}.")
    for l in range(n_layers):
        if acts[l] < LINEAR or acts[l] > SOFTMAX:
            raise ValueError(f"acts: unknown activation code {acts[l]} at layer {l}.")
    net.n_layers = n_layers
    net.sizes = &sizes[0]
    net.acts = &acts[0]
    net.kernel_off = <Py_ssize_t*> malloc(6 * (n_layers + 1) * sizeof(Py_ssize_t))
    if net.kernel_off == NULL:
        raise MemoryError()
    net.bias_off = net.kernel_off + (n_layers + 1)
    net.wk_off = net.bias_off + (n_layers + 1)
    net.wb_off = net.wk_off + (n_layers + 1)
    net.ldk = net.wb_off + (n_layers + 1)
    net.act_off = net.ldk + (n_layers + 1)
    net.act_off[0] = -1  # the inputs are never stored in the activation rows
    for l in range(n_layers + 1):
        if sizes[l] > width:
            width = sizes[l]
        if l:
            net.act_off[l] = total
            total += line_up(sizes[l], itemsize)
    for l in range(n_layers):
        n_in = sizes[l]
        n_out = sizes[l + 1]
        net.kernel_off[l] = offset
        net.bias_off[l] = offset + n_in * n_out
        offset += n_in * n_out + n_out
        net.ldk[l] = n_out if n_out * itemsize < LINE else line_up(n_out, itemsize)
        net.wk_off[l] = work
        work = line_up(work + n_in * net.ldk[l], itemsize)
        net.wb_off[l] = work
        work = line_up(work + n_out, itemsize)
    net.n_params = offset
    net.n_work = work
    net.max_width = width
    net.ldd = line_up(width, itemsize)
    net.total_width = total
    return 0


cdef inline void net_free(Net* net) noexcept:
    free(net.kernel_off)
    net.kernel_off = NULL


cdef void* alloc(Py_ssize_t n_bytes) except NULL:
    """``malloc`` that raises MemoryError instead of returning NULL."""
    cdef void* p = malloc(n_bytes if n_bytes > 0 else 1)
    if p == NULL:
        raise MemoryError(f"could not allocate {n_bytes} bytes of scratch space")
    return p


cdef void* alloc_lines(Py_ssize_t n_bytes, void** raw) except NULL:
    """Zeroed scratch space starting on a cache line; ``free(raw[0])`` releases it."""
    cdef char* p = <char*> alloc(n_bytes + LINE)
    raw[0] = p
    p = p + (LINE - <Py_ssize_t> (<uintptr_t> p % LINE)) % LINE
    memset(p, 0, n_bytes)
    return p


cdef inline void to_work(const floating* flat, floating* work, const Net* net) noexcept nogil:
    """Copy a parameter-shaped buffer from the caller's layout into the working one."""
    cdef Py_ssize_t l, i, n_in, n_out
    for l in range(net.n_layers):
        n_in = net.sizes[l]
        n_out = net.sizes[l + 1]
        for i in range(n_in):
            memcpy(work + net.wk_off[l] + i * net.ldk[l], flat + net.kernel_off[l] + i * n_out,
                   n_out * sizeof(floating))
        memcpy(work + net.wb_off[l], flat + net.bias_off[l], n_out * sizeof(floating))


cdef inline void from_work(const floating* work, floating* flat, const Net* net) noexcept nogil:
    """Copy a parameter-shaped buffer from the working layout back into the caller's."""
    cdef Py_ssize_t l, i, n_in, n_out
    for l in range(net.n_layers):
        n_in = net.sizes[l]
        n_out = net.sizes[l + 1]
        for i in range(n_in):
            memcpy(flat + net.kernel_off[l] + i * n_out, work + net.wk_off[l] + i * net.ldk[l],
                   n_out * sizeof(floating))
        memcpy(flat + net.bias_off[l], work + net.wb_off[l], n_out * sizeof(floating))


cdef int bad_row(Py_ssize_t row, Py_ssize_t n_rows) except -1 nogil:
    """Debug builds only: raise IndexError for a row index outside ``[0, n_rows)``."""
    with gil:
        raise IndexError(f"order: row index {row} is outside [0, {n_rows}) (caught by the "
                         "debug build; the adapter must refuse such indices).")
