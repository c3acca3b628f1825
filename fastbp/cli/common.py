"""What the ``fastbp`` commands share: their errors, option types, option names and output."""

import argparse
import math
import os

from .._backends import backend_names
from .._backends._codes import ACTIVATIONS as _ACTIVATION_CODES
from .._backends._codes import CATEGORICAL_CROSSENTROPY as _CCE
from .._backends._codes import LOSS_NAMES as _LOSS_CODES
from .._backends._codes import SPARSE_LOSSES as _SPARSE

#: Activation names (``--activation``, ``--output-activation``), from the backends' code table.
ACTIVATIONS = tuple(_ACTIVATION_CODES)
#: Loss names (``--loss``), from the backends' code table.
LOSSES = tuple(_LOSS_CODES)
#: The classification losses (the report gives accuracy), and those that take class labels.
CATEGORICAL = tuple(name for name, code in _LOSS_CODES.items() if code == _CCE)
SPARSE_LOSSES = tuple(_SPARSE)
#: ``--backend`` choices: "auto" and every backend fastbp knows, installed or not.
BACKENDS = ("auto", *backend_names())
#: ``--dtype`` choices.
DTYPES = ("float64", "float32")


class CommandError(Exception):
    """A failure to report as one line on stderr, exit status 1."""


class UsageError(Exception):
    """Options that parse but do not make sense together: exit status 2 with the usage line."""


def check_distinct_files(inputs, outputs):
    """Refuse an output that is an input or another output (``{option: path or None}``).

    Paths are compared as the files they name: through symbolic links and
    relative spellings, and as the same inode where both exist (hard links).
    Two inputs may name one file.
    """
    seen = [(option, path, True) for option, path in inputs.items() if path is not None]
    for option, path in outputs.items():
        if path is None:
            continue
        for other, other_path, is_input in seen:
            if _same_file(path, other_path):
                what = (f"writing {option} would replace the data of {other}" if is_input
                        else f"{option} would replace what {other} writes")
                raise UsageError(f"{other} {other_path} and {option} {path} name the same "
                                 f"file: {what}. Pass another path for {option}.")
        seen.append((option, path, False))


def _same_file(a, b):
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


# ---------------------------------------------------------------------------- option types
def positive_int(text):
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1; found {text!r}")
    return value


def workers_count(text):
    """``--workers``: an integer >= 1, or -1 for every usable core."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1 and value != -1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, or -1 for every core; "
                                         f"found {text!r}")
    return value


def non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0; found {text!r}")
    return value


def non_negative_float(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a number >= 0; found {text!r}")
    return value


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number > 0; found {text!r}")
    return value


def fraction(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1); found {text!r}")
    return value


def int_list(text):
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers, e.g. 20,64,64,1; found {text!r}")
    return values


def layers(text):
    values = int_list(text)
    if len(values) < 2:
        raise argparse.ArgumentTypeError(
            f"expected at least two widths (inputs,...,outputs), e.g. 20,64,64,1; found {text!r}")
    return values


def activation_list(text):
    names = [part.strip().lower() for part in text.split(",")]
    bad = [n for n in names if n not in ACTIVATIONS]
    if bad:
        raise argparse.ArgumentTypeError(
            f"expected one of {', '.join(ACTIVATIONS)} (or a comma-separated list, one per "
            f"hidden layer); found {bad[0]!r}")
    return names



def one_line(exc):
    text = " ".join(str(exc).split())
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    if isinstance(exc, MemoryError):
        text = "out of memory" + (f" ({text})" if text else "") + \
            "; use fewer rows, dtype float32, or .npy files (streamed from disk)"
    return text or type(exc).__name__


def say(*parts):
    print(*parts, flush=True)

