"""Append, query, verify and export the audit log (see the package docstring for the contract).

Hash chain: ``hash = sha256(prev_hash || canonical JSON of the entry)``, where the canonical
JSON is the entry's fields except the two hashes (sorted keys, no spaces, UTF-8). Changing,
removing or reordering any committed entry breaks every hash after it.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import Select, select, update
from sqlalchemy.orm import Session

from update_server.audit.models import GENESIS_HASH, AuditEntry, AuditHead
from update_server.db import utcnow
from update_server.errors import BadRequestError

HEAD_ID = 1
MAX_DETAILS_BYTES = 8192
EXPORT_FIELDS = (
    "seq", "at", "actor", "actor_kind", "action", "target", "details", "remote_addr",
    "prev_hash", "hash",
)


def _actor_fields(actor: Any) -> tuple[str, str]:
    if actor is None:
        return "anonymous", "anonymous"
    if isinstance(actor, str):
        return actor, "cli" if actor == "cli" else "system"
    return str(actor.name), str(actor.kind)


def entry_dict(e: AuditEntry) -> dict[str, Any]:
    """The entry as JSON values (the export and API shape)."""
    return {
        "seq": e.seq,
        "at": e.at.isoformat(),
        "actor": e.actor,
        "actor_kind": e.actor_kind,
        "action": e.action,
        "target": e.target,
        "details": e.details or {},
        "remote_addr": e.remote_addr,
        "prev_hash": e.prev_hash,
        "hash": e.hash,
    }


def canonical(e: AuditEntry) -> bytes:
    body = entry_dict(e)
    del body["prev_hash"], body["hash"]
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chain_hash(prev_hash: str, e: AuditEntry) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + canonical(e)).hexdigest()


def _lock_head(session: Session) -> AuditHead:
    """Take the chain's lock and return its head (created on a database that lacks it).

    PostgreSQL: ``SELECT ... FOR UPDATE`` on the head row, held to commit. SQLite has one
    writer: the no-op UPDATE takes the write lock first (waiting up to busy_timeout), so the
    head read after it cannot be stale."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(update(AuditHead).where(AuditHead.id == HEAD_ID).values(seq=AuditHead.seq))
    head = session.scalar(
        select(AuditHead).where(AuditHead.id == HEAD_ID).with_for_update().execution_options(
            populate_existing=True
        )
    )
    if head is None:
        head = AuditHead(id=HEAD_ID, seq=0, hash=GENESIS_HASH)
        session.add(head)
        session.flush()
    return head


def record(
    session: Session,
    actor: Any,
    action: str,
    target: str | None = None,
    details: dict[str, Any] | None = None,
    remote_addr: str | None = None,
    *,
    now: dt.datetime | None = None,
) -> AuditEntry:
    """Append one entry in the caller's transaction (the caller commits, so the action and its
    audit entry land together or not at all). ``actor``: an Operator, a name, or None."""
    name, kind = _actor_fields(actor)
    details = dict(details or {})
    if len(json.dumps(details, default=str)) > MAX_DETAILS_BYTES:
        details = {"truncated": True}
    # JSON round trip: what we hash is exactly what the database gives back later.
    details = json.loads(json.dumps(details, default=str))
    head = _lock_head(session)
    at = (now or utcnow()).astimezone(dt.UTC)
    entry = AuditEntry(
        seq=head.seq + 1,
        at=at,
        actor=name[:120],
        actor_kind=kind[:16],
        action=action[:64],
        target=target[:200] if target is not None else None,
        details=details,
        remote_addr=remote_addr[:64] if remote_addr else None,
        prev_hash=head.hash,
        hash="",
    )
    entry.hash = chain_hash(head.hash, entry)
    session.add(entry)
    head.seq, head.hash = entry.seq, entry.hash
    session.flush()
    return entry


# --- reading ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Filters:
    actor: str | None = None
    action: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None


def _filtered(f: Filters) -> Select[Any]:
    q = select(AuditEntry)
    if f.actor:
        q = q.where(AuditEntry.actor == f.actor)
    if f.action:
        # "rollout." matches every rollout action; a full name matches itself.
        q = q.where(AuditEntry.action.startswith(f.action) if f.action.endswith(".")
                    else AuditEntry.action == f.action)
    if f.since is not None:
        q = q.where(AuditEntry.at >= f.since)
    if f.until is not None:
        q = q.where(AuditEntry.at < f.until)
    return q


def query(session: Session, f: Filters, *, limit: int = 100, offset: int = 0) -> list[AuditEntry]:
    """Newest first."""
    q = _filtered(f).order_by(AuditEntry.seq.desc()).limit(limit).offset(offset)
    return list(session.scalars(q))


def iter_entries(
    session: Session, f: Filters = Filters(), batch: int = 1000
) -> Iterator[AuditEntry]:
    """Oldest first, in batches (the log may be large)."""
    last = 0
    while True:
        rows = list(session.scalars(
            _filtered(f).where(AuditEntry.seq > last).order_by(AuditEntry.seq).limit(batch)
        ))
        yield from rows
        if len(rows) < batch:
            return
        last = rows[-1].seq


class ChainBroken(Exception):
    """``audit verify`` found a tampered, missing or reordered entry."""

    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(f"audit log entry {seq}: {reason}")
        self.seq = seq
        self.reason = reason


def verify(session: Session) -> int:
    """Walk the whole chain; return the number of entries or raise :class:`ChainBroken` naming
    the first entry that does not check out."""
    prev, expected_seq, n = GENESIS_HASH, 1, 0
    for e in iter_entries(session):
        if e.seq != expected_seq:
            raise ChainBroken(expected_seq, f"missing (the next entry is {e.seq})")
        if e.prev_hash != prev:
            raise ChainBroken(e.seq, "prev_hash does not match the previous entry's hash")
        if chain_hash(prev, e) != e.hash:
            raise ChainBroken(e.seq, "contents changed after it was written (hash mismatch)")
        prev, expected_seq, n = e.hash, expected_seq + 1, n + 1
    head = session.get(AuditHead, HEAD_ID)
    if head is not None and (head.seq, head.hash) != (n, prev):
        raise ChainBroken(n + 1 if head.seq > n else head.seq,
                          f"the head says {head.seq} entries ending in {head.hash[:12]}…, "
                          f"the log has {n}: entries at the end were removed")
    return n


# --- export ----------------------------------------------------------------------------------

EXPORT_FORMATS = ("jsonl", "csv")


def export_lines(entries: Iterable[AuditEntry], fmt: str) -> Iterator[str]:
    """JSON Lines (one entry per line, hashes included so a copy can be verified) or CSV."""
    if fmt not in EXPORT_FORMATS:
        raise BadRequestError(f"format must be one of {', '.join(EXPORT_FORMATS)}")
    if fmt == "jsonl":
        for e in entries:
            yield json.dumps(entry_dict(e), sort_keys=True, ensure_ascii=False) + "\n"
        return
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(EXPORT_FIELDS)
    for e in entries:
        d = entry_dict(e)
        d["details"] = json.dumps(d["details"], sort_keys=True, ensure_ascii=False)
        # A spreadsheet runs a cell starting with = + - @ as a formula: quote it as text.
        w.writerow([_csv_safe(d[k]) for k in EXPORT_FIELDS])
        yield buf.getvalue()
        buf.seek(0)
        buf.truncate()
    if buf.getvalue():
        yield buf.getvalue()


def _csv_safe(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
