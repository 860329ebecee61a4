"""TUF conformance client-under-test CLI (the tuf-conformance project's interface).

Uses the daemon's own TUF code (:class:`~device_updater.tuf_client.TufSession` around
python-tuf's ``ngclient.Updater``) and fetcher (:class:`~device_updater.tuf_client.DeviceFetcher`),
without device signing since a conformance repository knows no device::

    edge-updater-tuf-conformance --metadata-dir DIR init TRUSTED_ROOT
    edge-updater-tuf-conformance --metadata-dir DIR --metadata-url URL refresh
    edge-updater-tuf-conformance --metadata-dir DIR --metadata-url URL \\
        --target-name PATH [--target-name PATH ...] --target-base-url URL --target-dir DIR download

Exit 0 on full success, 1 on any failure, 2 on a usage error. Trusted metadata is kept in DIR
under unversioned names (``root.json``, ``timestamp.json``, ...); a target path always maps to the
same file name in the target dir (URL-quoted path) and a cached target whose hashes match is
not downloaded again.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from device_updater.tuf_client import (
    MAX_ROOT_BYTES,
    DeviceFetcher,
    TufError,
    TufSession,
    check_root_bytes,
)
from edgepkg._atomic import atomic_write_bytes
from edgepkg.errors import Error


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="edge-updater-tuf-conformance",
                description="TUF conformance client-under-test using the edge-updater TUF client")
    p.add_argument("--metadata-dir", required=True, help="directory of trusted metadata")
    p.add_argument("--metadata-url", help="base URL of the repository metadata")
    p.add_argument("--target-name", action="append", default=[], help="target path to download")
    p.add_argument("--target-base-url", help="base URL of the repository targets")
    p.add_argument("--target-dir", help="directory to download targets into")
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    init = sub.add_parser("init", help="store the trusted root (no network)")
    init.add_argument("trusted_root", metavar="TRUSTED_ROOT")
    sub.add_parser("refresh", help="refresh top-level metadata")
    sub.add_parser("download", help="refresh, then download each --target-name in order")
    return p


def _init(metadata_dir: Path, trusted_root: str) -> None:
    try:
        with open(trusted_root, "rb") as fh:
            data = fh.read(MAX_ROOT_BYTES + 1)
    except OSError as exc:
        raise TufError(f"cannot read {trusted_root}: {exc}") from exc
    check_root_bytes(data)
    metadata_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(metadata_dir / "root.json", data)


def _session(metadata_dir: Path, metadata_url: str, target_dir: str | None,
             target_base_url: str | None) -> TufSession:
    try:
        with open(metadata_dir / "root.json", "rb") as fh:
            root = fh.read(MAX_ROOT_BYTES + 1)
    except OSError as exc:
        raise TufError(f"no trusted root in {metadata_dir} (run init first): {exc}") from exc
    # no resume here: the conformance harness inspects the target dir, keep it to targets only
    fetcher = DeviceFetcher()
    return TufSession(
        metadata_dir, metadata_url, target_base_url or metadata_url,
        bootstrap_root=root, fetcher=fetcher,
        target_dir=target_dir or tempfile.mkdtemp(prefix="tuf-conformance-"),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    metadata_dir = Path(args.metadata_dir)
    try:
        if args.command == "init":
            _init(metadata_dir, args.trusted_root)
            return 0
        if not args.metadata_url:
            parser.error(f"{args.command} needs --metadata-url")
        if args.command == "refresh":
            _session(metadata_dir, args.metadata_url, None, None).refresh()
            return 0
        if not (args.target_name and args.target_base_url and args.target_dir):
            parser.error("download needs --target-name, --target-base-url and --target-dir")
        os.makedirs(args.target_dir, exist_ok=True)
        session = _session(metadata_dir, args.metadata_url, args.target_dir, args.target_base_url)
        session.refresh()
        for name in args.target_name:
            session.fetch(session.target_info(name))
        return 0
    except Error as exc:
        if args.verbose:
            import traceback

            traceback.print_exc()
        print(f"edge-updater-tuf-conformance: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
