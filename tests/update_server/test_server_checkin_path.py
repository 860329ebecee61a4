"""The check-in hot path's database writes, on SQLite and PostgreSQL: what it stores, that
racing first check-ins of one device cannot fail on a primary key, and nonce housekeeping."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from edgepkg.protocol import ModelReport, parse_models_report
from update_server.db import Database
from update_server.devices import auth as device_auth
from update_server.devices.api import _sync_device_models
from update_server.devices.auth import DeviceRecord, load_device
from update_server.devices.models import Device, DeviceModel, Nonce

T0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def db(server_db_url: str) -> Iterator[Database]:
    d = Database(server_db_url)
    with d.session() as s:
        s.add(Device(id="d1", public_key_pem="pem", tags=["t"], facts={}, created_at=T0))
    yield d
    d.dispose()


def _models(version: str) -> dict[str, ModelReport]:
    return parse_models_report(
        {"det": {"active_slot": "a", "slots": {"a": {"version": version, "sha256": None}}}}, 8
    )


def test_load_device_returns_key_tags_and_model_rows_in_one_record(db: Database) -> None:
    with db.session() as s:
        s.add(DeviceModel(device_id="d1", model="det", version="1.0.0", active_slot="a"))
    with db.session() as s:
        loaded = load_device(s.connection(), "d1")
        assert load_device(s.connection(), "nope") is None
    assert loaded is not None
    pem, rec = loaded
    assert pem == "pem" and rec.tags == ["t"] and rec.enabled
    assert rec.active_versions() == {"det": "1.0.0"}


def test_first_model_row_is_an_upsert_when_a_racing_checkin_wrote_it_first(db: Database) -> None:
    # This request read the device before the other request committed its first model row.
    stale = DeviceRecord(id="d1", status="enabled", tags=["t"], models={})
    with db.session() as s:
        s.add(DeviceModel(device_id="d1", model="det", version="1.0.0", active_slot="a"))
    with db.session() as s:
        _sync_device_models(s.connection(), stale, _models("1.1.0"), T0)
    with db.session() as s:
        row = s.get(DeviceModel, ("d1", "det"))
        assert row is not None and row.version == "1.1.0"
    assert stale.models == {"det": ("1.1.0", None, "a")}


def test_model_rows_follow_the_checkin_and_vanish_with_the_model(db: Database) -> None:
    rec = DeviceRecord(id="d1", status="enabled", tags=["t"], models={})
    with db.session() as s:
        _sync_device_models(s.connection(), rec, _models("1.0.0"), T0)
        _sync_device_models(s.connection(), rec, _models("1.2.0"), T0)
    with db.session() as s:
        assert s.get(DeviceModel, ("d1", "det")).version == "1.2.0"  # type: ignore[union-attr]
        _sync_device_models(s.connection(), rec, {}, T0)
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(DeviceModel)) == 0


def test_replayed_nonce_is_refused_and_expired_nonces_are_purged_in_bulk(db: Database) -> None:
    device_auth._next_purge[0] = float("inf")  # no housekeeping while we fill the table
    with db.session() as s:
        device_auth._record_nonce(s.connection(), "d1", "a" * 32, T0 - dt.timedelta(hours=1), 300)
        device_auth._record_nonce(s.connection(), "d1", "b" * 32, T0, 300)
        with pytest.raises(device_auth.UnauthorizedError):
            device_auth._record_nonce(s.connection(), "d1", "b" * 32, T0, 300)
    device_auth._next_purge[0] = 0.0
    with db.session() as s:
        device_auth._record_nonce(s.connection(), "d1", "c" * 32, T0, 300)
    with db.session() as s:
        left = set(s.scalars(select(Nonce.nonce)))
    assert left == {"b" * 32, "c" * 32}
