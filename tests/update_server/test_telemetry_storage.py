"""Telemetry storage on SQLite and PostgreSQL: idempotent store, hourly cohort rollup
(idempotent, per tag), retention, cohort drift alert from the rollup job."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from tests.update_server._rollout_fixtures import add_device, migrated
from tests.update_server._telemetry_fixtures import T0, report
from update_server.config import load_config
from update_server.db import Database
from update_server.telemetry import service, storage
from update_server.telemetry.models import (
    TelemetryAlert,
    TelemetryInterval,
    TelemetryReport,
    TelemetryRollup,
)

CFG = load_config(env={}, telemetry_raw_retention_days=2, telemetry_rollup_retention_days=30)


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = migrated(db_url)
    with database.session() as s:
        for i in range(4):
            add_device(s, f"dev{i}", tags=("site:a",) if i < 2 else ("site:b",))
    yield database
    database.dispose()


def _fill(db: Database, hours: int = 2, psi_for: dict[str, float] | None = None) -> None:
    with db.session() as s:
        for i in range(4):
            dev = f"dev{i}"
            for k in range(hours * 12):
                rep = report(k + 1, p95=10.0 + i, psi=(psi_for or {}).get(dev, 0.02))
                assert storage.store_report(s, dev, rep, T0)


def test_store_is_idempotent_per_device_and_seq(db: Database) -> None:
    with db.session() as s:
        assert storage.store_report(s, "dev0", report(1), T0)
        assert not storage.store_report(s, "dev0", report(1, p95=99.0), T0)
        assert storage.store_report(s, "dev1", report(1), T0)  # seq is per device
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(TelemetryReport)) == 2
        assert s.scalar(select(func.max(TelemetryInterval.latency_p95_ms))) == 10.0


def test_hourly_rollup_is_per_cohort_and_idempotent(db: Database) -> None:
    _fill(db)
    bucket = T0  # reports of hour T0 end at T0+5min .. T0+55min (and T0+60 in the next hour)
    with db.session() as s:
        first = storage.rollup_hour(s, bucket)
    with db.session() as s:
        again = storage.rollup_hour(s, bucket)
    assert len(first) == len(again) == 3  # tags "*", site:a, site:b
    with db.session() as s:
        rows = {r.tag: r for r in s.scalars(select(TelemetryRollup)
                                            .where(TelemetryRollup.bucket == bucket))}
    assert set(rows) == {"*", "site:a", "site:b"}
    assert (rows["*"].devices, rows["*"].reports) == (4, 4 * 11)
    assert rows["site:a"].p95_mean_ms == pytest.approx(10.5)
    assert rows["*"].inferences == 4 * 11 * 600
    assert rows["*"].latency_hist["counts"] == [440, 22000, 3960, 0]


def test_retention_deletes_raw_rows_after_days_and_rollups_after_months(db: Database) -> None:
    _fill(db, hours=1)
    with db.session() as s:
        storage.rollup_hour(s, T0)
    with db.session() as s:
        assert storage.purge(s, CFG, T0 + dt.timedelta(days=1)) == (0, 0)
    with db.session() as s:
        raw, rolled = storage.purge(s, CFG, T0 + dt.timedelta(days=3))
        assert raw == 4 * 12 and rolled == 0
        assert s.scalar(select(func.count()).select_from(TelemetryInterval)) == 0
        assert (s.scalar(select(func.count()).select_from(TelemetryRollup)) or 0) > 0
    with db.session() as s:
        storage.purge(s, CFG, T0 + dt.timedelta(days=31))
        assert s.scalar(select(func.count()).select_from(TelemetryRollup)) == 0


def test_cohort_drift_opens_after_three_drifting_hours(db: Database) -> None:
    shifted = {"dev0": 0.5, "dev1": 0.6, "dev2": 0.4, "dev3": 0.45}
    _fill(db, hours=4, psi_for=shifted)
    cfg = dataclasses.replace(CFG, telemetry_raw_retention_days=30)
    open_now = []
    for h in range(1, 4):
        out = service.maintain(db, cfg, T0 + dt.timedelta(hours=h, minutes=10))
        service.maintain(db, cfg, T0 + dt.timedelta(hours=h, minutes=20))  # same hour: no-op
        open_now.append(out["cohort_drift"])
    assert open_now == [0, 0, 1], "three drifting hours, each counted once"
    with db.session() as s:
        opened = list(s.scalars(select(TelemetryAlert).where(
            TelemetryAlert.kind == "cohort_drift", TelemetryAlert.is_open)))
    assert sorted(a.subject for a in opened) == ["det@1.0.0#*"]
    assert "mean drift" in opened[0].message
