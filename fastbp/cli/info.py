"""``fastbp info``: the installed backends and settings (``fastbp.show_config``)."""

from .._info import show_config


def add_parser(commands):
    """Add ``info`` to the ``commands`` subparsers; returns its parser."""
    info = commands.add_parser("info", help="show the installed backends and settings",
                               description="Show fastbp's version, its backends (installed or "
                               "why not) and which one 'auto' picks.")
    info.set_defaults(run=run)
    return info


def run(args):
    """Run ``fastbp info``; returns the exit status."""
    show_config()
    return 0
