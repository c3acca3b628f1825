"""The ``fastbp`` command line: ``train``, ``make-data``, ``demo``, ``info``, ``bench``.

Exit codes follow the usual conventions: 0 success, 2 a usage error (bad or
inconsistent options, reported by argparse with the usage line), 1 a failure
while running (missing file, bad data, diverged training: one line on stderr
saying what was expected, what was found and how to fix it), 130 interrupted
by Ctrl-C.

``train`` options are stored with the checkpoint it writes, so
``fastbp train --resume CKPT`` continues an interrupted run without repeating
them.  What is read back from the file is checked like typed options; output
paths are never read back (see ``fastbp train --help``, option --resume).
"""

import argparse
import math
import os
import sys
import time
import warnings
from pathlib import Path

# Defaults of `fastbp train`.  The parser's own defaults are SUPPRESS so that the
# options a user actually typed can be told apart from stored ones on --resume.
TRAIN_DEFAULTS = {
    "x": None, "y": None, "csv": None, "targets": 1, "synthetic": None, "features": 20,
    "outputs": 1, "noise": 0.1,
    "layers": None, "hidden": [64, 64], "activation": ["relu"], "output_activation": "linear",
    "loss": "mse", "dtype": "float64", "backend": "auto", "seed": 0,
    "optimizer": "sgd", "learning_rate": None, "momentum": None, "nesterov": None,
    "beta1": None, "beta2": None, "rho": None, "epsilon": None,
    "batch_size": 1, "epochs": 5, "shuffle": True, "validation_split": 0.1,
    "patience": None, "min_delta": 0.0,
    "save": None, "plot": None, "checkpoint": None, "quiet": False, "chunk_rows": None,
}
# Options that define the network; on --resume it comes from the checkpoint.
ARCHITECTURE = ("layers", "hidden", "activation", "output_activation", "loss", "dtype")
# Optimizer option -> the optimizers it applies to, and the keyword it sets.
OPTIMIZER_OPTIONS = {
    "momentum": (("sgd", "rmsprop"), "momentum"), "nesterov": (("sgd",), "nesterov"),
    "beta1": (("adam",), "beta_1"), "beta2": (("adam",), "beta_2"),
    "rho": (("rmsprop",), "rho"), "epsilon": (("adam", "rmsprop"), "epsilon"),
}
ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh")
LOSSES = ("mse", "mae", "huber", "binary_crossentropy")
BACKENDS = ("auto", "numpy", "numba", "cython", "cuda")
DEMO_SAMPLES = 2_000_000
DEMO_NUMPY_SAMPLES = 100_000  # what the demo shrinks to when only the NumPy loop is there
# Linear-baseline fit: at most this many training rows, in evenly spread blocks.
BASELINE_ROWS = 2_000_000
EVAL_BLOCK_ROWS = 1 << 16


class CommandError(Exception):
    """A failure to report as one line on stderr, exit status 1."""


class UsageError(Exception):
    """Options that parse but do not make sense together: exit status 2 with the usage line."""


# ---------------------------------------------------------------------------- option types
def _positive_int(text):
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1; found {text!r}")
    return value


def _non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0; found {text!r}")
    return value


def _non_negative_float(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a number >= 0; found {text!r}")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number > 0; found {text!r}")
    return value


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1); found {text!r}")
    return value


def _int_list(text):
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers, e.g. 20,64,64,1; found {text!r}")
    return values


def _layers(text):
    values = _int_list(text)
    if len(values) < 2:
        raise argparse.ArgumentTypeError(
            f"expected at least two widths (inputs,...,outputs), e.g. 20,64,64,1; found {text!r}")
    return values


def _activation_list(text):
    names = [part.strip().lower() for part in text.split(",")]
    bad = [n for n in names if n not in ACTIVATIONS]
    if bad:
        raise argparse.ArgumentTypeError(
            f"expected one of {', '.join(ACTIVATIONS)} (or a comma-separated list, one per "
            f"hidden layer); found {bad[0]!r}")
    return names


# ---------------------------------------------------------------------------- parser
def build_parser():
    """The ``fastbp`` argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="fastbp", description="Train dense feed-forward networks by backpropagation, fast.",
        epilog="Run `fastbp COMMAND --help` for a command's options.")
    from ._version import __version__

    parser.add_argument("--version", action="version", version=f"fastbp {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # each command's own parser, to report its usage errors with its usage line
    parser.command_parsers = {"train": _add_train(commands), "make-data": _add_make_data(commands),
                              "demo": _add_demo(commands)}
    info = commands.add_parser("info", help="show the installed backends and settings",
                               description="Show fastbp's version, its backends (installed or "
                               "why not) and which one 'auto' picks.")
    info.set_defaults(run=_info)
    bench = commands.add_parser("bench", help="benchmark the backends on workloads W1-W6",
                                add_help=False,
                                description="Run the benchmark workloads on every installed "
                                "backend and print a table (fastbp bench --help for options).")
    parser.command_parsers.update(info=info, bench=bench)
    return parser


def _add_train(commands):
    d = TRAIN_DEFAULTS
    train = commands.add_parser(
        "train", help="train a network on .npy, CSV or synthetic data",
        description="Train a network and report held-out R² and RMSE next to a linear\n"
        "least-squares baseline. .npy files are memory-mapped and streamed, so they may be\n"
        "larger than memory. Ctrl-C stops after the current chunk of rows; with --checkpoint\n"
        "the run can be continued with --resume.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  fastbp make-data --samples 10_000_000 --out data\n"
        "  fastbp train --x data/X.npy --y data/y.npy --epochs 3 --checkpoint run.ckpt "
        "--save model.fbp\n"
        "  fastbp train --resume run.ckpt --save model.fbp   # after Ctrl-C\n"
        "  fastbp train --csv houses.csv --targets 1 --optimizer adam --patience 3 "
        "--plot loss.png\n"
        "  fastbp train --synthetic 200000 --layers 20,32,1 --backend numpy")
    S = argparse.SUPPRESS

    data = train.add_argument_group("data (one of --x/--y, --csv, --synthetic)")
    data.add_argument("--x", metavar="X.npy", default=S,
                      help="inputs, a 2-D .npy file (memory-mapped, never written)")
    data.add_argument("--y", metavar="Y.npy", default=S, help="targets, a 1-D or 2-D .npy file")
    data.add_argument("--csv", metavar="FILE", default=S,
                      help="a CSV file of numbers (read into memory; a header line is skipped); "
                      "the last --targets columns are the targets")
    data.add_argument("--targets", type=_positive_int, metavar="N", default=S,
                      help=f"target columns at the end of each CSV row (default {d['targets']})")
    data.add_argument("--synthetic", type=_positive_int, metavar="N", default=S,
                      help="generate N rows with fastbp.datasets.make_regression")
    data.add_argument("--features", type=_positive_int, metavar="N", default=S,
                      help=f"features of --synthetic data (default: the first --layers width "
                      f"or {d['features']})")
    data.add_argument("--outputs", type=_positive_int, metavar="K", default=S,
                      help="outputs of --synthetic data (default: the last --layers width or 1)")
    data.add_argument("--noise", type=_non_negative_float, metavar="SD", default=S,
                      help=f"noise standard deviation of --synthetic data (default {d['noise']})")

    model = train.add_argument_group("network")
    model.add_argument("--layers", type=_layers, metavar="W,W,...", default=S,
                       help="all layer widths, inputs first, e.g. 20,64,64,1 (default: the "
                       "data's inputs, --hidden, the data's outputs)")
    model.add_argument("--hidden", type=_int_list, metavar="W,...", default=S,
                       help="hidden widths when --layers is not given (default 64,64)")
    model.add_argument("--activation", type=_activation_list, metavar="NAME[,NAME...]",
                       default=S, help="hidden activation(s): linear, relu, sigmoid, tanh "
                       "(default relu)")
    model.add_argument("--output-activation", choices=ACTIVATIONS, default=S,
                       help="(default linear)")
    model.add_argument("--loss", choices=LOSSES, default=S, help="(default mse)")
    model.add_argument("--dtype", choices=("float64", "float32"), default=S,
                       help="(default float64)")
    model.add_argument("--backend", choices=BACKENDS, default=S,
                       help="(default auto: the fastest installed)")
    model.add_argument("--seed", type=_non_negative_int, metavar="N", default=S,
                       help="seeds the weights, the shuffles and --synthetic data (default 0)")

    opt = train.add_argument_group(
        "optimizer (Keras's names and defaults; with --resume they must equal the "
        "checkpoint's, whose optimizer state a different optimizer would discard)")
    opt.add_argument("--optimizer", choices=("sgd", "adam", "rmsprop"), default=S,
                     help="(default sgd)")
    opt.add_argument("--learning-rate", "--lr", type=_positive_float, metavar="LR", default=S,
                     help="(default 0.01 for sgd, 0.001 for adam and rmsprop)")
    opt.add_argument("--momentum", type=_fraction, metavar="M", default=S,
                     help="sgd, rmsprop (default 0)")
    opt.add_argument("--nesterov", action="store_true", default=S, help="sgd")
    opt.add_argument("--beta1", type=_fraction, metavar="B1", default=S,
                     help="adam (default 0.9)")
    opt.add_argument("--beta2", type=_fraction, metavar="B2", default=S,
                     help="adam (default 0.999)")
    opt.add_argument("--rho", type=_fraction, metavar="RHO", default=S,
                     help="rmsprop (default 0.9)")
    opt.add_argument("--epsilon", type=_positive_float, metavar="EPS", default=S,
                     help="adam, rmsprop (default 1e-7)")

    fit = train.add_argument_group("training")
    fit.add_argument("--batch-size", type=_positive_int, metavar="N", default=S,
                     help=f"1 is per-sample SGD, what the kernels are built for "
                     f"(default {d['batch_size']})")
    fit.add_argument("--epochs", type=_positive_int, metavar="N", default=S,
                     help=f"(default {d['epochs']})")
    fit.add_argument("--no-shuffle", dest="shuffle", action="store_false", default=S,
                     help="train on the rows in file order")
    fit.add_argument("--validation-split", type=_fraction, metavar="F", default=S,
                     help="hold out the last fraction F of the rows for val_loss, early "
                     f"stopping and the final R² (default {d['validation_split']})")
    fit.add_argument("--patience", type=_non_negative_int, metavar="N", default=S,
                     help="early stopping: stop after N epochs without improvement of val_loss "
                     "(loss without a validation split) and restore the best weights")
    fit.add_argument("--min-delta", type=_non_negative_float, metavar="D", default=S,
                     help="early stopping: the smallest improvement that counts (default 0)")
    fit.add_argument("--chunk-rows", type=_positive_int, metavar="N", default=S,
                     help="rows per compiled call (FASTBP_CHUNK_ROWS; default 32768): smaller "
                     "makes Ctrl-C and the progress bar react sooner")
    fit.add_argument("--quiet", "-q", action="store_true", default=S, help="no progress bar")

    out = train.add_argument_group("output")
    out.add_argument("--save", metavar="MODEL", default=S,
                     help="write the trained model (load it with fastbp.load)")
    out.add_argument("--plot", metavar="PNG", default=S,
                     help="plot loss and val_loss per epoch (needs matplotlib)")
    out.add_argument("--checkpoint", metavar="PATH", default=S,
                     help="write model and training position here after each epoch and on "
                     "Ctrl-C (atomically); with --resume the default is the resumed file")
    out.add_argument("--resume", metavar="PATH", default=S,
                     help="continue the run that wrote checkpoint PATH; the result equals an "
                     "uninterrupted run. The network, optimizer, batch size, shuffle, "
                     "validation split and data options come from PATH, each checked as if "
                     "typed; typed again they must match (else exit 2), except --x/--y/--csv, "
                     "which may point at the same data moved (relative paths stored in PATH "
                     "are taken relative to PATH's directory). --epochs counts from the start "
                     "of the original run. Output paths are never read from PATH: later "
                     "checkpoints go to PATH itself (or --checkpoint), --save and --plot only "
                     "when typed again. The data must match the interrupted run's "
                     "fingerprint: its shape and the values of the first and last 64 rows "
                     "and of 1,025 evenly spaced rows (all rows of small data); a change in "
                     "any other row is not detected")
    train.set_defaults(run=_train_command)
    return train


def _add_make_data(commands):
    make = commands.add_parser(
        "make-data", help="write a synthetic regression set as X.npy and y.npy",
        description="Write fastbp.datasets.make_regression's rows to DIR/X.npy and DIR/y.npy "
        "block by block: any size, in little memory. The same seed gives the same rows as "
        "make_regression and as `fastbp train --synthetic`.")
    make.add_argument("--samples", type=_positive_int, required=True, metavar="N",
                      help="rows to write (e.g. 100_000_000: an 8 GB X.npy in float32)")
    make.add_argument("--features", type=_positive_int, default=20, help="(default 20)")
    make.add_argument("--outputs", type=_positive_int, default=1, help="(default 1)")
    make.add_argument("--noise", type=_non_negative_float, default=0.1, help="(default 0.1)")
    make.add_argument("--seed", type=_non_negative_int, default=0, help="(default 0)")
    make.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                      help="(default float32)")
    make.add_argument("--out", required=True, metavar="DIR", help="directory to write into")
    make.add_argument("--force", action="store_true", help="overwrite existing X.npy/y.npy")
    make.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    make.set_defaults(run=_make_data)
    return make


def _add_demo(commands):
    demo = commands.add_parser(
        "demo", help="train 20-64-64-1 per-sample on ~2M synthetic rows and report the speedup",
        description="Generate a synthetic regression set, train a 20-64-64-1 ReLU network with "
        "per-sample SGD on the fastest backend, and print held-out R² against a linear "
        "baseline, samples/s, and the speedup over the NumPy backend measured on a slice.")
    demo.add_argument("--samples", type=_positive_int, default=None, metavar="N",
                      help=f"rows to generate (default {DEMO_SAMPLES:,}; "
                      f"{DEMO_NUMPY_SAMPLES:,} when only the NumPy backend is installed)")
    demo.add_argument("--epochs", type=_positive_int, default=2, help="(default 2)")
    demo.add_argument("--backend", choices=BACKENDS, default="auto", help="(default auto)")
    demo.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                      help="(default float64)")
    demo.add_argument("--seed", type=_non_negative_int, default=0, help="(default 0)")
    demo.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    demo.set_defaults(run=_demo)
    return demo


# ---------------------------------------------------------------------------- main
def main(argv=None):
    """Run the ``fastbp`` command line; returns the exit status.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after the program name; ``sys.argv[1:]`` by default.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # the benchmark runner parses its own options
        from . import _bench

        return _bench.main(argv[1:], prog="fastbp bench")
    parser = build_parser()
    args = parser.parse_args(argv)  # exits with status 2 on a usage error
    command = args.command
    try:
        return args.run(args) or 0
    except UsageError as exc:
        parser.command_parsers[command].error(str(exc))  # exits with status 2
    except KeyboardInterrupt:
        print(f"fastbp {command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `fastbp info | head -1`
        return 0
    except (CommandError, OSError, ValueError, TypeError, ImportError, MemoryError,
            FloatingPointError) as exc:
        print(f"fastbp {command}: error: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc):
    text = " ".join(str(exc).split())
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    if isinstance(exc, MemoryError):
        text = "out of memory" + (f" ({text})" if text else "") + \
            "; use fewer rows, dtype float32, or .npy files (streamed from disk)"
    return text or type(exc).__name__


def _say(*parts):
    print(*parts, flush=True)


# ---------------------------------------------------------------------------- info
def _info(args):
    from ._info import show_config

    show_config()
    return 0


# ---------------------------------------------------------------------------- make-data
def _make_data(args):
    from .datasets import _human, write_regression

    start = time.perf_counter()
    x_path, y_path = write_regression(
        args.out, args.samples, args.features, args.outputs, noise=args.noise, seed=args.seed,
        dtype=args.dtype, overwrite=args.force, progress=not args.quiet)
    seconds = time.perf_counter() - start
    size = x_path.stat().st_size + y_path.stat().st_size
    _say(f"wrote {args.samples:,} rows x {args.features} features, {args.outputs} output(s), "
         f"{args.dtype}: {x_path} and {y_path} ({_human(size)}) in {seconds:.1f} s")
    _say(f"train on it out of core: fastbp train --x {x_path} --y {y_path}")
    return 0


# ---------------------------------------------------------------------------- train
def _train_command(args):
    given = {key: value for key, value in vars(args).items() if key not in ("run", "command")}
    opts, network, resume_from = _resolve_options(given)
    return _run_training(opts, network=network, resume_from=resume_from)


def _resolve_options(given):
    """Merge defaults, the options stored in a --resume checkpoint, and the typed ones.

    On --resume nothing read from the file is trusted more than the command
    line: each stored option is checked again as if it had been typed; output
    paths are never read back (--save and --plot only when typed again, the
    checkpoint written to --checkpoint or else to the resumed file itself); the
    network, optimizer, batch size, shuffle and chunk size are those the
    interrupted fit recorded, and typed options that would change them are
    refused, as ``Network.fit(resume=True)`` refuses them.
    """
    resume = given.pop("resume", None)
    network = None
    stored = {}
    if resume is not None:
        clashes = [k for k in ARCHITECTURE if k in given]
        if clashes:
            raise UsageError(f"--resume takes the network from the checkpoint; drop "
                             f"{', '.join('--' + k.replace('_', '-') for k in clashes)}.")
        # the file is read and checked once: options and network come from the same bytes
        read = _read_checkpoint(resume)
        stored, ignored = _stored_in(resume, read[0])
        # the backend of the interrupted run (bitwise equality needs the same kernels)
        network = _load_checkpoint(resume, read,
                                   given.get("backend", stored.get("backend", "auto")))
        if network.training_position is None:
            raise CommandError(f"{resume}: expected a checkpoint written by `fastbp train "
                               "--checkpoint`; found a model file without a training position "
                               "(a --save file, or one saved after training ended). Pass the "
                               "--checkpoint file, or train anew.")
        stored.update(_recorded_by_fit(network, resume, stored))
        _check_resume_options(stored, given, network.training_position)
    opts = {**TRAIN_DEFAULTS, **stored, **given}
    for name in ("features", "outputs"):  # typed ones win over the --layers widths
        opts[f"_{name}_typed"] = name in given or bool(stored.get(f"_{name}_typed"))
    if resume is not None:
        # where later checkpoints go: the command line says, else the file resumed
        opts["checkpoint"] = given.get("checkpoint", str(resume))
        opts["_ignored_outputs"] = {k: v for k, v in ignored.items() if k not in given}
    _check_options(opts, given)
    return opts, network, resume


# Options never read back from a checkpoint: the command line alone says where output goes.
OUTPUT_OPTIONS = ("save", "plot", "checkpoint")
# Options that change the training data; typed again on --resume they must equal the stored ones.
DATA_OPTIONS = ("synthetic", "features", "outputs", "noise", "seed", "targets")
# Option -> the JSON type a checkpoint stores it as, by the parser's type function.
_STORED_TYPES = {_positive_int: int, _non_negative_int: int, _positive_float: (int, float),
                 _non_negative_float: (int, float), _fraction: (int, float), _int_list: list,
                 _layers: list, _activation_list: list}


def _read_checkpoint(path):
    """``_io.read_model_file`` of checkpoint ``path``: its checked header and arrays."""
    from . import _io

    if not Path(path).is_file():
        raise CommandError(f"--resume {path}: no such file. Pass the path given to "
                           "--checkpoint when the run was started.")
    return _io.read_model_file(path)


def _stored_in(path, header):
    """The train options stored in checkpoint ``path`` (its checked ``header``), each checked
    as if typed.

    Unknown keys are ignored, and so are the output paths (OUTPUT_OPTIONS):
    they are never taken from a file.  Relative data paths are resolved
    against the checkpoint's directory.
    """
    extra = header.get("extra") or {}
    options = extra.get("train_options") if isinstance(extra, dict) else None
    if options is None:
        return {}, {}
    if not isinstance(options, dict):
        raise CommandError(f"--resume {path}: expected the stored train options as a JSON "
                           f"object; found {type(options).__name__}. The file was not written "
                           "by `fastbp train --checkpoint`; train anew.")
    actions = {action.dest: action for action in build_parser().command_parsers["train"]._actions}
    stored, ignored = {}, {}
    for key, value in options.items():
        if key in ("_features_typed", "_outputs_typed"):
            if not isinstance(value, bool):
                raise _bad_stored(path, key, value, "expected true or false")
            stored[key] = value
        elif key in TRAIN_DEFAULTS and key not in OUTPUT_OPTIONS:
            stored[key] = _check_stored(path, key, value, actions[key])
        elif key in ("save", "plot") and isinstance(value, str):
            ignored[key] = value  # only to say that it is not written
    for key in ("x", "y", "csv"):  # absolute when written; older or edited files: see --help
        if stored.get(key) is not None:
            stored[key] = str(Path(path).resolve().parent / stored[key])
    return stored, ignored


def _check_stored(path, key, value, action):
    """``value`` of option ``key`` read from checkpoint ``path``, through the parser's checks."""
    if value is None:
        if TRAIN_DEFAULTS[key] is None:  # optional: not given in the stored run
            return None
        raise _bad_stored(path, key, value, "expected a value")
    if action.nargs == 0:  # --nesterov, --no-shuffle, --quiet
        if not isinstance(value, bool):
            raise _bad_stored(path, key, value, "expected true or false")
        return value
    kind = _STORED_TYPES.get(action.type, str)
    items = value if kind is list and isinstance(value, list) else [value]
    item_kind = (int if action.type in (_int_list, _layers) else str) if kind is list else kind
    if not isinstance(value, kind) or isinstance(value, bool) or not items or any(
            not isinstance(item, item_kind) or isinstance(item, bool) for item in items):
        raise _bad_stored(path, key, value, f"expected {'a list' if kind is list else 'a'} "
                          f"{getattr(item_kind, '__name__', 'number')}")
    if action.type is not None:
        try:
            value = action.type(",".join(map(str, items)))
        except argparse.ArgumentTypeError as exc:
            raise _bad_stored(path, key, value, str(exc)) from None
    if action.choices is not None and value not in action.choices:
        raise _bad_stored(path, key, value, f"expected one of {', '.join(action.choices)}")
    return value


def _bad_stored(path, key, value, reason):
    option = key if key.startswith("_") else "--" + key.replace("_", "-")
    return CommandError(f"--resume {path}: the checkpoint stores an invalid "
                        f"{option} {value!r} ({reason}). It was not written by "
                        "`fastbp train` or has been edited; train anew.")


def _recorded_by_fit(network, path, stored):
    """The options the interrupted fit itself recorded: optimizer, batch size, shuffle.

    They are the truth on --resume (the stored train options could disagree
    with them only in an edited file).  ``fit`` records a batch size larger
    than the training rows as the rows (one batch per epoch), so a stored
    --batch-size at least that large is the one the user typed, and kept.
    """
    position = network.training_position
    settings = position.get("settings") or {}
    recorded = {}
    for key in ("batch_size", "shuffle"):
        if key not in settings:
            raise CommandError(f"--resume {path}: the training position lacks {key!r}; the "
                               "file was not written by `fastbp train --checkpoint`.")
        recorded[key] = settings[key]
    typed = stored.get("batch_size")
    if isinstance(typed, int) and typed >= recorded["batch_size"] == settings.get("n_rows"):
        recorded["batch_size"] = typed
    optimizer = network.optimizer
    if optimizer is not None:
        config = optimizer.get_config()
        name = config.pop("name").lower()
        recorded["optimizer"] = name
        recorded["learning_rate"] = config["learning_rate"]
        for option, (names, keyword) in OPTIMIZER_OPTIONS.items():
            recorded[option] = config[keyword] if name in names else None
        if not recorded["nesterov"]:
            recorded["nesterov"] = None
    return recorded


def _check_resume_options(stored, given, position):
    """Refuse typed options that a resumed fit would not apply (usage errors, exit 2)."""
    def as_typed(key, value):
        """How ``value`` of option ``key`` is written on the command line."""
        if key == "shuffle":
            return "shuffled rows" if value else "--no-shuffle"
        option = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            return option if value else f"no {option}"
        if value is None:
            return f"no {option}"
        return f"{option} {','.join(map(str, value)) if isinstance(value, list) else value}"

    def typed(keys):
        return ", ".join(as_typed(k, given[k]) for k in keys)

    optimizer_keys = ("optimizer", "learning_rate", *OPTIMIZER_OPTIONS)
    changed = [k for k in optimizer_keys if k in given and given[k] != stored.get(k)]
    if changed:
        current = " ".join(as_typed(k, stored[k]) for k in optimizer_keys
                           if stored.get(k) is not None)
        raise UsageError(
            f"{typed(changed)}: the checkpoint's optimizer is {current}. "
            "--resume continues its optimizer state; another optimizer would start a fresh "
            "optimizer state, which fit(resume=True) refuses too. Drop the optimizer options, "
            "or train anew without --resume.")
    must_match = ("batch_size", "shuffle", "validation_split", *DATA_OPTIONS)
    changed = [k for k in must_match if k in given and given[k] != stored.get(k, TRAIN_DEFAULTS[k])]
    if changed:
        was = ", ".join(as_typed(k, stored.get(k, TRAIN_DEFAULTS[k])) for k in changed)
        raise UsageError(
            f"{typed(changed)}: the interrupted run had {was}. A resumed "
            "fit must see the same data, batch size, shuffle and validation split (as "
            "fit(resume=True) requires); drop these options.")
    chunk_rows = position.get("chunk_rows")
    if "chunk_rows" in given:
        batch_size = stored["batch_size"]
        if max(1, given["chunk_rows"] // batch_size) * batch_size != chunk_rows:
            raise UsageError(f"--chunk-rows {given['chunk_rows']}: the interrupted run trained "
                             f"in chunks of {chunk_rows} rows, which fix the order of the "
                             "streamed blocks; a resumed fit keeps them. Drop --chunk-rows.")
    epochs = given.get("epochs", stored.get("epochs", TRAIN_DEFAULTS["epochs"]))
    if epochs < position["epoch"] + 1:
        raise UsageError(
            f"--epochs {epochs}: the checkpoint is in epoch {position['epoch'] + 1} "
            f"({position['epoch']} completed); --epochs must be >= {position['epoch'] + 1} "
            "(it counts from the start of the original run).")


def _load_checkpoint(path, read, backend):
    """The network of checkpoint ``path`` from ``read`` (``_read_checkpoint``), not reread."""
    from .network import load_contents

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return load_contents(path, read, backend)


def _check_options(opts, given):
    sources = [name for name in ("x", "csv", "synthetic") if opts.get(name) is not None]
    if len(sources) != 1:
        found = ", ".join("--" + s for s in sources) if sources else "none"
        raise UsageError(f"expected exactly one data source (--x X.npy --y Y.npy, --csv FILE, "
                         f"or --synthetic N); found {found}.")
    if (opts["x"] is None) != (opts["y"] is None):
        raise UsageError("--x and --y go together: pass the inputs with --x X.npy and the "
                         "targets with --y Y.npy.")
    if "targets" in given and opts["csv"] is None:
        raise UsageError("--targets applies to --csv data only.")
    for name in ("features", "outputs", "noise"):
        if name in given and opts["synthetic"] is None:
            raise UsageError(f"--{name} applies to --synthetic data only.")
    if "layers" in given and "hidden" in given:
        raise UsageError("pass either --layers (all widths) or --hidden (hidden widths), "
                         "not both.")
    for name, (optimizers, _) in OPTIMIZER_OPTIONS.items():
        if opts.get(name) is not None and opts["optimizer"] not in optimizers:
            raise UsageError(f"--{name} applies to --optimizer {' or '.join(optimizers)}; "
                             f"found --optimizer {opts['optimizer']}. Drop --{name} or change "
                             "the optimizer.")
    if opts["min_delta"] and opts["patience"] is None:
        raise UsageError("--min-delta needs --patience (it tunes early stopping).")
    if opts["nesterov"] and not opts["momentum"]:
        raise UsageError("--nesterov needs --momentum > 0 (Nesterov momentum with no momentum "
                         "is plain SGD).")
    _activations(opts)
    try:
        _make_optimizer(opts)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def _make_optimizer(opts):
    import fastbp

    kwargs = {keyword: opts[name] for name, (_, keyword) in OPTIMIZER_OPTIONS.items()
              if opts.get(name) is not None}
    if opts["learning_rate"] is not None:
        kwargs["learning_rate"] = opts["learning_rate"]
    cls = {"sgd": fastbp.SGD, "adam": fastbp.Adam, "rmsprop": fastbp.RMSprop}[opts["optimizer"]]
    return cls(**kwargs)


def _load_data(opts):
    """``(X, Y, description)``; .npy files memory-mapped read-only, CSV and synthetic in memory."""
    if opts["x"] is not None:
        X = _load_npy(opts["x"], "--x")
        Y = _load_npy(opts["y"], "--y")
        if X.ndim != 2:
            raise CommandError(f"--x {opts['x']}: expected a 2-D array (rows, features); found "
                               f"shape {X.shape}.")
        if Y.ndim not in (1, 2) or len(Y) != len(X):
            raise CommandError(f"--y {opts['y']}: expected shape ({len(X)},) or ({len(X)}, k) "
                               f"to match the {len(X):,} rows of --x; found shape {Y.shape}.")
        return X, Y, f"{opts['x']} + {opts['y']} (memory-mapped, streamed from disk)"
    if opts["csv"] is not None:
        X, Y = _load_csv(opts["csv"], opts["targets"])
        return X, Y, f"{opts['csv']} ({X.shape[1]} features, {Y.shape[1]} target(s))"
    from .datasets import make_regression

    X, Y = make_regression(opts["synthetic"], _synthetic_size(opts, "features", 0),
                           _synthetic_size(opts, "outputs", -1), noise=opts["noise"],
                           seed=opts["seed"], dtype=opts["dtype"])
    return X, Y, (f"synthetic: make_regression({opts['synthetic']:,} rows, {X.shape[1]} "
                  f"features, noise {opts['noise']}, seed {opts['seed']})")


def _synthetic_size(opts, name, index):
    """--features/--outputs: typed, else from --layers, else the default."""
    if opts.get(f"_{name}_typed"):
        return opts[name]
    if opts["layers"] is not None:
        return opts["layers"][index]
    return opts[name]


def _load_npy(path, option):
    import numpy as np

    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise CommandError(f"{option} {path}: no such file. Pass the path of a .npy file, e.g. "
                           "one written by `fastbp make-data`.") from None
    except (ValueError, EOFError, OSError) as exc:  # not .npy, empty or truncated, unreadable
        raise CommandError(f"{option} {path}: expected a .npy file of numbers; found something "
                           f"numpy cannot memory-map ({_one_line(exc) or type(exc).__name__}). "
                           "Write it with np.save or `fastbp make-data`.") from None
    if not isinstance(array, np.ndarray):  # an .npz archive
        raise CommandError(f"{option} {path}: expected a .npy file holding one array; found an "
                           ".npz archive. Save each array with np.save.")
    if array.dtype.kind not in "biuf":
        raise CommandError(f"{option} {path}: expected real numbers; found dtype {array.dtype}.")
    return array


def _load_csv(path, targets):
    import numpy as np

    try:
        with open(path) as f:
            first = f.readline()
    except FileNotFoundError:
        raise CommandError(f"--csv {path}: no such file.") from None
    except UnicodeDecodeError:
        raise CommandError(f"--csv {path}: expected a text file of comma-separated numbers; "
                           "found binary data.") from None
    try:
        [float(v) for v in first.split(",")]
        header = 0
    except ValueError:  # a header line of column names
        header = 1
    try:
        data = np.loadtxt(path, delimiter=",", skiprows=header, ndmin=2, dtype=np.float64)
    except ValueError as exc:
        raise CommandError(f"--csv {path}: expected comma-separated numbers in every row (one "
                           f"header line allowed); {_one_line(exc)}. Fix or remove that "
                           "row.") from None
    if data.shape[0] == 0:
        raise CommandError(f"--csv {path}: expected data rows; found none.")
    if data.shape[1] <= targets:
        raise CommandError(f"--csv {path}: expected more than --targets {targets} columns (the "
                           f"features, then the targets); found {data.shape[1]}.")
    return data[:, :-targets], data[:, -targets:]


def _architecture(opts, X, Y):
    n_in = X.shape[1]
    n_out = 1 if Y.ndim == 1 else Y.shape[1]
    layers = opts["layers"]
    if layers is None:
        return [n_in, *opts["hidden"], n_out]
    if layers[0] != n_in or layers[-1] != n_out:
        raise CommandError(f"--layers {','.join(map(str, layers))}: expected {n_in} inputs and "
                           f"{n_out} output(s), as the data has; found {layers[0]} and "
                           f"{layers[-1]}. Pass --layers {n_in},...,{n_out}.")
    return layers


def _check_output_paths(opts):
    """Fail before training, not after it, when an output cannot be written."""
    from ._checkpoint import check_path

    for option, example in (("save", "model.fbp"), ("plot", "loss.png"),
                            ("checkpoint", "run.ckpt")):
        check_path(opts.get(option), f"--{option}", example)  # creates a probe file there
    if opts.get("plot") is not None:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise CommandError("--plot needs matplotlib, which is not installed. Install it "
                               "with `pip install 'fastbp[plot]'` (or `pip install matplotlib`), "
                               "or drop --plot.")
        from matplotlib.figure import Figure

        # checked now, not after a long training run
        formats = Figure().canvas.get_supported_filetypes()
        suffix = Path(opts["plot"]).suffix.lower().lstrip(".")
        if suffix not in formats:
            raise CommandError(f"--plot {opts['plot']}: expected a file name ending in one of "
                               f"{', '.join('.' + f for f in sorted(formats))}; found "
                               f"{'.' + suffix if suffix else 'no extension'}. Pass e.g. "
                               "--plot loss.png.")


def _stored_options(opts):
    """The options to store with the checkpoint: JSON-able, paths absolute."""
    stored = {}
    for key in TRAIN_DEFAULTS:
        value = opts.get(key)
        if key in ("x", "y", "csv") and value is not None:
            value = os.path.abspath(value)
        stored[key] = value
    for key in ("_features_typed", "_outputs_typed"):
        stored[key] = bool(opts.get(key))
    return stored


def _run_training(opts, network=None, resume_from=None, banner=None):
    """Load data, build (or take) the network, fit, report; returns the exit status."""
    from . import _config

    if opts["chunk_rows"] is None:
        return _train_and_report(opts, network, resume_from, banner)
    with _config.config_context(chunk_rows=opts["chunk_rows"]):
        return _train_and_report(opts, network, resume_from, banner)


def _train_and_report(opts, network, resume_from, banner):
    import fastbp

    _check_output_paths(opts)
    X, Y, described = _load_data(opts)
    if network is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the header line says it instead
            network = fastbp.Network(
                _architecture(opts, X, Y), activations=_activations(opts),
                output_activation=opts["output_activation"], loss=opts["loss"],
                dtype=opts["dtype"], backend=opts["backend"], seed=opts["seed"])
    # resumed: the optimizer of the interrupted fit (typed options must equal it)
    optimizer = _make_optimizer(opts) if resume_from is None else network.optimizer
    stored = _stored_options(opts)
    stored["backend"] = network.backend  # "auto" might pick another one when resumed
    network.metadata = {"train_options": stored}
    n_rows = len(X)
    n_val = int(n_rows * opts["validation_split"])
    if n_val >= n_rows:  # e.g. a single row: nothing left to train on
        raise CommandError(f"--validation-split {opts['validation_split']} leaves no training "
                           f"rows of {n_rows}. Pass more data or a smaller --validation-split.")
    # too few rows to hold any out: train on all, as the banner says
    split = opts["validation_split"] if n_val else 0.0
    n_train = n_rows - n_val

    callbacks = []
    if opts["patience"] is not None:
        monitor = "val_loss" if n_val else "loss"
        callbacks.append(fastbp.EarlyStopping(monitor=monitor, patience=opts["patience"],
                                              min_delta=opts["min_delta"],
                                              restore_best_weights=True))
    chosen = network.backend
    why = ""
    if opts["backend"] == "auto" and chosen == "numpy":
        why = " (auto: no compiled backend installed; see `fastbp info`)"
    _say(banner or f"fastbp {fastbp.__version__}")
    _say(f"data: {described}: {n_train:,} training rows"
         + (f", {n_val:,} held out" if n_val else ", no validation split"))
    _say(f"network: {'-'.join(map(str, network.layers))} {network.activations[0]}, "
         f"{network.loss}, {network.dtype.name}, backend {chosen}{why}")
    _say(f"optimizer: {_describe_optimizer(optimizer)}, batch size {opts['batch_size']}, "
         f"{opts['epochs']} epoch(s)" + (f", early stopping (patience {opts['patience']})"
                                          if opts["patience"] is not None else ""))
    if resume_from is not None:
        position = network.training_position
        _say(f"resuming {resume_from}: epoch {position['epoch'] + 1}, "
             f"{position['rows']:,} rows done; checkpoints go to {opts['checkpoint']}")
        for key, path in opts.get("_ignored_outputs", {}).items():
            _say(f"note: the interrupted run had --{key} {path}; output paths are not read "
                 f"from checkpoints: pass --{key} again to write it.")
    # fit trains a batch larger than the data as one batch: so does the warm-up
    compiled = _warm_up(network, optimizer, min(opts["batch_size"], max(1, n_train)))
    if compiled is not None and compiled >= 0.1:  # say so only when it took a while
        _say(f"kernels compiled (or loaded from the cache) in {compiled:.1f} s")

    start = time.perf_counter()
    try:
        history = network.fit(
            X, Y, epochs=opts["epochs"], batch_size=opts["batch_size"],
            optimizer=None if resume_from is not None else optimizer, shuffle=opts["shuffle"],
            validation_split=split, callbacks=callbacks,
            verbose=0 if opts["quiet"] else 1, checkpoint=opts["checkpoint"],
            resume=resume_from is not None)
    except KeyboardInterrupt:
        _report_interrupt(network, opts)
        return 130
    except ValueError as exc:
        if resume_from is None or not str(exc).startswith("fit(resume=True)"):
            raise
        raise CommandError(  # checked before any row is trained
            f"--resume {resume_from}: {exc} The data options come from the checkpoint; pass "
            "--x/--y or --csv again only to point at the same data in another place.") from None
    seconds = time.perf_counter() - start
    epochs_run = len(history.history["loss"]) - (
        0 if resume_from is None else len(position["history"].get("loss", [])))
    # --epochs >= the checkpoint's epoch (checked), so this counts whole epochs and the rest
    trained = max(0, epochs_run * n_train - (0 if resume_from is None else position["rows"]))

    _say("loss per epoch: " + ", ".join(f"{v:.4g}" for v in history.history["loss"])
         + ("" if "val_loss" not in history.history else
            "; val_loss: " + ", ".join(f"{v:.4g}" for v in history.history["val_loss"])))
    stopper = callbacks[0] if callbacks else None
    if stopper is not None and stopper.stopped_epoch:
        _say(f"early stopping after epoch {stopper.stopped_epoch + 1}; restored the weights of "
             f"epoch {stopper.best_epoch + 1}")
    _report_fit_quality(network, X, Y, n_train, n_val)
    rate = trained / seconds if seconds > 0 else float("nan")
    _say(f"time: {seconds:.2f} s training ({trained:,} rows, {rate:,.0f} rows/s, "
         f"backend {chosen})")
    if opts["save"] is not None:
        network.save(opts["save"])
        _say(f"saved the model to {opts['save']} (load it with fastbp.load)")
    if opts["plot"] is not None:
        _plot(history.history, opts["plot"], network.loss)
        _say(f"plotted the loss curves to {opts['plot']}")
    return 0


def _warm_up(network, optimizer, batch_size):
    """Compile the kernels (or load them from the cache) before the clock starts.

    A twin network of the same shape, dtype and backend trains on a few rows of
    zeros, so that the rows/s reported afterwards are the training's alone.
    Returns the seconds it took, or None for the NumPy backend (nothing to compile).
    """
    import numpy as np

    import fastbp

    if network.backend == "numpy":
        return None
    start = time.perf_counter()
    twin = fastbp.Network(list(network.layers), activations=network.activations[:-1],
                          output_activation=network.activations[-1], loss=network.loss,
                          dtype=network.dtype, backend=network.backend)
    rows = batch_size + 1  # a full and a short batch
    X = np.zeros((rows, network.layers[0]), dtype=network.dtype)
    Y = np.zeros((rows, network.layers[-1]), dtype=network.dtype)
    twin.fit(X, Y, batch_size=batch_size, optimizer=optimizer, validation_data=(X, Y),
             verbose=0)
    twin.predict(X)
    return time.perf_counter() - start


def _activations(opts):
    names = opts["activation"]
    n_hidden = len(opts["layers"]) - 2 if opts["layers"] is not None else len(opts["hidden"])
    if len(names) == 1:
        return names[0]
    if len(names) != n_hidden:
        raise UsageError(f"--activation: expected one name or {n_hidden} (one per hidden "
                         f"layer); found {len(names)}: {','.join(names)}.")
    return names


def _describe_optimizer(optimizer):
    config = optimizer.get_config()
    name = config.pop("name")
    return f"{name}(" + ", ".join(f"{k}={v}" for k, v in config.items()) + ")"


def _report_interrupt(network, opts):
    position = network.training_position
    where = ""
    if position is not None:
        where = (f" in epoch {position['epoch'] + 1} after {position['rows']:,} rows"
                 if position["rows"] else f" after epoch {position['epoch']}")
    print(f"fastbp train: interrupted{where}; the model holds the weights of the last "
          "completed chunk.", file=sys.stderr)
    if opts["checkpoint"] is not None and position is not None:
        outputs = "".join(f" --{key} {opts[key]}" for key in ("save", "plot")
                          if opts.get(key) is not None)  # never read back from the checkpoint
        print(f"checkpoint written to {opts['checkpoint']}; continue with: fastbp train "
              f"--resume {opts['checkpoint']}{outputs}", file=sys.stderr)
    else:
        print("nothing was saved (pass --checkpoint PATH to be able to resume).",
              file=sys.stderr)


# ---------------------------------------------------------------------------- evaluation
def _row_blocks(X, Y, start, stop, block_rows=EVAL_BLOCK_ROWS):
    """Yield float64 ``(X, Y)`` blocks of rows ``start:stop``; memory-maps stay unmapped."""
    import numpy as np

    from ._data import StreamSource

    Y2 = Y.reshape(-1, 1) if Y.ndim == 1 else Y
    source = StreamSource(X, Y2, np.dtype(np.float64))
    for lo in range(start, stop, block_rows):
        yield source._read(lo, min(lo + block_rows, stop))


def linear_baseline(X, Y, stop, max_rows=BASELINE_ROWS):
    """Least-squares fit of ``[X, 1] @ W ≈ Y`` on rows ``0:stop``; returns ``W``.

    The rows are reduced block by block to the R factor of a QR decomposition
    of ``[X, 1, Y]`` (numerically as good as factoring the whole matrix, in
    memory of one block), then ``numpy.linalg.lstsq`` solves the small
    triangular system.  Above ``max_rows`` rows, evenly spread blocks totalling
    ``max_rows`` are used: a linear model with ``features + 1`` coefficients is
    settled long before that.
    """
    import numpy as np

    block = EVAL_BLOCK_ROWS
    starts = list(range(0, stop, block))
    wanted = -(-max_rows // block)
    if len(starts) > wanted:
        starts = [starts[i] for i in np.unique(np.linspace(0, len(starts) - 1, wanted)
                                                .round().astype(int))]
    R = None
    for lo in starts:
        (xb, yb), = _row_blocks(X, Y, lo, min(lo + block, stop), block)
        A = np.hstack([xb, np.ones((len(xb), 1)), yb])
        R = np.linalg.qr(A if R is None else np.vstack([R, A]), mode="r")
    p = X.shape[1] + 1
    return np.linalg.lstsq(R[:p, :p], R[:p, p:], rcond=None)[0]


class _Scores:
    """Streaming R² (per output, then averaged) and RMSE: block means combined exactly."""

    def __init__(self):
        self.n = 0
        self.mean = self.m2 = self.sse = 0.0

    def add(self, y, p):
        n_b = len(y)
        mean_b = y.mean(axis=0)
        m2_b = ((y - mean_b) ** 2).sum(axis=0)
        delta = mean_b - self.mean
        total = self.n + n_b
        self.m2 = self.m2 + m2_b + delta ** 2 * self.n * n_b / total
        self.mean = self.mean + delta * n_b / total
        self.n = total
        self.sse = self.sse + ((y - p) ** 2).sum(axis=0)

    def r2(self):
        import numpy as np

        with np.errstate(divide="ignore", invalid="ignore"):
            per_output = np.where(self.m2 > 0, 1 - self.sse / self.m2, np.nan)
        return float(np.mean(per_output))

    def rmse(self):
        import numpy as np

        return float(np.sqrt(np.sum(self.sse) / (self.n * np.size(self.sse))))


def _report_fit_quality(network, X, Y, n_train, n_val):
    import numpy as np

    weights = linear_baseline(X, Y, n_train)
    start, stop = (n_train, n_train + n_val) if n_val else (0, n_train)
    net_scores, lin_scores = _Scores(), _Scores()
    for xb, yb in _row_blocks(X, Y, start, stop):
        net_scores.add(yb, network.predict(xb).astype(np.float64))
        lin_scores.add(yb, xb @ weights[:-1] + weights[-1])
    where = (f"the {n_val:,} held-out rows" if n_val else
             f"the {n_train:,} training rows (no validation split)")
    _say(f"fit on {where}:")
    _say(f"  {'':<22}{'R²':>8}{'RMSE':>11}")
    _say(f"  {'network':<22}{net_scores.r2():8.4f}{net_scores.rmse():11.4g}")
    _say(f"  {'linear least squares':<22}{lin_scores.r2():8.4f}{lin_scores.rmse():11.4g}")


def _plot(history, path, loss_name):
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    epochs = range(1, len(history["loss"]) + 1)
    ax.plot(epochs, history["loss"], marker="o", label="loss (training)")
    if "val_loss" in history:
        ax.plot(epochs, history["val_loss"], marker="s", label="val_loss (held out)")
    if all(v > 0 for key in history for v in history[key]):
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(loss_name)
    ax.set_title("fastbp training")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    # rendered in memory, then written as model files are: never through a link at the path
    import io

    from . import _files

    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lower().lstrip("."), dpi=120)
    plt.close(fig)
    _files.atomic_write(path, [buffer.getvalue()], "--plot")


# ---------------------------------------------------------------------------- demo
def _demo(args):
    import fastbp

    from . import _backends, _config

    requested = args.backend if args.backend != "auto" else _config.backend()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        backend, _ = _backends.resolve(requested)
    samples = args.samples
    if samples is None:
        samples = DEMO_SAMPLES
        if backend == "numpy":
            samples = DEMO_NUMPY_SAMPLES
            why = ("no compiled backend is installed (see `fastbp info`)" if requested == "auto"
                   else "the NumPy backend was asked for")
            _say(f"note: {why}; the NumPy loop trains ~20x slower, so the demo uses "
                 f"{samples:,} rows instead of {DEMO_SAMPLES:,} to finish quickly.")
    opts = {**TRAIN_DEFAULTS, "synthetic": samples, "layers": [20, 64, 64, 1],
            "backend": backend, "dtype": args.dtype, "seed": args.seed, "epochs": args.epochs,
            "batch_size": 1, "optimizer": "sgd", "learning_rate": 0.01,
            "validation_split": 0.1, "quiet": args.quiet}
    banner = (f"fastbp {fastbp.__version__} demo: 20-64-64-1 ReLU network, per-sample SGD "
              f"(batch size 1), {samples:,} synthetic rows")
    start = time.perf_counter()
    status = _run_training(opts, banner=banner)
    if status:
        return status
    if backend != "numpy":
        _speedup(backend, args.dtype, args.seed, min(samples, 200_000))
    _say(f"demo finished in {time.perf_counter() - start:.1f} s")
    return 0


def _speedup(backend, dtype, seed, rows):
    """Time per-sample SGD on a slice of ``rows`` rows with ``backend`` and with NumPy.

    NumPy trains only the first 10,000 rows (about a quarter of a second): its
    rate does not depend on how many rows it sees.
    """
    import fastbp
    from .datasets import make_regression

    X, y = make_regression(rows, 20, seed=seed + 1, dtype=dtype)
    rates = {}
    for name, n in ((backend, rows), ("numpy", min(rows, 10_000))):
        net = fastbp.Network([20, 64, 64, 1], dtype=dtype, backend=name, seed=seed)
        net.fit(X[:1000], y[:1000], batch_size=1, verbose=0)  # compile / warm up
        begin = time.perf_counter()
        net.fit(X[:n], y[:n], batch_size=1, shuffle=False, optimizer=fastbp.SGD(0.01),
                verbose=0)
        rates[name] = n / (time.perf_counter() - begin)
    _say(f"speed, per-sample SGD on a slice: {backend} {rates[backend]:,.0f} samples/s, numpy "
         f"{rates['numpy']:,.0f} samples/s: {backend} is {rates[backend] / rates['numpy']:.1f}x "
         "faster than the NumPy backend")


if __name__ == "__main__":
    sys.exit(main())
