"""Audit log: hash chain, append-only triggers, concurrent appends, verify/export (service+CLI)."""

from __future__ import annotations

import csv
import io
import itertools
import json
import threading
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from update_server import schema
from update_server.audit import service as audit
from update_server.audit.models import AuditEntry
from update_server.cli import main
from update_server.db import Database


def _db(url: str) -> Database:
    schema.upgrade(url)
    return Database(url)


def _fill(db: Database, n: int) -> None:
    with db.session() as s:
        for i in range(n):
            audit.record(s, "alice", "rollout.create", f"ro-{i}", {"i": i, "ü": "x"}, "10.0.0.1")


def test_entries_chain_and_verify(server_db_url: str) -> None:
    db = _db(server_db_url)
    _fill(db, 5)
    with db.session() as s:
        assert audit.verify(s) == 5
        rows = list(audit.iter_entries(s))
        assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
        assert rows[0].prev_hash == "0" * 64
        assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(rows))
        assert rows[2].actor == "alice" and rows[2].remote_addr == "10.0.0.1"
    db.dispose()


def test_database_refuses_update_and_delete(server_db_url: str) -> None:
    db = _db(server_db_url)
    _fill(db, 2)
    for stmt in ("UPDATE audit_log SET actor = 'mallory' WHERE seq = 1",
                 "DELETE FROM audit_log WHERE seq = 2"):
        with pytest.raises(DBAPIError, match="append-only"), db.session() as s:
            s.execute(text(stmt))
    with db.session() as s:
        assert audit.verify(s) == 2
    db.dispose()


def _tamper_sqlite(path: Path, stmt: str) -> None:
    """What an attacker with file access does: drop the trigger, edit, (not) restore it."""
    import sqlite3

    con = sqlite3.connect(path)
    con.execute("DROP TRIGGER audit_log_no_update")
    con.execute("DROP TRIGGER audit_log_no_delete")
    con.execute(stmt)
    con.commit()
    con.close()


@pytest.mark.parametrize(
    ("stmt", "broken", "why"),
    [
        ("UPDATE audit_log SET details = '{\"i\": 99}' WHERE seq = 3", 3, "hash mismatch"),
        ("DELETE FROM audit_log WHERE seq = 2", 2, "missing"),
        ("DELETE FROM audit_log WHERE seq = 4", 4, "removed"),
    ],
)
def test_verify_names_the_first_broken_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], stmt: str, broken: int, why: str
) -> None:
    path = tmp_path / "a.db"
    url = f"sqlite:///{path}"
    db = _db(url)
    _fill(db, 4)
    db.dispose()
    assert main(["--database-url", url, "audit", "verify"]) == 0
    assert "4 entries" in capsys.readouterr().out
    _tamper_sqlite(path, stmt)
    assert main(["--database-url", url, "audit", "verify"]) == 1
    err = capsys.readouterr().err
    assert f"entry {broken}" in err and why in err


def test_two_threads_appending_keep_one_chain(server_db_url: str) -> None:
    db = _db(server_db_url)
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            for i in range(15):
                with db.session() as s:
                    audit.record(s, name, "token.create", f"{name}-{i}", {})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with db.session() as s:
        assert audit.verify(s) == 30
        assert {e.actor for e in audit.iter_entries(s)} == {"a", "b"}
    db.dispose()


def test_export_jsonl_and_csv_with_since(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'e.db'}"
    db = _db(url)
    with db.session() as s:
        audit.record(s, "bob", "user.create", "=cmd|calc", {"role": "admin"}, None)
    db.dispose()
    assert main(["--database-url", url, "audit", "export", "--format", "jsonl"]) == 0
    lines = capsys.readouterr().out.splitlines()
    first = json.loads(lines[0])
    assert first["actor"] == "bob" and first["details"] == {"role": "admin"} and first["hash"]
    out = tmp_path / "a.csv"
    assert main(["--database-url", url, "audit", "export", "--format", "csv",
                 "--output", str(out)]) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert rows[0]["action"] == "user.create"
    assert rows[0]["target"] == "'=cmd|calc"  # no formula injection into a spreadsheet
    assert main(["--database-url", url, "audit", "export", "--since", "2099-01-01"]) == 0
    assert capsys.readouterr().out == ""


def test_details_are_hashed_as_stored(server_db_url: str) -> None:
    db = _db(server_db_url)
    with db.session() as s:
        e = audit.record(s, None, "login.failed", "x" * 500, {"n": 1.5, "t": (1, 2)}, "::1")
        assert e.target is not None and len(e.target) == 200 and e.actor_kind == "anonymous"
    with db.session() as s:
        assert audit.verify(s) == 1
        assert s.get(AuditEntry, 1).details == {"n": 1.5, "t": [1, 2]}  # type: ignore[union-attr]
    db.dispose()
