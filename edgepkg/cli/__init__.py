"""The ``edgepkg`` command line: ``main(argv=None)``; exit 0 ok, 1 error, 2 usage.

Each sub-command group lives in its own module exposing ``register(subparsers)``; a registered
parser sets ``func(args) -> int``. Errors, ``--json`` errors, closed pipes and exit codes follow
the conventions of :mod:`edgepkg._cli_support`, shared with the other two CLIs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from edgepkg import __version__
from edgepkg._cli_support import CliParser, run_cli, setup_logging

# Sub-command modules, in help order. A module missing from an install is skipped.
_COMMAND_MODULES = (
    "edgepkg.cli._package",
    "edgepkg.cli._grant",
    "edgepkg.cli._offline",
    "edgepkg.cli._keys",
    "edgepkg.cli._repo",
    "edgepkg.cli._demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(
        prog="edgepkg",
        description="Package, sign, encrypt and publish edge AI models for over-the-air updates.",
    )
    parser.add_argument("--version", action="version", version=f"edgepkg {__version__}",
                        help="print the version and exit")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CliParser)
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()

    def dispatch(args: argparse.Namespace) -> int:
        setup_logging("edgepkg", args.verbose)
        if not getattr(args, "func", None):
            parser.print_help(sys.stderr)
            return 2
        return int(args.func(args) or 0)

    return run_cli("edgepkg", parser, argv, dispatch)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
