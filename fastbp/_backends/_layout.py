"""Parameter layout shared by the API and the backends.

All parameters live in one flat C-contiguous buffer: for each layer its kernel
``(n_in, n_out)`` in row-major order, then its bias ``(n_out,)``.  Per-layer
views of that buffer are exactly Keras's ``get_weights()`` layout, and the
optimizer can update every parameter in one vectorised sweep.
"""


def n_params(sizes):
    """Number of parameters of a dense network with layer widths ``sizes``."""
    return sum(int(a) * int(b) + int(b) for a, b in zip(sizes[:-1], sizes[1:]))


def layer_views(buffer, sizes):
    """Return ``[(kernel, bias), ...]`` views into a flat parameter-shaped buffer."""
    views = []
    offset = 0
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        n_in, n_out = int(n_in), int(n_out)
        kernel = buffer[offset:offset + n_in * n_out].reshape(n_in, n_out)
        offset += n_in * n_out
        bias = buffer[offset:offset + n_out]
        offset += n_out
        views.append((kernel, bias))
    return views
