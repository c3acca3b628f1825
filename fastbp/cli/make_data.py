"""``fastbp make-data``: write a synthetic regression set as X.npy and y.npy."""

import time

from ..datasets import human_size, write_regression
from .common import DTYPES, non_negative_float, non_negative_int, positive_int, say


def add_parser(commands):
    """Add ``make-data`` to the ``commands`` subparsers; returns its parser."""
    make = commands.add_parser(
        "make-data", help="write a synthetic regression set as X.npy and y.npy",
        description="Write fastbp.datasets.make_regression's rows to DIR/X.npy and DIR/y.npy "
        "block by block: any size, in little memory. The same seed gives the same rows as "
        "make_regression and as `fastbp train --synthetic`.")
    make.add_argument("--samples", type=positive_int, required=True, metavar="N",
                      help="rows to write (e.g. 100_000_000: an 8 GB X.npy in float32)")
    make.add_argument("--features", type=positive_int, default=20, help="(default 20)")
    make.add_argument("--outputs", type=positive_int, default=1, help="(default 1)")
    make.add_argument("--noise", type=non_negative_float, default=0.1, help="(default 0.1)")
    make.add_argument("--seed", type=non_negative_int, default=0, help="(default 0)")
    make.add_argument("--dtype", choices=DTYPES[::-1], default="float32",
                      help="(default float32)")
    make.add_argument("--out", required=True, metavar="DIR", help="directory to write into")
    make.add_argument("--force", action="store_true", help="overwrite existing X.npy, y.npy and meta.json")
    make.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    make.set_defaults(run=run)
    return make


def run(args):
    """Run ``fastbp make-data`` with parsed ``args``; returns the exit status."""
    start = time.perf_counter()
    x_path, y_path = write_regression(
        args.out, args.samples, args.features, args.outputs, noise=args.noise, seed=args.seed,
        dtype=args.dtype, overwrite=args.force, progress=not args.quiet)
    seconds = time.perf_counter() - start
    size = x_path.stat().st_size + y_path.stat().st_size
    say(f"wrote {args.samples:,} rows x {args.features} features, {args.outputs} output(s), "
        f"{args.dtype}: {x_path} and {y_path} ({human_size(size)}) in {seconds:.1f} s")
    say(f"train on it out of core: fastbp train --x {x_path} --y {y_path}")
    return 0

