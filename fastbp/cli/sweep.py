"""``fastbp sweep``: train a grid of learning rates x seeds at once with ``fastbp.fit_many``.

Data, network and training options are ``fastbp train``'s (the same parser
code, :func:`fastbp.cli.train.add_options`), less those that name one
network (``--seed``, ``--learning-rate``) or one run (``--checkpoint``,
``--resume``, ``--save``, the Dask options).  Every network trains exactly
as ``fastbp train`` would train it alone; the table lists them best first.
"""

import argparse
import io
import time
import warnings
from pathlib import Path

import fastbp

from .. import _files
from .._checkpoint import check_path
from .._config import config_context
from .._data import row_blocks
from ..metrics import BLOCK_ROWS, RegressionScores
from . import train as train_command
from .common import (CATEGORICAL, SPARSE_LOSSES, CommandError, check_distinct_files,
                     positive_float, say)

#: ``fastbp train`` options that ``sweep`` does not take (one network's, or one run's).
EXCLUDED = ("seed", "learning_rate", "checkpoint", "resume", "save", "dask_scheduler",
            "dask_local_workers", "dask_round_timeout", "average_every")
#: The seed of ``--synthetic`` data (``--seeds`` seed the networks).
DATA_SEED = 0


def learning_rates(text):
    """``--learning-rates``: comma-separated numbers > 0, e.g. ``1e-3,3e-3,1e-2``."""
    values = []
    for part in text.split(","):
        try:
            values.append(positive_float(part.strip()))
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated learning rates > 0, e.g. 1e-3,3e-3,1e-2; found "
                f"{text!r}") from None
    return values


#: The most seeds ``--seeds`` takes: one network each, all held at once.
MAX_SEEDS = 10_000


def seed_list(text):
    """``--seeds``: ``0-7`` (both ends included), ``0,3,5`` or a mix such as ``0-3,8``."""
    ranges = []
    try:
        for part in text.split(","):
            low, _, high = part.strip().partition("-")
            low = int(low)
            high = int(high) if high else low
            if low < 0 or high < low:
                raise ValueError
            ranges.append(range(low, high + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seeds >= 0 such as 0-7, 0,3,5 or 0-3,8; "
                                         f"found {text!r}") from None
    count = sum(len(r) for r in ranges)  # counted before any list is made
    if count > MAX_SEEDS:
        raise argparse.ArgumentTypeError(
            f"expected at most {MAX_SEEDS:,} seeds (one network each, all trained at once); "
            f"found {count:,} in {text!r}. Pass a shorter range, e.g. 0-99.")
    seeds = [seed for r in ranges for seed in r]
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected each seed once; found {text!r}")
    return seeds


def add_parser(commands):
    """Add ``sweep`` to the ``commands`` subparsers; returns its parser."""
    sweep = commands.add_parser(
        "sweep", help="train a grid of learning rates x seeds at once (fastbp.fit_many)",
        description="Train one network per learning rate and seed on the same data, all at\n"
        "once with fastbp.fit_many (--workers threads across the networks; each network\n"
        "trains exactly as `fastbp train` would train it alone), and list them best first:\n"
        "final loss, val_loss and R² on the held-out rows.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  fastbp sweep --synthetic 100000 --learning-rates 1e-3,3e-3,1e-2 --seeds 0-7 "
        "--workers 2\n"
        "  fastbp sweep --x X.npy --y y.npy --optimizer adam --learning-rates 1e-4,1e-3 "
        "--seeds 0-3 --save-best best.fbp --plot sweep.png")
    grid = sweep.add_argument_group("grid")
    grid.add_argument("--learning-rates", "--lrs", type=learning_rates, required=True,
                      metavar="LR,LR,...", help="the learning rates to try, e.g. 1e-3,3e-3,1e-2")
    grid.add_argument("--seeds", type=seed_list, default=[0], metavar="SEEDS",
                      help="network seeds (initial weights and shuffles) to try: 0-7, 0,3,5 "
                      "or 0-3,8 (default 0); --synthetic data is drawn with seed "
                      f"{DATA_SEED}")
    grid.add_argument("--save-best", metavar="MODEL", default=None,
                      help="write the best network (lowest val_loss, or loss without a "
                      "validation split) to MODEL; load it with fastbp.load")
    train_command.add_options(sweep, exclude=EXCLUDED, help_overrides={
        "plot": "plot every network's loss per epoch in one figure (needs matplotlib)",
        "workers": "threads to spread the networks over, -1 for every core (default 1); "
                   "the results do not depend on it",
        "quiet": "no progress bar"})
    sweep.set_defaults(run=run)
    return sweep


def run(args):
    """Run ``fastbp sweep`` with parsed ``args``; returns the exit status."""
    grid = {"learning_rates": args.learning_rates, "seeds": args.seeds,
            "save_best": args.save_best}
    given = {key: value for key, value in vars(args).items()
             if key not in ("run", "command", *grid)}
    opts = {**train_command.TRAIN_DEFAULTS, **given, "seed": DATA_SEED}
    for name in ("features", "outputs"):
        opts[f"_{name}_typed"] = name in given
    train_command._check_options(opts, given)  # train's own checks, usage errors (exit 2)
    if opts["chunk_rows"] is None:
        return _sweep(opts, **grid)
    with config_context(chunk_rows=opts["chunk_rows"]):
        return _sweep(opts, **grid)


def _sweep(opts, learning_rates, seeds, save_best):
    check_distinct_files({f"--{k}": opts.get(k) for k in ("x", "y", "csv")},
                         {"--save-best": save_best, "--plot": opts.get("plot")})
    check_path(save_best, "--save-best", "best.fbp")
    train_command._check_output_paths({"plot": opts["plot"]})
    X, Y, described = train_command._load_data(opts)
    layers = train_command._architecture(opts, X, Y)
    grid = [(lr, seed) for lr in learning_rates for seed in seeds]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the header line says the backend
        networks = [fastbp.Network(layers, activations=train_command._activations(opts),
                                   output_activation=opts["output_activation"],
                                   loss=opts["loss"], dtype=opts["dtype"],
                                   backend=opts["backend"], seed=seed) for _, seed in grid]
    optimizers = [train_command._make_optimizer({**opts, "learning_rate": lr})
                  for lr, _ in grid]
    n_rows = len(X)
    n_val = int(n_rows * opts["validation_split"])
    if n_val >= n_rows:
        raise CommandError(f"--validation-split {opts['validation_split']} leaves no training "
                           f"rows of {n_rows}. Pass more data or a smaller --validation-split.")
    split = opts["validation_split"] if n_val else 0.0
    n_train = n_rows - n_val
    monitor = "val_loss" if n_val else "loss"

    def callbacks(k):
        if opts["patience"] is None:
            return []
        return [fastbp.EarlyStopping(monitor=monitor, patience=opts["patience"],
                                     min_delta=opts["min_delta"], restore_best_weights=True)]

    first = networks[0]
    say(f"fastbp {fastbp.__version__}")
    say(f"data: {described}: {n_train:,} training rows"
        + (f", {n_val:,} held out" if n_val else ", no validation split"))
    say(f"network: {'-'.join(map(str, first.layers))} {first.activations[0]}, {first.loss}, "
        f"{first.dtype.name}, backend {first.backend}")
    say(f"grid: {len(learning_rates)} learning rate(s) x {len(seeds)} seed(s) = "
        f"{len(grid)} networks, {opts['optimizer']}, batch size {opts['batch_size']}, "
        f"{opts['epochs']} epoch(s), {opts['workers']} worker(s)")
    train_command._warm_up(first, optimizers[0], min(opts["batch_size"], max(1, n_train)))
    start = time.perf_counter()
    diverged = set()
    try:
        histories = fastbp.fit_many(
            networks, X, Y, epochs=opts["epochs"], batch_size=opts["batch_size"],
            optimizers=optimizers, shuffle=opts["shuffle"], validation_split=split,
            callbacks=callbacks, verbose=0 if opts["quiet"] else 1, workers=opts["workers"])
    except fastbp.ManyDivergedError as exc:
        histories, diverged = exc.histories, set(exc.diverged)
    seconds = time.perf_counter() - start
    trained = sum(len(h.history.get("loss", [])) for h in histories) * n_train
    if len(diverged) == len(networks):
        raise CommandError("every network diverged (the loss became NaN or infinite). Lower "
                           "the learning rates, scale the inputs and targets, or use --loss "
                           "huber.")
    scores = _scores(networks, X, Y, n_train, n_val, diverged)
    order = sorted(range(len(grid)), key=lambda k: (
        k in diverged, histories[k].history[monitor][-1] if k not in diverged else 0.0))
    _print_table(grid, histories, scores, order, diverged, first.loss, n_val)
    say(f"time: {seconds:.2f} s training ({trained:,} rows over {len(grid)} networks, "
        f"{trained / seconds if seconds > 0 else float('nan'):,.0f} rows/s)")
    best = order[0]
    if save_best is not None:
        lr, seed = grid[best]
        networks[best].metadata = {"sweep": {"learning_rate": lr, "seed": seed}}
        networks[best].save(save_best)
        say(f"saved the best network (learning rate {lr:g}, seed {seed}) to {save_best} "
            "(load it with fastbp.load)")
    if opts["plot"] is not None:
        _plot(grid, histories, opts["plot"], first.loss)
        say(f"plotted the loss curves to {opts['plot']}")
    return 0


def _scores(networks, X, Y, n_train, n_val, diverged):
    """R² (or accuracy) of every network on the held-out rows (the training rows without)."""
    import numpy as np

    start, stop = (n_train, n_train + n_val) if n_val else (0, n_train)
    live = [k for k in range(len(networks)) if k not in diverged]
    classify = networks[0].loss in CATEGORICAL
    scores = {k: RegressionScores() for k in live}
    right = dict.fromkeys(live, 0)
    for xb, yb in row_blocks(X, Y, start, stop, BLOCK_ROWS):
        outputs = fastbp.predict_many([networks[k] for k in live], xb)
        for k, out in zip(live, outputs):
            if classify:
                truth = yb[:, 0] if networks[0].loss in SPARSE_LOSSES else yb.argmax(axis=1)
                right[k] += int((out.argmax(axis=1) == truth).sum())
            else:
                scores[k].add(yb, out.astype(np.float64))
    if classify:
        return {k: right[k] / max(stop - start, 1) for k in live}
    return {k: scores[k].r2() for k in live}


def _print_table(grid, histories, scores, order, diverged, loss_name, n_val):
    metric = "accuracy" if loss_name in CATEGORICAL else "R²"
    where = "held out" if n_val else "train"
    header = (f"{'rank':>4}  {'learning rate':>13}  {'seed':>4}  {'epochs':>6}  {'loss':>10}  "
              f"{'val_loss':>10}  {f'{metric} ({where})':>14}")
    say(header)
    say("-" * len(header))
    for rank, k in enumerate(order, start=1):
        lr, seed = grid[k]
        history = histories[k].history
        epochs = len(history.get("loss", []))
        if k in diverged:
            say(f"{rank:>4}  {lr:>13g}  {seed:>4}  {epochs:>6}  {'diverged':>10}  "
                f"{'-':>10}  {'-':>14}")
            continue
        val = f"{history['val_loss'][-1]:10.4g}" if "val_loss" in history else f"{'-':>10}"
        say(f"{rank:>4}  {lr:>13g}  {seed:>4}  {epochs:>6}  {history['loss'][-1]:10.4g}  "
            f"{val}  {scores[k]:14.4f}")


def _plot(grid, histories, path, loss_name):
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7.2, 4.5))
    rates = sorted({lr for lr, _ in grid})
    colors = plt.get_cmap("viridis")
    positive = True
    for (lr, seed), history in zip(grid, histories):
        losses = history.history.get("loss", [])
        if not losses:
            continue
        color = colors(rates.index(lr) / max(1, len(rates) - 1))
        epochs = range(1, len(losses) + 1)
        label = f"lr {lr:g}" if seed == min(s for r, s in grid if r == lr) else None
        ax.plot(epochs, losses, color=color, alpha=0.8, label=label)
        if "val_loss" in history.history:
            ax.plot(epochs, history.history["val_loss"], color=color, alpha=0.5,
                    linestyle="--")
        positive = positive and all(v > 0 for v in losses)
    if positive:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(loss_name)
    ax.set_title(f"fastbp sweep: {len(grid)} networks (solid: loss, dashed: val_loss)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()  # rendered in memory, then written atomically
    fig.savefig(buffer, format=Path(path).suffix.lower().lstrip("."), dpi=120)
    plt.close(fig)
    _files.atomic_write(path, [buffer.getvalue()], "--plot")

