"""Every option of every command of the three CLIs says what it does in ``--help``, and every
``--help`` states the exit-status convention."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator

import pytest

import device_updater.cli
import edgepkg.cli
import update_server.cli

BUILDERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "edgepkg": edgepkg.cli.build_parser,
    "edgepkg-server": update_server.cli.build_parser,
    "edge-updater": device_updater.cli.build_parser,
}


Walked = tuple[str, argparse.ArgumentParser]


def _walk(parser: argparse.ArgumentParser, path: str) -> Iterator[Walked]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{path} {name}")


def _all_parsers() -> list[Walked]:
    return [item for prog, build in BUILDERS.items() for item in _walk(build(), prog)]


def _ids(value: object) -> str:
    return value if isinstance(value, str) else ""


def test_the_walk_reaches_the_nested_commands() -> None:
    paths = {path for path, _ in _all_parsers()}
    assert {"edgepkg verify", "edgepkg repo status", "edgepkg keys create",
            "edgepkg-server create-enrollment", "edge-updater check"} <= paths


@pytest.mark.parametrize(("path", "parser"), _all_parsers(), ids=_ids)
def test_every_option_and_argument_has_help(path: str, parser: argparse.ArgumentParser) -> None:
    missing = [
        "/".join(action.option_strings) or action.dest
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction)
        and action.help != argparse.SUPPRESS
        and not (action.help or "").strip()
    ]
    assert not missing, f"`{path} --help` describes none of: {', '.join(missing)}"


@pytest.mark.parametrize(("path", "parser"), _all_parsers(), ids=_ids)
def test_every_help_documents_the_exit_codes(path: str, parser: argparse.ArgumentParser) -> None:
    text = parser.format_help()
    assert "0 success, 1 error, 2 usage" in text, path
    assert "--json" in text, path
