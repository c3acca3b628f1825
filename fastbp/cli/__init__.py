"""The ``fastbp`` command line: ``train``, ``sweep``, ``make-data``, ``demo``, ``info``, ``bench``.

One module per command (``train``, ``sweep``, ``make_data``, ``demo``, ``info``,
``bench``), each with ``add_parser(commands)`` and ``run(args)``; ``common``
holds what they share (errors, option types, option names, output).

Exit codes follow the usual conventions: 0 success, 2 a usage error (bad or
inconsistent options, reported by argparse with the usage line), 1 a failure
while running (missing file, bad data, diverged training: one line on stderr
saying what was expected, what was found and how to fix it), 130 interrupted
by Ctrl-C.

``train`` options are stored with the checkpoint it writes, so
``fastbp train --resume CKPT`` continues an interrupted run without repeating
them (see :mod:`fastbp.cli.train`).
"""

import argparse
import sys

from .._version import __version__
from . import bench, demo, info, make_data, sweep, train
from .common import CommandError, UsageError, one_line

__all__ = ["CommandError", "UsageError", "build_parser", "main"]

# command name -> its module
COMMANDS = {"train": train, "sweep": sweep, "make-data": make_data, "demo": demo, "info": info,
            "bench": bench}


def build_parser():
    """The ``fastbp`` argument parser (exposed for documentation and tests).

    ``parser.command_parsers`` maps each command to its own parser, which
    reports that command's usage errors with its usage line.
    """
    parser = argparse.ArgumentParser(
        prog="fastbp", description="Train dense feed-forward networks by backpropagation, fast.",
        epilog="Run `fastbp COMMAND --help` for a command's options.")
    parser.add_argument("--version", action="version", version=f"fastbp {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.command_parsers = {name: module.add_parser(commands)
                              for name, module in COMMANDS.items()}
    return parser


def main(argv=None):
    """Run the ``fastbp`` command line; returns the exit status.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after the program name; ``sys.argv[1:]`` by default.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # exits with status 2 on a usage error
    command = args.command
    if extra:  # as parse_args reports them; bench's with its own usage line, as it always had
        owner = parser.command_parsers[command] if command == "bench" else parser
        owner.error(f"unrecognized arguments: {' '.join(extra)}")
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
        print(f"fastbp {command}: error: {one_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
