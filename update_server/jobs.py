"""Background jobs made safe with several app nodes: one leader runs each tick.

The server's periodic work (rollout evaluation: advance / pause / abort on soak time and
failure share; alert rules over the fleet) runs in ``edgepkg-server jobs``, which may run on
every app node: the nodes elect one leader and only the leader runs a tick.

Leadership is a lock the database server (or the kernel) releases when the holder dies, so a
crashed leader never blocks the others and nothing has to expire:

- PostgreSQL: a session-level ``pg_try_advisory_lock`` held on one dedicated connection for as
  long as the process leads (the lock dies with the connection);
- SQLite file: ``flock`` on ``<database>.jobs.lock`` next to the database (the nodes share the
  file system anyway, SQLite needs it);
- in-memory SQLite (tests): a process-local lock.

Ticks are wall-clock slots (``floor(now / interval)``): the leader runs each job once per slot.
A node that takes over after the leader died runs the current slot again only if the old leader
died during it, which the jobs tolerate: rollout state changes are compare-and-swap on the
rollout's revision (:func:`update_server.rollouts.service._save_state`), alert rules only read.

Rollouts are also re-evaluated inline by check-ins (throttled per process, same CAS), so a fleet
that keeps checking in advances even where no ``jobs`` process runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from typing import IO, Protocol

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from update_server.db import Database

log = logging.getLogger(__name__)

LOCK_NAMESPACE = "edgepkg-server.jobs"


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for ``name`` (CRC32 of namespace and name, high
    word fixed so it cannot collide with small integer keys other software may use)."""
    crc = zlib.crc32(f"{LOCK_NAMESPACE}:{name}".encode())
    return (0x6564_6765 << 32) | crc  # 'edge' << 32: positive, fits a PostgreSQL bigint


class Leadership(Protocol):
    """A non-blocking leader lock: ``try_acquire`` is True while this node leads."""

    def try_acquire(self) -> bool: ...

    def release(self) -> None: ...


class PgAdvisoryLeadership:
    """Leader while a session advisory lock is held on a dedicated PostgreSQL connection."""

    def __init__(self, engine: Engine, name: str = "leader") -> None:
        self._engine = engine
        self._key = lock_key(name)
        self._conn: Connection | None = None

    def try_acquire(self) -> bool:
        if self._conn is not None:
            try:  # still ours if the connection is alive (the server drops the lock with it)
                self._conn.execute(text("SELECT 1"))
                return True
            except DBAPIError:
                log.warning("jobs: lost the leader connection; trying to lead again")
                self._close()
        conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            got = bool(
                conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self._key}).scalar()
            )
        except BaseException:
            conn.close()
            raise
        if not got:
            conn.close()
            return False
        self._conn = conn
        return True

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(DBAPIError):
                conn.invalidate()  # never hand a connection holding the lock back to the pool
            conn.close()

    def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(DBAPIError):
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
            self._close()


class FileLeadership:
    """Leader while an exclusive ``flock`` on ``path`` is held (released when the process dies)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._f: IO[bytes] | None = None

    def try_acquire(self) -> bool:
        if self._f is not None:
            return True
        f = open(self.path, "ab")  # noqa: SIM115 - held open for as long as this node leads
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return False
        self._f = f
        return True

    def release(self) -> None:
        f, self._f = self._f, None
        if f is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            f.close()


_local_locks: dict[str, threading.Lock] = {}
_local_guard = threading.Lock()


class LocalLeadership:
    """Leader within one process (in-memory SQLite, where there can be no second node)."""

    def __init__(self, name: str) -> None:
        with _local_guard:
            self._lock = _local_locks.setdefault(name, threading.Lock())
        self._held = False

    def try_acquire(self) -> bool:
        if not self._held:
            self._held = self._lock.acquire(blocking=False)
        return self._held

    def release(self) -> None:
        if self._held:
            self._held = False
            self._lock.release()


def leadership_for(engine: Engine, name: str = "leader") -> Leadership:
    """The leader lock that fits the database the nodes share."""
    if engine.dialect.name == "postgresql":
        return PgAdvisoryLeadership(engine, name)
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        return FileLeadership(f"{os.path.abspath(database)}.{name}.jobs.lock")
    return LocalLeadership(f"{engine.url}:{name}")


@dataclasses.dataclass(frozen=True)
class Job:
    """A periodic job: ``run(session, now)`` in one transaction, once per ``interval_s`` slot."""

    name: str
    interval_s: float
    run: Callable[[Session, dt.datetime], object]


def _evaluate_rollouts(session: Session, now: dt.datetime) -> object:
    from update_server.rollouts.service import evaluate_all

    decisions = evaluate_all(session, now)
    for rid, d in decisions.items():
        if d.action != "none":
            log.info("jobs: rollout %s: %s (%s)", rid, d.action, d.reason)
    return decisions


def _alert_rules(poll_interval_s: int) -> Callable[[Session, dt.datetime], object]:
    def run(session: Session, now: dt.datetime) -> object:
        from update_server.alerts.service import fleet_alerts

        alerts = fleet_alerts(session, now, poll_interval_s=poll_interval_s)
        if alerts:
            log.warning("jobs: %d fleet alert(s), first: %s", len(alerts), alerts[0])
        return alerts

    return run


def default_jobs(poll_interval_s: int, *, rollout_every_s: float = 30.0) -> list[Job]:
    """Rollout evaluation and alert rules (alerts every poll interval: a device is silent only
    after whole intervals, so evaluating more often finds nothing new)."""
    return [
        Job("rollouts.evaluate", rollout_every_s, _evaluate_rollouts),
        Job("alerts.evaluate", float(max(poll_interval_s, 30)), _alert_rules(poll_interval_s)),
    ]


class JobRunner:
    """Runs ``jobs`` on this node while it leads. ``tick`` is the whole loop body, so tests and
    the CLI drive the same code."""

    def __init__(
        self,
        db: Database,
        jobs: Sequence[Job],
        *,
        leadership: Leadership | None = None,
        node: str = "",
    ) -> None:
        assert db.engine is not None, "Database not connected"
        self.db = db
        self.jobs = list(jobs)
        self.leadership = leadership or leadership_for(db.engine)
        self.node = node or f"pid{os.getpid()}"
        self._last_slot: dict[str, int] = {}
        self.failed: list[str] = []  # jobs whose last run raised (logged with the traceback)

    def tick(self, now: float) -> list[str]:
        """Run the jobs whose slot has not run here yet, if this node leads; their names."""
        if not self.leadership.try_acquire():
            self._last_slot.clear()  # a follower remembers nothing: on takeover, run now
            return []
        ran = []
        self.failed = []
        when = dt.datetime.fromtimestamp(now, dt.UTC)
        for job in self.jobs:
            slot = int(now // job.interval_s)
            if self._last_slot.get(job.name) == slot:
                continue
            try:
                with self.db.session() as s:
                    job.run(s, when)
            except Exception:  # one failing job must not stop the others or the loop
                log.exception("jobs: %s failed on %s", job.name, self.node)
                self.failed.append(job.name)
            self._last_slot[job.name] = slot
            ran.append(job.name)
        return ran

    def run(
        self,
        stop: threading.Event,
        *,
        poll_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Tick every ``poll_s`` until ``stop`` is set, then give up leadership."""
        try:
            while not stop.is_set():
                try:
                    self.tick(clock())
                except DBAPIError as exc:  # database restarting: keep the loop, retry
                    log.warning("jobs: database error, retrying: %s", exc)
                stop.wait(poll_s)
        finally:
            self.leadership.release()
