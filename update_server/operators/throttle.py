"""Login throttling per client address and per username, with exponential lockout.

State lives in the database (:class:`~update_server.operators.models.LoginThrottle`), not in
process memory: every app node behind a load balancer sees the same counters, and the server
needs no Redis for it (Flask-Limiter's shared storages are Redis, Memcached or MongoDB, one
more service to run and secure for a few rows written only on *failed* logins).

Policy: a key may fail ``free`` times; each failure from then on locks it for
``base * 2**(failures - free)`` seconds (capped). A locked key is refused with 429 before any
password is hashed, which also keeps password guessing from eating the scrypt budget the
device API shares. Counters of a key idle for ``window`` seconds start again from zero; a
successful login clears its username's counter (not the address's: one valid account must
not reset a guessing address).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import math
from typing import Literal

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from update_server.errors import TooManyRequestsError
from update_server.operators.models import LoginThrottle


@dataclasses.dataclass(frozen=True)
class ThrottlePolicy:
    user_free_failures: int = 5
    ip_free_failures: int = 20
    lockout_base_s: int = 2
    lockout_max_s: int = 3600
    window_s: int = 900

    def free(self, key: str) -> int:
        return self.user_free_failures if key.startswith("user:") else self.ip_free_failures

    def lockout_s(self, key: str, failures: int) -> int:
        over = failures - self.free(key)
        if over < 0:
            return 0
        return int(min(self.lockout_max_s, self.lockout_base_s * 2 ** min(over, 30)))


def login_keys(address: str | None, username: str | None) -> list[str]:
    """The throttle keys of an attempt: its address, and its username when one is given.

    The username is hashed (case-folded) so the table holds no attacker-chosen text.
    """
    keys = [f"ip:{(address or 'unknown')[:64]}"]
    if username:
        digest = hashlib.sha256(username.casefold().encode("utf-8", "replace")).hexdigest()
        keys.append(f"user:{digest}")
    return keys


def check(db: Session, keys: list[str], now: dt.datetime) -> None:
    """Raise TooManyRequestsError (429, Retry-After) if any key is locked at ``now``."""
    rows = db.scalars(select(LoginThrottle).where(LoginThrottle.key.in_(keys))).all()
    waits = [r.locked_until - now for r in rows if r.locked_until and r.locked_until > now]
    if waits:
        retry = math.ceil(max(waits).total_seconds())
        raise TooManyRequestsError(
            f"too many failed sign-ins: try again in {retry} s",
            retry_after_s=retry,
            code="login_locked",
        )


def record_failure(db: Session, keys: list[str], now: dt.datetime, policy: ThrottlePolicy) -> None:
    """Count one failed attempt on each key (row-locked, so concurrent nodes do not lose one)."""
    dialect: Literal["postgresql", "sqlite"] | str = db.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    for key in keys:
        db.execute(
            insert(LoginThrottle)
            .values(key=key, failures=0, last_failure_at=now, locked_until=None)
            .on_conflict_do_nothing(index_elements=["key"])
        )
        row = db.scalars(
            select(LoginThrottle)
            .where(LoginThrottle.key == key)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).one()
        stale = (now - row.last_failure_at).total_seconds() > policy.window_s and (
            row.locked_until is None or row.locked_until <= now
        )
        row.failures = 1 if stale else row.failures + 1
        row.last_failure_at = now
        lock = policy.lockout_s(key, row.failures)
        row.locked_until = now + dt.timedelta(seconds=lock) if lock else None
    db.flush()


def record_success(db: Session, keys: list[str]) -> None:
    """Clear the username's counter after a good login (the address keeps its count)."""
    user_keys = [k for k in keys if k.startswith("user:")]
    if user_keys:
        db.execute(delete(LoginThrottle).where(LoginThrottle.key.in_(user_keys)))
