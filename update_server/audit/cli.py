"""``edgepkg-server audit verify`` and ``edgepkg-server audit export`` (wired in by
:mod:`update_server.cli`)::

    edgepkg-server audit verify            # exit 1 naming the first broken entry
    edgepkg-server audit export --format jsonl|csv [--since ISO|7d] [--output FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from update_server.audit import service as audit
from update_server.config import ServerConfig
from update_server.db import Database, utcnow
from update_server.errors import Error

_DURATION = re.compile(r"^\d+[smhdw]$")
LoadConfig = Callable[[argparse.Namespace], ServerConfig]
Emit = Callable[[argparse.Namespace, Mapping[str, object], str], None]


class AuditChainError(Error):
    """``audit verify`` found a broken chain (exit status 1)."""

    code = "audit_chain_broken"


def register(sub: Any, load: LoadConfig, emit: Emit, parse_when: Callable[[str], Any]) -> None:
    p = sub.add_parser("audit", help="verify or export the audit log")
    asub = p.add_subparsers(dest="audit_command", required=True, parser_class=type(p))

    def verify(args: argparse.Namespace) -> int:
        db = Database(load(args).database_url)
        try:
            with db.session() as s:
                try:
                    n = audit.verify(s)
                except audit.ChainBroken as exc:
                    raise AuditChainError(
                        f"{exc} — the log was changed outside the server; compare with an "
                        "earlier export to see what") from None
        finally:
            db.dispose()
        emit(args, {"ok": True, "entries": n}, f"audit log OK: {n} entries, chain intact")
        return 0

    def export(args: argparse.Namespace) -> int:
        since = parse_when(args.since) if args.since else None
        db = Database(load(args).database_url)
        try:
            with contextlib.ExitStack() as stack:
                out: TextIO = sys.stdout
                if args.output:
                    out = stack.enter_context(
                        open(args.output, "w", encoding="utf-8", newline="")
                    )
                s = stack.enter_context(db.session())
                for chunk in audit.export_lines(
                    audit.iter_entries(s, audit.Filters(since=since)), args.format
                ):
                    out.write(chunk)
        finally:
            db.dispose()
        return 0

    s = asub.add_parser("verify", help="walk the hash chain; exit 1 naming the first broken entry")
    s.set_defaults(func=verify)
    s = asub.add_parser("export", help="write the log (oldest first) as JSON Lines or CSV")
    s.add_argument("--format", choices=audit.EXPORT_FORMATS, default="jsonl",
                   help="jsonl (default: one JSON object a line) or csv")
    s.add_argument("--since", help="only entries from this time (ISO) or this long ago (7d)")
    s.add_argument("--output", help="file to write (default: standard output)")
    s.set_defaults(func=export)


def since_parser(parse_expiry: Callable[[str, Any], Any]) -> Callable[[str], Any]:
    """``7d`` means seven days *ago* here (``parse_expiry`` counts forward)."""

    def parse(text: str) -> Any:
        now = utcnow()
        t = parse_expiry(text, now)
        return now - (t - now) if _DURATION.match(text.strip()) else t

    return parse
