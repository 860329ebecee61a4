"""Database plumbing: declarative ``Base``, engine creation, per-request sessions.

SQLite (WAL) by default, PostgreSQL by URL (``postgresql+psycopg://...``). Every model of the
server (``models.py``, the rollout tables) derives from :class:`Base` so Alembic sees one
metadata. In a request, use :func:`get_session`; it is closed at the end of the request
(rolled back if not committed). Outside a request (CLI, tests) use ``Database.session()``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from flask import Flask, current_app, g
from sqlalchemy import JSON, DateTime, Engine, MetaData, create_engine, event
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive UTC)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    """Declarative base of every server table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dt.datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[str]: JSON(),
    }


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def init_engine(
    url: str, *, echo: bool = False, pool_size: int = 5, pool_pre_ping: bool = False
) -> Engine:
    """Create an engine for ``url`` with the settings this server relies on.

    PostgreSQL: a pool of ``pool_size`` (+ as many overflow) connections per process, recycled
    after 30 min. ``pool_pre_ping`` costs one extra round trip per request (a ``SELECT 1`` on
    every checkout), so it is off by default: after a database restart SQLAlchemy sees the
    disconnect on the first failing statement and invalidates the whole pool, so each worker
    fails at most one request (devices retry) instead of every request paying a ping.
    """
    kwargs: dict[str, Any] = {"echo": echo, "future": True}
    if url.startswith("sqlite"):
        if url in ("sqlite://", "sqlite:///:memory:"):
            kwargs["poolclass"] = StaticPool
            kwargs["connect_args"] = {"check_same_thread": False}
        else:
            # A pool (not NullPool): closing the last connection of a WAL database checkpoints.
            kwargs["pool_size"] = pool_size
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 10}
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs["pool_size"] = pool_size
    kwargs["max_overflow"] = pool_size
    kwargs["pool_pre_ping"] = pool_pre_ping
    kwargs["pool_recycle"] = 1800
    return create_engine(url, **kwargs)


class Database:
    """Engine + session factory; a Flask extension (``init_app``) that is also usable alone."""

    def __init__(
        self, url: str | None = None, *, pool_size: int = 5, pool_pre_ping: bool = False
    ) -> None:
        self.engine: Engine | None = None
        self.session_factory: sessionmaker[Session] | None = None
        self._pool_size = pool_size
        self._pool_pre_ping = pool_pre_ping
        if url is not None:
            self.connect(url)

    def connect(self, url: str) -> None:
        self.engine = init_engine(url, pool_size=self._pool_size, pool_pre_ping=self._pool_pre_ping)
        self.session_factory = sessionmaker(bind=self.engine, expire_on_commit=False)

    def init_app(self, app: Flask) -> None:
        if self.engine is None:
            self.connect(app.config["EDGEPKG"].database_url)
        app.extensions["edgepkg_db"] = self
        app.teardown_appcontext(_close_request_session)

    def new_session(self) -> Session:
        assert self.session_factory is not None, "Database not connected"
        return self.session_factory()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success, rolled back on error, always closed."""
        s = self.new_session()
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise
        finally:
            s.close()

    def dispose(self) -> None:
        if self.engine is not None:
            self.engine.dispose()


def get_db(app: Flask | None = None) -> Database:
    db = (app or current_app).extensions["edgepkg_db"]
    assert isinstance(db, Database)
    return db


def get_session() -> Session:
    """The session of the current request (created on first use, closed at teardown)."""
    s = g.get("_edgepkg_session")
    if s is None:
        s = get_db().new_session()
        g._edgepkg_session = s
    assert isinstance(s, Session)
    return s


def _close_request_session(_exc: BaseException | None) -> None:
    s = g.pop("_edgepkg_session", None)
    if s is not None:
        try:
            s.rollback()
        finally:
            s.close()


def flush_pending(session: Session) -> None:
    """Core statements do not autoflush: flush ORM changes a caller made first (cheap no-op on
    the check-in path, whose session holds no ORM objects)."""
    if session.new or session.dirty or session.deleted:
        session.flush()
