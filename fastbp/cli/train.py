"""``fastbp train``: train a network on .npy, CSV or synthetic data; ``--resume`` a checkpoint.

``train`` options are stored with the checkpoint it writes (the network's
``metadata``), so ``fastbp train --resume CKPT`` continues an interrupted run
without repeating them.  What is read back from the file is checked like
typed options; output paths are never read back (see ``fastbp train --help``,
option --resume).
"""

import argparse
import io
import math
import os
import sys
import time
import warnings
from pathlib import Path

import fastbp

from .. import _files, _io
from .._checkpoint import check_path
from .._config import config_context
from .._data import row_blocks
from ..datasets import load_csv, load_npy, make_regression
from ..metrics import BLOCK_ROWS, RegressionScores, linear_baseline
from ..network import load_contents
from ..optimizers import SGD, Adam, RMSprop
from .common import (ACTIVATIONS, BACKENDS, CATEGORICAL, DTYPES, LOSSES, SPARSE_LOSSES,
                     CommandError, UsageError, activation_list, check_distinct_files,
                     fraction, int_list, layers, non_negative_float,
                     non_negative_int, positive_float, positive_int, say, workers_count)

#: ``--optimizer`` name -> its class.
OPTIMIZERS = {cls.__name__.lower(): cls for cls in (SGD, Adam, RMSprop)}
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
    "workers": 1, "average_every": None,
}
# Options that define the network; on --resume it comes from the checkpoint.
ARCHITECTURE = ("layers", "hidden", "activation", "output_activation", "loss", "dtype")
# Optimizer option -> the optimizers it applies to, and the keyword it sets.
OPTIMIZER_OPTIONS = {
    "momentum": (("sgd", "rmsprop"), "momentum"), "nesterov": (("sgd",), "nesterov"),
    "beta1": (("adam",), "beta_1"), "beta2": (("adam",), "beta_2"),
    "rho": (("rmsprop",), "rho"), "epsilon": (("adam", "rmsprop"), "epsilon"),
}


def add_parser(commands):
    """Add ``train`` to the ``commands`` subparsers; returns its parser.

    The parser's ``option_actions`` maps each option's destination to its
    argparse action (what a stored option is checked with on --resume).
    """
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
    train.option_actions = add_options(train)
    train.set_defaults(run=run)
    return train


def add_options(parser, exclude=(), help_overrides=None):
    """Add ``fastbp train``'s options to ``parser``; returns ``{destination: action}``.

    ``fastbp sweep`` shares them: it leaves out those in ``exclude``
    (destinations, e.g. ``"seed"``) and rewords those in ``help_overrides``.
    Every default is ``argparse.SUPPRESS`` (see :data:`TRAIN_DEFAULTS`).
    """
    d = TRAIN_DEFAULTS
    S = argparse.SUPPRESS
    actions = {}
    help_overrides = help_overrides or {}

    def option(group, *flags, **kwargs):
        dest = kwargs.get("dest") or flags[0].lstrip("-").replace("-", "_")
        if dest in exclude:
            return
        if dest in help_overrides:
            kwargs["help"] = help_overrides[dest]
        action = group.add_argument(*flags, **kwargs)
        actions[action.dest] = action

    train = parser
    data = train.add_argument_group("data (one of --x/--y, --csv, --synthetic)")
    option(data, "--x", metavar="X.npy", default=S,
                 help="inputs, a 2-D .npy file (memory-mapped, never written)")
    option(data, "--y", metavar="Y.npy", default=S, help="targets, a 1-D or 2-D .npy file")
    option(data, "--csv", metavar="FILE", default=S,
                 help="a CSV file of numbers (read into memory; a header line is skipped); "
                 "the last --targets columns are the targets")
    option(data, "--targets", type=positive_int, metavar="N", default=S,
                 help=f"target columns at the end of each CSV row (default {d['targets']})")
    option(data, "--synthetic", type=positive_int, metavar="N", default=S,
                 help="generate N rows with fastbp.datasets.make_regression")
    option(data, "--features", type=positive_int, metavar="N", default=S,
                 help=f"features of --synthetic data (default: the first --layers width "
                 f"or {d['features']})")
    option(data, "--outputs", type=positive_int, metavar="K", default=S,
                 help="outputs of --synthetic data (default: the last --layers width or 1)")
    option(data, "--noise", type=non_negative_float, metavar="SD", default=S,
                 help=f"noise standard deviation of --synthetic data (default {d['noise']})")

    model = train.add_argument_group("network")
    option(model, "--layers", type=layers, metavar="W,W,...", default=S,
                  help="all layer widths, inputs first, e.g. 20,64,64,1 (default: the "
                  "data's inputs, --hidden, the data's outputs)")
    option(model, "--hidden", type=int_list, metavar="W,...", default=S,
                  help="hidden widths when --layers is not given (default 64,64)")
    option(model, "--activation", type=activation_list, metavar="NAME[,NAME...]",
                  default=S, help=f"hidden activation(s): {', '.join(ACTIVATIONS)} "
                  "(default relu)")
    option(model, "--output-activation", choices=ACTIVATIONS, default=S,
                  help="(default linear)")
    option(model, "--loss", choices=LOSSES, default=S, help="(default mse)")
    option(model, "--dtype", choices=DTYPES, default=S,
                  help="(default float64)")
    option(model, "--backend", choices=BACKENDS, default=S,
                  help="(default auto: the fastest installed)")
    option(model, "--seed", type=non_negative_int, metavar="N", default=S,
                  help="seeds the weights, the shuffles and --synthetic data (default 0)")

    opt = train.add_argument_group(
        "optimizer (Keras's names and defaults; with --resume they must equal the "
        "checkpoint's, whose optimizer state a different optimizer would discard)")
    option(opt, "--optimizer", choices=tuple(OPTIMIZERS), default=S,
                help="(default sgd)")
    option(opt, "--learning-rate", "--lr", type=positive_float, metavar="LR", default=S,
                help="(default 0.01 for sgd, 0.001 for adam and rmsprop)")
    option(opt, "--momentum", type=fraction, metavar="M", default=S,
                help="sgd, rmsprop (default 0)")
    option(opt, "--nesterov", action="store_true", default=S, help="sgd")
    option(opt, "--beta1", type=fraction, metavar="B1", default=S,
                help="adam (default 0.9)")
    option(opt, "--beta2", type=fraction, metavar="B2", default=S,
                help="adam (default 0.999)")
    option(opt, "--rho", type=fraction, metavar="RHO", default=S,
                help="rmsprop (default 0.9)")
    option(opt, "--epsilon", type=positive_float, metavar="EPS", default=S,
                help="adam, rmsprop (default 1e-7)")

    fit = train.add_argument_group("training")
    option(fit, "--batch-size", type=positive_int, metavar="N", default=S,
                help=f"1 is per-sample SGD, what the kernels are built for "
                f"(default {d['batch_size']})")
    option(fit, "--epochs", type=positive_int, metavar="N", default=S,
                help=f"(default {d['epochs']})")
    option(fit, "--no-shuffle", dest="shuffle", action="store_false", default=S,
                help="train on the rows in file order")
    option(fit, "--validation-split", type=fraction, metavar="F", default=S,
                help="hold out the last fraction F of the rows for val_loss, early "
                f"stopping and the final R² (default {d['validation_split']})")
    option(fit, "--patience", type=non_negative_int, metavar="N", default=S,
                help="early stopping: stop after N epochs without improvement of val_loss "
                "(loss without a validation split) and restore the best weights")
    option(fit, "--min-delta", type=non_negative_float, metavar="D", default=S,
                help="early stopping: the smallest improvement that counts (default 0)")
    option(fit, "--chunk-rows", type=positive_int, metavar="N", default=S,
                help="rows per compiled call (FASTBP_CHUNK_ROWS; default 32768): smaller "
                "makes Ctrl-C and the progress bar react sooner")
    option(fit, "--workers", type=workers_count, metavar="N", default=S,
                help="threads to train with, -1 for every core (default 1: the serial, "
                "Keras-exact run); batches of 64+ rows are split exactly, smaller ones "
                "train replicas averaged every --average-every rows (local SGD; see the "
                "user guide's \"Using every core\")")
    option(fit, "--quiet", "-q", action="store_true", default=S, help="no progress bar")

    cluster = train.add_argument_group(
        "cluster (needs dask[distributed]; local SGD on the workers, see the user guide's "
        "\"Training on a cluster\"; never stored in checkpoints)")
    option(cluster, "--dask-scheduler", metavar="tcp://HOST:PORT", default=S,
           help="train on the Dask cluster of this scheduler (--x/--y must be readable at "
           "the same paths on every worker)")
    option(cluster, "--dask-local-workers", type=positive_int, metavar="N", default=S,
           help="start a local Dask cluster of N single-threaded worker processes")
    option(cluster, "--dask-round-timeout", type=positive_float, metavar="SECONDS", default=S,
           help="stop with an error (the model at the last average) when one averaging "
           "round takes longer than this while its workers stay connected (default: wait)")
    option(cluster, "--average-every", type=positive_int, metavar="ROWS", default=S,
           help="with --workers N or --dask-*: rows each worker trains between two "
           "averages (default: about 75 ms of kernel time)")

    out = train.add_argument_group("output")
    option(out, "--save", metavar="MODEL", default=S,
                help="write the trained model (load it with fastbp.load)")
    option(out, "--plot", metavar="PNG", default=S,
                help="plot loss and val_loss per epoch (needs matplotlib)")
    option(out, "--checkpoint", metavar="PATH", default=S,
                help="write model and training position here after each epoch and on "
                "Ctrl-C (atomically); with --resume the default is the resumed file")
    option(out, "--resume", metavar="PATH", default=S,
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
    return actions



def run(args):
    """Run ``fastbp train`` with parsed ``args``; returns the exit status."""
    given = {key: value for key, value in vars(args).items() if key not in ("run", "command")}
    opts, network, resume_from = _resolve_options(given)
    return run_training(opts, network=network, resume_from=resume_from)


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
_STORED_TYPES = {positive_int: int, non_negative_int: int, workers_count: int,
                 positive_float: (int, float), non_negative_float: (int, float),
                 fraction: (int, float), int_list: list, layers: list, activation_list: list}


def _read_checkpoint(path):
    """``_io.read_model_file`` of checkpoint ``path``: its checked header and arrays."""
    if not os.path.exists(path):
        raise CommandError(f"--resume {path}: no such file. Pass the path given to "
                           "--checkpoint when the run was started.")
    try:
        return _io.read_model_file(path)  # a directory or FIFO: refused by kind, not opened
    except OSError as exc:
        raise CommandError(f"--resume {exc.strerror or exc}") from None


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
    actions = _option_actions()
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


def _option_actions():
    """Option destination -> the argparse action of ``fastbp train``'s parser."""
    commands = argparse.ArgumentParser(prog="fastbp").add_subparsers()
    return add_parser(commands).option_actions


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
    item_kind = (int if action.type in (int_list, layers) else str) if kind is list else kind
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
    must_match = ("batch_size", "shuffle", "validation_split", "workers", "average_every",
                  *DATA_OPTIONS)
    changed = [k for k in must_match
               if k in given and given[k] != stored.get(k, TRAIN_DEFAULTS[k])]
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
    kwargs = {keyword: opts[name] for name, (_, keyword) in OPTIMIZER_OPTIONS.items()
              if opts.get(name) is not None}
    if opts["learning_rate"] is not None:
        kwargs["learning_rate"] = opts["learning_rate"]
    cls = OPTIMIZERS[opts["optimizer"]]
    return cls(**kwargs)


def _load_data(opts):
    """``(X, Y, description)``; .npy files memory-mapped read-only, CSV and synthetic in memory."""
    if opts["x"] is not None:
        X = _load_npy(opts["x"], "--x")
        Y = _load_npy(opts["y"], "--y")
        if X.ndim != 2 or 0 in X.shape:
            raise CommandError(f"--x {opts['x']}: expected a 2-D array (rows, features) with "
                               f"at least one row and one feature; found shape {X.shape}.")
        if Y.ndim not in (1, 2) or len(Y) != len(X):
            raise CommandError(f"--y {opts['y']}: expected shape ({len(X)},) or ({len(X)}, k) "
                               f"to match the {len(X):,} rows of --x; found shape {Y.shape}.")
        return X, Y, f"{opts['x']} + {opts['y']} (memory-mapped, streamed from disk)"
    if opts["csv"] is not None:
        X, Y = _load_csv(opts["csv"], opts["targets"])
        return X, Y, f"{opts['csv']} ({X.shape[1]} features, {Y.shape[1]} target(s))"
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
    """``datasets.load_npy(path)``; its errors name ``option``."""
    try:
        return load_npy(path)
    except (FileNotFoundError, ValueError) as exc:
        raise CommandError(f"{option} {exc}") from None


def _load_csv(path, targets):
    """``datasets.load_csv(path, targets)``; its errors name --csv."""
    try:
        return load_csv(path, targets)
    except (FileNotFoundError, ValueError) as exc:
        raise CommandError(f"--csv {exc}") from None


def _architecture(opts, X, Y):
    n_in = X.shape[1]
    n_out = 1 if Y.ndim == 1 else Y.shape[1]
    layers = opts["layers"]
    if opts["loss"] in SPARSE_LOSSES:
        # class labels: one output per class (labels 0..k-1; fit checks them)
        if layers is not None:
            return layers
        import numpy as np

        top = float(np.max(Y)) if len(Y) else 0.0
        n_out = int(top) + 1 if math.isfinite(top) and top >= 0 else 1
    if layers is None:
        return [n_in, *opts["hidden"], n_out]
    if layers[0] != n_in or layers[-1] != n_out:
        raise CommandError(f"--layers {','.join(map(str, layers))}: expected {n_in} inputs and "
                           f"{n_out} output(s), as the data has; found {layers[0]} and "
                           f"{layers[-1]}. Pass --layers {n_in},...,{n_out}.")
    return layers


def _check_output_paths(opts):
    """Fail before training, not after it, when an output cannot be written."""
    check_distinct_files({f"--{k}": opts.get(k) for k in ("x", "y", "csv")},
                         {f"--{k}": opts.get(k) for k in ("checkpoint", "save", "plot")})
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


def run_training(opts, network=None, resume_from=None, banner=None):
    """Load data, build (or take) the network, fit, report; returns the exit status.

    ``opts`` holds every key of :data:`TRAIN_DEFAULTS` (the demo builds them).
    """
    if opts["chunk_rows"] is None:
        return _train_and_report(opts, network, resume_from, banner)
    with config_context(chunk_rows=opts["chunk_rows"]):
        return _train_and_report(opts, network, resume_from, banner)


def _train_and_report(opts, network, resume_from, banner):
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
    say(banner or f"fastbp {fastbp.__version__}")
    say(f"data: {described}: {n_train:,} training rows"
         + (f", {n_val:,} held out" if n_val else ", no validation split"))
    say(f"network: {'-'.join(map(str, network.layers))} {network.activations[0]}, "
         f"{network.loss}, {network.dtype.name}, backend {chosen}{why}")
    say(f"optimizer: {_describe_optimizer(optimizer)}, batch size {opts['batch_size']}, "
         f"{opts['epochs']} epoch(s)" + (f", early stopping (patience {opts['patience']})"
                                          if opts["patience"] is not None else ""))
    if resume_from is not None:
        position = network.training_position
        say(f"resuming {resume_from}: epoch {position['epoch'] + 1}, "
             f"{position['rows']:,} rows done; checkpoints go to {opts['checkpoint']}")
        for key, path in opts.get("_ignored_outputs", {}).items():
            say(f"note: the interrupted run had --{key} {path}; output paths are not read "
                 f"from checkpoints: pass --{key} again to write it.")
    # fit trains a batch larger than the data as one batch: so does the warm-up
    compiled = _warm_up(network, optimizer, min(opts["batch_size"], max(1, n_train)))
    if compiled is not None and compiled >= 0.1:  # say so only when it took a while
        say(f"kernels compiled (or loaded from the cache) in {compiled:.1f} s")

    cluster = _start_dask(opts)
    start = time.perf_counter()
    try:
        if cluster is None:
            history = network.fit(
                X, Y, epochs=opts["epochs"], batch_size=opts["batch_size"],
                optimizer=None if resume_from is not None else optimizer,
                shuffle=opts["shuffle"], validation_split=split, callbacks=callbacks,
                verbose=0 if opts["quiet"] else 1, checkpoint=opts["checkpoint"],
                resume=resume_from is not None, workers=opts.get("workers", 1),
                average_every=opts.get("average_every"))
        else:
            history = _fit_on_dask(cluster, network, X, Y, opts, n_train, n_val, callbacks,
                                   None if resume_from is not None else optimizer,
                                   resume_from is not None)
    except KeyboardInterrupt:
        if cluster is not None:
            _report_dask_interrupt(opts)
        else:
            _report_interrupt(network, opts)
        return 130
    except ValueError as exc:
        if resume_from is None or not str(exc).startswith("fit(resume=True)"):
            raise
        raise CommandError(  # checked before any row is trained
            f"--resume {resume_from}: {exc} The data options come from the checkpoint; pass "
            "--x/--y or --csv again only to point at the same data in another place.") from None
    finally:
        if cluster is not None:
            _stop_dask(cluster)
    seconds = time.perf_counter() - start
    epochs_run = len(history.history["loss"]) - (
        0 if resume_from is None else len(position["history"].get("loss", [])))
    # --epochs >= the checkpoint's epoch (checked), so this counts whole epochs and the rest
    trained = max(0, epochs_run * n_train - (0 if resume_from is None else position["rows"]))

    say("loss per epoch: " + ", ".join(f"{v:.4g}" for v in history.history["loss"])
         + ("" if "val_loss" not in history.history else
            "; val_loss: " + ", ".join(f"{v:.4g}" for v in history.history["val_loss"])))
    stopper = callbacks[0] if callbacks else None
    if stopper is not None and stopper.stopped_epoch:
        say(f"early stopping after epoch {stopper.stopped_epoch + 1}; restored the weights of "
             f"epoch {stopper.best_epoch + 1}")
    _report_fit_quality(network, X, Y, n_train, n_val)
    rate = trained / seconds if seconds > 0 else float("nan")
    say(f"time: {seconds:.2f} s training ({trained:,} rows, {rate:,.0f} rows/s, "
         f"backend {chosen})")
    if opts["save"] is not None:
        network.save(opts["save"])
        say(f"saved the model to {opts['save']} (load it with fastbp.load)")
    if opts["plot"] is not None:
        _plot(history.history, opts["plot"], network.loss)
        say(f"plotted the loss curves to {opts['plot']}")
    return 0


def _warm_up(network, optimizer, batch_size):
    """Compile the kernels (or load them from the cache) before the clock starts.

    A twin network of the same shape, dtype and backend trains on a few rows of
    zeros, so that the rows/s reported afterwards are the training's alone.
    Returns the seconds it took, or None for the NumPy backend (nothing to compile).
    """
    import numpy as np

    if network.backend == "numpy":
        return None
    start = time.perf_counter()
    twin = fastbp.Network(list(network.layers), activations=network.activations[:-1],
                          output_activation=network.activations[-1], loss=network.loss,
                          dtype=network.dtype, backend=network.backend)
    rows = batch_size + 1  # a full and a short batch
    X = np.zeros((rows, network.layers[0]), dtype=network.dtype)
    Y = np.zeros((rows, network.layers[-1]), dtype=network.dtype)
    if network.loss in SPARSE_LOSSES:  # class labels: one per row
        Y = np.zeros(rows, dtype=np.int64)
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


def _report_fit_quality(network, X, Y, n_train, n_val):
    import numpy as np

    start, stop = (n_train, n_train + n_val) if n_val else (0, n_train)
    where = (f"the {n_val:,} held-out rows" if n_val else
             f"the {n_train:,} training rows (no validation split)")
    if network.loss in CATEGORICAL:
        # a classifier: R² of probabilities would mean nothing; report the accuracy
        right = 0
        for xb, yb in row_blocks(X, Y, start, stop, BLOCK_ROWS):
            truth = yb[:, 0] if network.loss in SPARSE_LOSSES else yb.argmax(axis=1)
            right += int((network.predict(xb).argmax(axis=1) == truth).sum())
        say(f"fit on {where}: accuracy {right / max(stop - start, 1):.4f}")
        return
    weights = linear_baseline(X, Y, n_train)
    net_scores, lin_scores = RegressionScores(), RegressionScores()
    for xb, yb in row_blocks(X, Y, start, stop, BLOCK_ROWS):
        net_scores.add(yb, network.predict(xb).astype(np.float64))
        lin_scores.add(yb, xb @ weights[:-1] + weights[-1])
    say(f"fit on {where}:")
    say(f"  {'':<22}{'R²':>8}{'RMSE':>11}")
    say(f"  {'network':<22}{net_scores.r2():8.4f}{net_scores.rmse():11.4g}")
    say(f"  {'linear least squares':<22}{lin_scores.r2():8.4f}{lin_scores.rmse():11.4g}")


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
    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lower().lstrip("."), dpi=120)
    plt.close(fig)
    _files.atomic_write(path, [buffer.getvalue()], "--plot")



# ---------------------------------------------------------------- --dask-scheduler / --dask-local-workers
def _start_dask(opts):
    """``(client, local cluster or None, fastbp.dask)`` for the --dask-* options, else None."""
    address, local = opts.get("dask_scheduler"), opts.get("dask_local_workers")
    if address is None and local is None:
        if opts.get("dask_round_timeout") is not None:
            raise UsageError("--dask-round-timeout applies to --dask-scheduler or "
                             "--dask-local-workers only.")
        if opts.get("average_every") is not None and opts.get("workers", 1) == 1:
            raise UsageError("--average-every applies to --workers N (N > 1), "
                             "--dask-scheduler or --dask-local-workers only.")
        return None
    if opts.get("workers", 1) != 1:
        raise UsageError("--workers sets threads of one process; on a Dask cluster each "
                         "worker process trains one replica. Drop --workers.")
    if address is not None and local is not None:
        raise UsageError("pass either --dask-scheduler (an existing cluster) or "
                         "--dask-local-workers (a new local one), not both.")
    try:
        import distributed

        from .. import dask as fastbp_dask
    except ImportError as exc:
        raise CommandError(f"--dask-*: {exc}") from None
    if local is not None:
        cluster = distributed.LocalCluster(n_workers=local, threads_per_worker=1,
                                           processes=True, dashboard_address=None)
        client = distributed.Client(cluster)
    else:
        cluster = None
        try:
            client = distributed.Client(address, timeout=30)
        except (OSError, TimeoutError, ValueError) as exc:
            raise CommandError(f"--dask-scheduler {address}: cannot connect ({exc}). Start "
                               "the scheduler (`dask scheduler`) and pass its address, e.g. "
                               "tcp://HOST:8786.") from None
    n_workers = len(client.scheduler_info(n_workers=-1)["workers"])
    say(f"dask: {n_workers} worker(s) at {client.scheduler.address}")
    return client, cluster, fastbp_dask


def _fit_on_dask(dask_run, network, X, Y, opts, n_train, n_val, callbacks, optimizer, resume):
    """``fastbp.dask.fit`` on the rows of ``X``/``Y`` (.npy files are read on the workers)."""
    import dask.array as da

    client, _, fastbp_dask = dask_run
    from .._config import chunk_rows

    # at least two chunks per worker, so that every worker holds rows to train on
    n_workers = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
    rows = max(1, min(chunk_rows(), -(-n_train // (2 * n_workers))))
    if opts["x"] is not None:  # read where the chunks train, never shipped from here
        Xd = fastbp_dask.from_npy(opts["x"], rows)
        Yd = fastbp_dask.from_npy(opts["y"], rows)
    else:
        Xd = da.from_array(X, chunks=(rows, -1))
        Yd = da.from_array(Y, chunks=(rows,) + (-1,) * (Y.ndim - 1))
    validation_data = (Xd[n_train:], Yd[n_train:]) if n_val else None
    return fastbp_dask.fit(
        network, Xd[:n_train], Yd[:n_train], client=client, epochs=opts["epochs"],
        batch_size=opts["batch_size"], optimizer=optimizer, shuffle=opts["shuffle"],
        average_every=opts.get("average_every"), validation_data=validation_data,
        callbacks=callbacks, verbose=0 if opts["quiet"] else 1,
        checkpoint=opts["checkpoint"], resume=resume,
        round_timeout=opts.get("dask_round_timeout"))


def _stop_dask(dask_run):
    client, cluster, _ = dask_run
    client.close()
    if cluster is not None:
        cluster.close()


def _report_dask_interrupt(opts):
    print("fastbp train: interrupted; the model holds the average of the last round (it is "
          "not saved).", file=sys.stderr)
    if opts["checkpoint"] is not None:
        print(f"{opts['checkpoint']} holds the position after the last round; continue "
              f"with: fastbp train --resume {opts['checkpoint']} --dask-... (inside an epoch, "
              "on workers holding the same chunks)", file=sys.stderr)
