"""The conventions shared by the three command lines (``edgepkg``, ``edgepkg-server``,
``edge-updater``), in one place so they cannot drift apart:

- ``main(argv=None)`` builds a parser with :class:`CliParser` and hands it to :func:`run_cli`;
- exit status 0 success, 1 error, 2 usage, 130 interrupted (Ctrl-C), 141 stdout closed early
  (e.g. ``| head``: the shell's own number for a process ended by SIGPIPE);
- every error is ONE line on stderr, ``PROG: error: MESSAGE``; the traceback only with ``-v``;
- with ``--json`` an error is one JSON line on stderr instead,
  ``{"error": {"type": "FileNotFoundError", "message": "..."}}``, so stdout only ever holds a
  result a pipeline can parse;
- a closed pipe ends the command quietly (the Python docs' "Note on SIGPIPE");
- warnings go through :mod:`logging` once each, formatted ``PROG: warning: MESSAGE``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn

from edgepkg.errors import Error, UsageError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what `sh` reports for a writer killed by a closed pipe

EPILOG = (
    "exit status: 0 success, 1 error, 2 usage (bad arguments), 130 interrupted, "
    "141 stdout closed early (e.g. | head). Errors are one line on stderr (-v adds the "
    'traceback); with --json an error is one JSON line on stderr: '
    '{"error": {"type": ..., "message": ...}}.'
)


class ArgumentUsageError(UsageError):
    """argparse rejected the command line (raised instead of exiting, so --json applies)."""


class CliParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors go through :func:`run_cli` (exit 2, --json aware)
    and whose help ends with the exit-status epilog."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("epilog", EPILOG)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        raise ArgumentUsageError(f"{message} (see {self.prog} --help)")


ErrorTypes = tuple[type[BaseException], ...]


def run_cli(
    prog: str,
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    dispatch: Callable[[argparse.Namespace], int | None],
    *,
    errors: ErrorTypes = (),
    describe: Callable[[BaseException], str | None] | None = None,
) -> int:
    """Parse ``argv`` and run ``dispatch(args)`` under the conventions above; return the exit
    status (a bad command line and ``--help`` raise :class:`SystemExit` as argparse does).
    ``errors`` are extra deliberate error types (beyond :class:`edgepkg.errors.Error` and
    :class:`OSError`) of the calling package; ``describe`` may word a message for one of them
    (None: the default wording)."""
    handled: ErrorTypes = (Error, OSError, *errors)
    arglist = list(sys.argv[1:] if argv is None else argv)
    # Known before parsing so that even a usage error honours --json and -v.
    want_json = "--json" in arglist
    verbose = "-v" in arglist or "--verbose" in arglist
    try:
        try:
            args = parser.parse_args(arglist)
            want_json = bool(getattr(args, "json", False)) or want_json
            verbose = bool(getattr(args, "verbose", False)) or verbose
            code = int(dispatch(args) or 0)
        except SystemExit:  # --help / --version: flush here, inside the pipe handler
            _flush_stdout()
            raise
        _flush_stdout()
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        _report(prog, "interrupted", "KeyboardInterrupt", want_json, verbose=False)
        return EXIT_INTERRUPTED
    except ArgumentUsageError as exc:
        # Like argparse (callers and tests rely on it), a bad command line ends in SystemExit(2).
        _report(prog, str(exc), "UsageError", want_json, verbose=False)
        raise SystemExit(EXIT_USAGE) from None
    except UsageError as exc:
        _report(prog, str(exc), "UsageError", want_json, verbose=verbose)
        return EXIT_USAGE
    except handled as exc:
        message = describe(exc) if describe else None
        _report(prog, message or _message(exc), type(exc).__name__, want_json, verbose=verbose)
        return EXIT_ERROR
    except Exception as exc:  # a bug: still one line, but say how to see more
        hint = "" if verbose else " (run with -v for the traceback)"
        _report(prog, f"internal error: {type(exc).__name__}: {exc}{hint}",
                type(exc).__name__, want_json, verbose=verbose)
        return EXIT_ERROR


def setup_logging(prog: str, verbose: bool) -> None:
    """Plain stderr logging for a CLI: warnings (or everything with ``-v``), one line each."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_CliFormatter(prog))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)


class _CliFormatter(logging.Formatter):
    def __init__(self, prog: str) -> None:
        super().__init__()
        self._prog = prog

    def format(self, record: logging.LogRecord) -> str:
        text = f"{self._prog}: {record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info and record.exc_info[0] is not None:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        # "No such file or directory: 'model.onnx'" instead of "[Errno 2] ..." + traceback.
        where = f": {exc.filename}" if exc.filename is not None else ""
        extra = f" -> {exc.filename2}" if exc.filename2 is not None else ""
        return f"{exc.strerror}{where}{extra}"
    text = str(exc) or type(exc).__name__
    # One line: a driver (SQL, PKCS#11) may append pages of detail; -v shows them all.
    lines = text.strip().splitlines()
    return lines[0] + (" (more with -v)" if len(lines) > 1 else "") if lines else text


def _report(prog: str, message: str, kind: str, as_json: bool, *, verbose: bool) -> None:
    if verbose:
        traceback.print_exc()
    try:
        if as_json:
            line = json.dumps({"error": {"type": kind, "message": message}})
        else:
            line = f"{prog}: error: {message}"
        print(line, file=sys.stderr, flush=True)
    except (BrokenPipeError, ValueError):  # stderr closed too: nothing left to tell
        pass


def _flush_stdout() -> None:
    # Flush here rather than at interpreter exit, where a closed pipe would only show up as an
    # "Exception ignored" message that run_cli could no longer catch.
    sys.stdout.flush()


def _silence_stdout() -> None:
    # Python docs, "Note on SIGPIPE": point stdout at devnull so the flush at exit cannot fail
    # again. Under a test's captured stdout there is no file descriptor to redirect.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both
        pass
