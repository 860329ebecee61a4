"""Shared helpers for the rollout, alert and dashboard tests (a migrated DB, devices, releases,
an app with operator tokens). Real database (SQLite or PostgreSQL via ``db_url``), real app."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from tests.update_server._factory import build_app
from update_server import schema
from update_server.db import Database
from update_server.devices.models import Device, DeviceModel
from update_server.tuf.releases import ReleaseTarget

T0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)


def full(name: str, version: str) -> ReleaseTarget:
    return ReleaseTarget(
        name,
        version,
        "full",
        f"models/{name}/{version}/{name}-{version}.edgepkg",
        1000,
        "ab" * 32,
        None,
        {},
    )


def delta(name: str, version: str, base: str) -> ReleaseTarget:
    return ReleaseTarget(
        name,
        version,
        "delta",
        f"models/{name}/{version}/delta-from-{base}.edgepkg",
        100,
        "cd" * 32,
        base,
        {},
    )


RELEASES: list[ReleaseTarget] = [
    full("det", "1.0.0"),
    full("det", "1.1.0"),
    delta("det", "1.1.0", "1.0.0"),
    full("det", "1.2.0"),
]


def migrated(url: str) -> Database:
    schema.upgrade(url)
    return Database(url)


def add_device(
    s: Session,
    device_id: str,
    *,
    tags: Sequence[str] = ("site:a",),
    version: str | None = "1.0.0",
    model: str = "det",
    last_seen: dt.datetime | None = T0,
    health: dict[str, Any] | None = None,
    created_at: dt.datetime = T0 - dt.timedelta(days=1),
) -> Device:
    d = Device(
        id=device_id,
        public_key_pem="-----BEGIN PUBLIC KEY-----\ntest\n-----END PUBLIC KEY-----\n",
        tags=list(tags),
        facts={},
        status="enabled",
        created_at=created_at,
        last_seen=last_seen,
        last_checkin={"health": health} if health is not None else None,
    )
    s.add(d)
    if version is not None:
        s.add(
            DeviceModel(
                device_id=device_id, model=model, version=version, active_slot="a", updated_at=T0
            )
        )
    s.flush()
    return d


def set_version(s: Session, device: Device, version: str, model: str = "det") -> None:
    row = s.get(DeviceModel, (device.id, model))
    assert row is not None
    row.version = version
    s.flush()
    s.refresh(device)


def dev_ids(n: int, prefix: str = "dev") -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(n)]


class Clock:
    def __init__(self, now: dt.datetime = T0) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now = self.now + dt.timedelta(**kw)


def make_app(url: str, tmp_path: Path, clock: Callable[[], dt.datetime], **cfg: Any) -> Any:
    """The real app (H5's factory) on ``url`` with a repo dir whose releases are RELEASES."""
    repo = tmp_path / "repo"
    (repo / "metadata").mkdir(parents=True, exist_ok=True)
    (repo / "metadata" / "timestamp.json").write_text("{}")
    return build_app(
        url,
        clock=clock,
        release_reader=lambda _d: list(RELEASES),
        repo_dir=str(repo),
        testing=True,
        poll_interval=60,
        **cfg,
    )
