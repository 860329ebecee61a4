"""The ``edgepkg`` command line: ``main(argv=None)``; exit 0 ok, 1 error, 2 usage.

Each sub-command group lives in its own module exposing ``register(subparsers)``; a registered
parser sets ``func(args) -> int``. Any :class:`edgepkg.errors.Error` becomes a one-line message on
stderr and exit 1 (the traceback only with ``-v``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from edgepkg import __version__
from edgepkg.errors import Error, UsageError

# Sub-command modules, in help order. A module missing from an install is skipped.
_COMMAND_MODULES = (
    "edgepkg.cli._package",
    "edgepkg.cli._grant",
    "edgepkg.cli._keys",
    "edgepkg.cli._repo",
    "edgepkg.cli._demo",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse exits 2 on usage errors: keep that
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="edgepkg",
        description="Package, sign, encrypt and publish edge AI models for over-the-air updates.",
    )
    parser.add_argument("--version", action="version", version=f"edgepkg {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show tracebacks and debug logs"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
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
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"edgepkg: error: {exc}", file=sys.stderr)
        return 2
    except Error as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"edgepkg: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("edgepkg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
