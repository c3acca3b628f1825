"""``fastbp bench``: time the benchmark workloads on every installed backend (``fastbp._bench``)."""

from .. import _bench
from . import train as train_command
from .common import UsageError


def add_parser(commands):
    """Add ``bench`` to the ``commands`` subparsers; returns its parser.

    Its options (workloads from ``_bench.WORKLOADS``, backends from the
    registry) are those of ``python -m fastbp._bench``: ``_bench.add_arguments``.
    """
    names = list(_bench.WORKLOADS)
    bench = commands.add_parser(
        "bench", help=f"benchmark the backends on workloads {names[0]}-{names[-1]}",
        description=_bench.DESCRIPTION)
    _bench.add_arguments(bench)
    bench.set_defaults(run=run)
    return bench


def run(args):
    """Run ``fastbp bench`` with parsed ``args``; returns the exit status."""
    if args.dask and args.workers:
        raise UsageError("pass either --workers (threads in this process) or --dask (Dask "
                         "worker processes), not both.")
    if args.plot and not args.dask:
        raise UsageError("--plot draws the --dask runs: pass --dask N,N too (for threads, "
                         "python benchmarks/workers_loss_curve.py --plot PNG).")
    if args.plot:  # the path, matplotlib and the format: checked before a long benchmark
        train_command._check_output_paths({"plot": args.plot})
    _bench.dispatch(args)
    return 0
