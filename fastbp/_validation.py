"""Every user-facing input check, and its message.

Each error says what was expected, what was found, and how to fix it.  The
checks run before anything is modified, so bad input changes nothing.

Two helpers build the parts of such messages, here and in other modules
(``_io``'s file checks among them):

- :func:`show` -- a value as it is quoted after "found": its ``repr``, cut to
  80 characters, never failing (a broken or huge ``repr`` included);
- :func:`example` -- the "Pass e.g. ..." part: how to write an argument with
  a valid value, ``seed=0 (or None)`` or ``EarlyStopping(patience=3)``.
"""

import collections.abc
import math
import numbers
import sys
import warnings

import numpy as np

DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}


def _inside_library(frame):
    """Whether ``frame`` runs fastbp's library code (the command line counts as a caller)."""
    module = frame.f_globals.get("__name__") or ""
    return (module == "fastbp" or module.startswith("fastbp.")) \
        and not (module == "fastbp.cli" or module.startswith("fastbp.cli."))


def warn(message, category=RuntimeWarning):
    """Warn at the first line outside the library: the caller's own call.

    A counted ``stacklevel`` breaks whenever a public function reaches the
    warning through one more helper or decorator; walking out of the
    package's modules (by module name, which holds wherever the files lie)
    names the user's line from every entry point.  With no such frame (a
    library thread) the warning names the line that called this function.
    """
    frame, level = sys._getframe(1), 2
    while frame is not None and _inside_library(frame):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level if frame is not None else 2)


def _name_list(names):
    return ", ".join(repr(n) for n in names)


def check_choice(value, choices, what):
    """Return ``value`` lower-cased if it is one of ``choices``."""
    if isinstance(value, str) and value.lower() in choices:
        return value.lower()
    raise ValueError(f"unknown {what}: expected one of {_name_list(choices)}; "
                     f"found {show(value)}. Pass one of the listed names.")


def _sequence(value):
    """``list(value)`` for an ordered sequence of items, else None.

    Strings and bytes (sequences of characters or byte values), mappings
    (their keys) and sets (no order) are not taken apart.
    """
    if isinstance(value, (str, bytes, bytearray, memoryview, collections.abc.Mapping,
                          collections.abc.Set)):
        return None
    try:
        return list(value)
    except TypeError:
        return None


def check_layer_sizes(sizes):
    """Layer widths: a sequence of at least two positive integers."""
    widths = _sequence(sizes)
    if (not widths or len(widths) < 2
            or not all(isinstance(w, numbers.Integral) and not isinstance(w, bool) and w >= 1
                       for w in widths)):
        raise ValueError(
            "layer sizes: expected a list of at least two positive integers "
            f"(inputs, hidden..., outputs), e.g. [20, 64, 64, 1]; found {show(sizes)}.")
    return tuple(int(w) for w in widths)


def check_activations(activations, n_hidden, choices):
    """One activation name per hidden layer, from a name or a list of names."""
    if isinstance(activations, str):
        return [check_choice(activations, choices, "activation")] * n_hidden
    names = _sequence(activations)
    if names is None or len(names) != n_hidden:
        raise ValueError(
            f"activations: expected one name, or a list of {n_hidden} names (one per hidden "
            f"layer); found {show(activations)}. Pass e.g. activations='relu'.")
    return [check_choice(name, choices, "activation") for name in names]


def check_dtype(dtype):
    """``"float32"`` or ``"float64"``, the NumPy types or their ``np.dtype`` -> ``np.dtype``.

    Only these exact spellings: ``np.dtype`` itself accepts much more (``None``
    means float64, and unknown strings must not slip through as "no dtype").
    """
    resolved = None
    if isinstance(dtype, str):
        resolved = DTYPES.get(dtype)
    elif isinstance(dtype, np.dtype):
        resolved = dtype if any(dtype == d and dtype.isnative for d in DTYPES.values()) else None
    elif isinstance(dtype, type):
        resolved = np.dtype(dtype) if dtype in (np.float32, np.float64, float) else None
    else:
        raise TypeError(f"dtype: expected 'float32' or 'float64' (a string, np.float32/"
                        f"np.float64 or their np.dtype); found {type(dtype).__name__} "
                        f"{show(dtype)}. Pass dtype='float64' (default) or dtype='float32'.")
    if resolved is None:
        raise ValueError(f"dtype: expected 'float32' or 'float64'; found {show(dtype)}. "
                         "Pass dtype='float64' (default) or dtype='float32'.")
    return resolved


def _type_name(value):
    return "bool" if isinstance(value, (bool, np.bool_)) else type(value).__name__


def show(value, limit=80):
    """``repr(value)`` for an error message, at most ``limit`` (80) characters.

    The one helper that quotes found values in messages: a longer text keeps
    its first ``limit - 3`` characters and ends in ``...``; a ``repr`` that
    raises (a broken ``__repr__``, an int too long to print) gives
    ``<TYPE object>`` instead, so the real error is never hidden.
    """
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not hide the real error
        text = f"<{type(value).__name__} object>"
    if not isinstance(text, str):
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def example(name, value):
    """``name=value`` as a user writes it, for the "Pass e.g. ..." part of a message.

    ``name`` is what the message starts with: an argument (``"seed"``), one of
    a class (``"EarlyStopping patience"`` -> ``EarlyStopping(patience=3)``),
    either with a note in parentheses after it (``"seed (or None)"`` ->
    ``seed=0 (or None)``).
    """
    note = ""
    if name.endswith(")") and " (" in name:
        name, note = name.split(" (", 1)
        note = f" ({note}"
    owner, _, argument = name.rpartition(" ")
    text = f"{argument}={value!r}" if isinstance(value, str) else f"{argument}={value}"
    return (f"{owner}({text})" if owner else text) + note


def _found(value, number):
    """The 'found' part of a number check: the type too when it is not a number."""
    return f"{_type_name(value)} {show(value)}" if number is None else show(value)


def as_real(value):
    """``float(value)`` for a real number that is not a bool, else None.

    NumPy scalars, ints and fractions count; ints too large for a float
    become ``inf`` (and so fail the finiteness checks).
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf
    except (TypeError, ValueError):
        return None


def check_int(value, name, minimum=1, example=None):
    """An integer (Python or NumPy, not bool) >= ``minimum``, as a plain ``int``.

    ``example`` (default ``minimum``) is the valid value the message suggests.
    """
    example = minimum if example is None else example
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) \
            or value < minimum:
        kind = (f"{_type_name(value)} {show(value)}" if not isinstance(value, numbers.Integral)
                or isinstance(value, (bool, np.bool_)) else show(value))
        raise ValueError(f"{name}: expected an integer >= {minimum}; found {kind}. "
                         f"Pass e.g. {_example(name, example)}.")
    return int(value)


def check_bool(value, name):
    """``True``/``False`` (or a NumPy bool), as a plain ``bool``.

    Other values are refused rather than judged by truthiness: ``"False"``
    would otherwise mean True.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False; found {_type_name(value)} {show(value)}. "
                        f"Pass {example(name, True)} or {example(name, False)}.")
    return bool(value)


def check_initializer(value, what, names, dtype=None):
    """A known initializer name, or a real number finite in ``dtype``."""
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        number = as_real(value)
        if number is None or not math.isfinite(number):
            raise ValueError(f"{what}: expected a finite number or one of "
                             f"{_name_list(names)}; found {show(value)}. Pass e.g. "
                             f"{example(what, 0.0)} or {example(what, next(iter(names)))}.")
        with np.errstate(over="ignore"):
            overflows = dtype is not None and not np.isfinite(np.array(number).astype(dtype))
        if overflows:
            raise ValueError(f"{what}: expected a number that is finite in {np.dtype(dtype)}; "
                             f"found {show(value)}, which overflows it. Pass a smaller value.")
        return number
    return check_choice(value, names, what)


def check_positive_int(value, name):
    """An integer >= 1 (Python or NumPy, not bool), as a plain ``int``."""
    return check_int(value, name, 1)


def check_positive_float(value, name):
    """A finite real number > 0 (NumPy scalars too, not bool), as a plain ``float``."""
    number = as_real(value)
    if number is None or not math.isfinite(number) or number <= 0:
        raise ValueError(f"{name}: expected a finite number > 0; found "
                         f"{_found(value, number)}. "
                         f"Pass e.g. {example(name, 0.001)}.")
    return number


def check_fraction(value, name, low_open=False, high_open=True):
    """A real number in [0, 1) (or (0, 1) when ``low_open``), as a plain ``float``."""
    number = as_real(value)
    ok = (number is not None and math.isfinite(number)
          and (number > 0 if low_open else number >= 0)
          and (number < 1 if high_open else number <= 1))
    if not ok:
        interval = ("(" if low_open else "[") + "0, 1" + (")" if high_open else "]")
        value_example = 0.5 if low_open else 0.0
        raise ValueError(f"{name}: expected a number in {interval}; found "
                         f"{_found(value, number)}. "
                         f"Pass e.g. {_example(name, value_example)}.")
    return number


def _check_numeric(array, name):
    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"{name}: expected real numbers (float, int or bool); found dtype {array.dtype}. "
            f"Convert it first, e.g. {name}.astype('float64')"
            + (" (complex values have no ordering a loss can use)." if array.dtype.kind == "c"
               else "."))


def _as_array(data, name):
    array = data if isinstance(data, np.ndarray) else None
    if array is None:
        try:
            array = np.asarray(data)
        except (ValueError, TypeError) as exc:
            raise TypeError(f"{name}: expected a 2-D array of numbers; found an object NumPy "
                            f"cannot turn into one ({exc}). Pass a NumPy array.") from None
    _check_numeric(array, name)
    return array


#: Arrays with at least this many values are checked by their sum first (check_finite).
_SUM_CHECK_MIN = 1 << 18


def check_finite(array, name, dtype=None, first_row=0):
    """Raise if ``array`` holds NaN or inf; point at the first bad row.

    ``first_row``: the row of the caller's array that ``array``'s first row
    is (a block of it), so the message names the caller's index.
    """
    if array.dtype.kind != "f":
        return
    # The fast path for large arrays: one sum reads the data once and allocates
    # nothing.  A NaN or an inf makes the sum NaN or inf, so a finite sum proves
    # every element finite; a non-finite sum (a bad value, or finite values that
    # overflow together) falls through to the element-wise check, which decides.
    # Smaller arrays skip it: there the element-wise check's boolean temporary
    # stays in cache and it is the faster one.  Float64, element-wise against
    # sum: 3.8 against 5.7 us at 20,000 values, 16 against 19 us at 100,000;
    # 690 against 600 us at 2 M, 6.0 against 3.7 ms at 8 M (they cross between
    # 100,000 and 400,000 values).
    if array.size >= _SUM_CHECK_MIN:
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(np.add.reduce(np.asarray(array), axis=None)):
                return
    finite = np.isfinite(array)
    if not finite.all():
        bad = [int(i) for i in np.argwhere(~finite)[0]]
        value = array[tuple(bad)]
        bad[0] += first_row
        cast = f" after conversion to {dtype}" if dtype is not None else ""
        raise ValueError(
            f"{name}: expected finite numbers; found {value!r}{cast} at index "
            f"{tuple(bad)}. Remove or impute NaN/inf rows first "
            f"(e.g. mask = np.isfinite({name}).all(axis=1)).")


def check_features(X, n_features, name="X"):
    """Shape and dtype checks of an input matrix, without copying it."""
    X = _as_array(X, name)
    if X.ndim != 2:
        hint = f" Use {name}.reshape(-1, 1) for a single feature." if X.ndim == 1 else ""
        raise ValueError(f"{name}: expected a 2-D array of shape (n_samples, {n_features}); "
                         f"found {X.ndim}-D shape {X.shape}.{hint}")
    if X.shape[1] != n_features:
        raise ValueError(f"{name}: expected {n_features} features (columns), as the network's "
                         f"input layer has; found {X.shape[1]} (shape {X.shape}). Pass data "
                         f"with {n_features} columns or build the network for {X.shape[1]} "
                         "inputs.")
    if X.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one row; found 0 rows. Pass some data.")
    return X


def check_targets(y, n_outputs, name="y"):
    """Shape and dtype checks of targets; ``(n,)`` becomes ``(n, 1)`` (a view)."""
    y = _as_array(y, name)
    if y.ndim == 1 and n_outputs == 1:
        y = y.reshape(-1, 1)
    if y.ndim != 2 or y.shape[1] != n_outputs:
        expected = "(n_samples,) or (n_samples, 1)" if n_outputs == 1 else \
            f"(n_samples, {n_outputs})"
        raise ValueError(f"{name}: expected shape {expected} to match the network's "
                         f"{n_outputs} output(s); found shape {y.shape}. Reshape the targets "
                         "or change the last layer width.")
    if y.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one row; found 0 rows. Pass some data.")
    return y


def check_same_length(X, y, names=("X", "y")):
    """X and y must have the same number of rows."""
    if X.shape[0] != y.shape[0]:
        a, b = names
        raise ValueError(f"{a} and {b}: expected the same number of rows; found {X.shape[0]} "
                         f"rows in {a} and {y.shape[0]} in {b}. Pass matching arrays.")


def to_dtype(array, dtype, name, first_row=0):
    """A C-contiguous copy in ``dtype`` (no copy when it already is), checked finite.

    Never writes to the caller's array.  ``first_row``: as in
    :func:`check_finite`, when ``array`` is a block of the caller's rows.
    """
    out = np.ascontiguousarray(array, dtype=dtype)
    check_finite(out, name, dtype, first_row)
    return out


def check_weights(weights, shapes, dtype):
    """A list of arrays with exactly the given Keras-layout shapes, finite."""
    arrays = _sequence(weights)
    expected = ", ".join(str(s) for s in shapes)
    if arrays is None or len(arrays) != len(shapes):
        found = "not a list" if arrays is None else f"{len(arrays)} arrays"
        raise ValueError(f"set_weights: expected {len(shapes)} arrays with shapes [{expected}] "
                         f"(kernel (inputs, units), bias (units,) per layer, as "
                         f"get_weights() returns); found {found}.")
    out = []
    for i, (array, shape) in enumerate(zip(arrays, shapes)):
        array = _as_array(array, f"weights[{i}]")
        if array.shape != shape:
            raise ValueError(f"set_weights: weights[{i}] expected shape {shape}; found "
                             f"{array.shape}. All expected shapes: [{expected}].")
        out.append(to_dtype(array, dtype, f"weights[{i}]"))
    return out


_example = example  # for the checks whose ``example`` argument shadows it


# ---------------------------------------------------------------- softmax and class labels
def check_output_pairing(hidden, output, loss, categorical):
    """Softmax only as the output activation, and there exactly with a categorical loss.

    ``hidden``/``output`` are activation names, ``loss`` a loss name and
    ``categorical`` the names of the categorical cross-entropy losses.  The
    kernels take the cross-entropy's gradient from the logits (``p - y``)
    and have no softmax Jacobian, so softmax meets no other loss, and a
    categorical loss has no meaning fastbp computes on an output that is
    not a distribution (Keras would renormalise it; fastbp does not).
    """
    for i, name in enumerate(hidden):
        if name == "softmax":
            raise ValueError(
                f"activations: expected 'linear', 'relu', 'sigmoid' or 'tanh' for hidden "
                f"layers; found 'softmax' on hidden layer {i + 1}. Softmax is an output "
                "activation only: pass it as output_activation='softmax'.")
    if output == "softmax" and loss not in categorical:
        raise ValueError(
            f"output_activation='softmax': expected loss "
            f"{' or '.join(repr(n) for n in categorical)}; found loss={loss!r}. fastbp trains a "
            "softmax output only through categorical cross-entropy, whose gradient it takes "
            "from the logits (softmax - y); other losses would need the softmax Jacobian, "
            "which it does not implement. Use a categorical loss, or a 'sigmoid'/'linear' "
            "output for this loss.")
    if loss in categorical and output != "softmax":
        raise ValueError(
            f"loss={loss!r}: expected output_activation='softmax'; found {output!r}. fastbp "
            "computes categorical cross-entropy from the logits of a softmax output only. "
            "Pass output_activation='softmax' (for independent 0/1 outputs use 'sigmoid' "
            "with loss='binary_crossentropy').")


def check_label_shape(y, name="y"):
    """Class labels' shape: ``(n,)`` or ``(n, 1)``, returned as ``(n, 1)`` (a view)."""
    y = _as_array(y, name)
    if y.ndim == 1:
        y = y.reshape(-1, 1)
    if y.ndim != 2 or y.shape[1] != 1:
        raise ValueError(f"{name}: expected integer class labels of shape (n_samples,) or "
                         f"(n_samples, 1) for loss 'sparse_categorical_crossentropy'; found "
                         f"shape {y.shape}. Pass one label per row, or one-hot rows with "
                         "loss='categorical_crossentropy'.")
    if y.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one row; found 0 rows. Pass some data.")
    return y


def one_hot(labels, n_classes, dtype, name="y", offset=0):
    """Labels ``(n, 1)`` (integers in ``[0, n_classes)``) as one-hot rows ``(n, n_classes)``.

    ``offset`` is the row of the caller's array where ``labels`` starts (a
    streamed block), so that an error names the row the caller sees.
    Never writes to ``labels``.
    """
    values = np.asarray(labels).reshape(-1)
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values) | (values != np.floor(values))
    else:
        bad = np.zeros(values.shape, dtype=bool)
    with np.errstate(invalid="ignore"):
        bad |= (values < 0) | (values >= n_classes)
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(
            f"{name}: expected integer class labels in [0, {n_classes}) (the network has "
            f"{n_classes} softmax outputs); found {show(values[row].item())} at row "
            f"{offset + row}. Encode the classes as 0..{n_classes - 1} (e.g. with "
            "np.unique(y, return_inverse=True)) or change the last layer width.")
    out = np.zeros((values.shape[0], n_classes), dtype=dtype)
    out[np.arange(values.shape[0]), values.astype(np.int64)] = 1
    return out
