"""Field telemetry on the server: DB growth per 10k devices per day, and CPU per report.

1. Growth: insert a simulated day of reports (one model, latency histogram, 10 classes,
   confidence, 4 input features with 10-bin histograms, drift scores, hardware) for N devices
   at the given interval through the real storage code, run the hourly rollup for the day,
   and measure the bytes the telemetry tables take (SQLite: file size after VACUUM;
   PostgreSQL: pg_total_relation_size of each table, indexes and TOAST included, after
   VACUUM). Extrapolated linearly to 10k devices (rows per device-day are constant).
2. CPU per report: POST reports to the real app in-process (signature check, nonce, quota,
   parse, store, alert rules) on SQLite and time them (wall and process CPU).

    .venv/bin/python bench/telemetry_db.py --devices 200 --reports 500
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import text

from edgepkg.protocol import (
    FeatureSummary,
    HardwareHealth,
    Histogram,
    ModelTelemetry,
    Moments,
    TelemetryReport,
)
from update_server.db import Base, Database
from update_server.devices.models import Device
from update_server.schema import target_metadata
from update_server.telemetry import storage

T0 = dt.datetime(2026, 3, 2, tzinfo=dt.UTC)
TABLES = ("telemetry_reports", "telemetry_intervals", "telemetry_rollups")


def make_report(seq: int, end: dt.datetime, rng: random.Random) -> TelemetryReport:
    edges = tuple(float(x) for x in range(1, 11))
    feats = tuple(
        FeatureSummary(f"f{i}", Moments(600, rng.random(), 0.1, 0.0, 1.0),
                       Histogram(edges, tuple(rng.randrange(100) for _ in range(11))))
        for i in range(4)
    )
    m = ModelTelemetry(
        version="1.0.0", inferences=600, errors=rng.randrange(3),
        latency_ms=Histogram((0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000,
                              2000, 5000),
                             tuple(rng.randrange(60) for _ in range(17))),
        latency_p50_ms=8 * rng.uniform(0.9, 1.1), latency_p95_ms=12 * rng.uniform(0.9, 1.1),
        class_counts=tuple(rng.randrange(100) for _ in range(10)),
        confidence=Moments(600, 0.9, 0.05, 0.3, 1.0), features=feats,
        feedback_labelled=5, feedback_correct=4,
        drift={"psi": rng.uniform(0, 0.1), "js": rng.uniform(0, 0.05)},
    )
    return TelemetryReport(seq, end - dt.timedelta(minutes=5), end, {"det": m},
                           HardwareHealth(55.0, 50.0, 1e9, 4e9, 5e9, 16e9, 0.4, 1e5))


def fill(db: Database, devices: int, interval_s: int) -> float:
    rng = random.Random(1)
    per_day = 86400 // interval_s
    with db.session() as s:
        for i in range(devices):
            s.add(Device(id=f"{i:064x}", public_key_pem="x", tags=["site:a", f"g:{i % 4}"],
                         facts={}, created_at=T0))
    t = time.perf_counter()
    for i in range(devices):
        with db.session() as s:
            for k in range(per_day):
                end = T0 + dt.timedelta(seconds=interval_s * (k + 1))
                storage.store_report(s, f"{i:064x}", make_report(k, end, rng), T0)
    with db.session() as s:
        for h in range(24):
            storage.rollup_hour(s, T0 + dt.timedelta(hours=h))
    return time.perf_counter() - t


def sqlite_bytes(path: Path, db: Database) -> dict[str, int]:
    db.dispose()
    import sqlite3

    con = sqlite3.connect(path)
    con.execute("VACUUM")
    out = {}
    try:
        for t in TABLES:  # dbstat is compiled into most SQLite builds; else the whole file
            row = con.execute("SELECT SUM(pgsize) FROM dbstat WHERE name = ? OR name IN "
                              "(SELECT name FROM sqlite_master WHERE tbl_name = ? AND "
                              "type = 'index')", (t, t)).fetchone()
            out[t] = int(row[0] or 0)
    except sqlite3.OperationalError:
        out["file"] = path.stat().st_size
    con.close()
    return out


def pg_bytes(db: Database) -> dict[str, int]:
    assert db.engine is not None
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(text("VACUUM ANALYZE"))
        return {t: int(c.execute(text(f"SELECT pg_total_relation_size('{t}')")).scalar() or 0)
                for t in TABLES}


def growth(url: str, devices: int, interval_s: int, kind: str, path: Path | None) -> dict[str, Any]:
    db = Database(url)
    assert db.engine is not None
    target_metadata().create_all(db.engine)
    secs = fill(db, devices, interval_s)
    sizes = sqlite_bytes(path, db) if path is not None else pg_bytes(db)
    db.dispose()
    total = sum(sizes.values())
    return {"backend": kind, "devices": devices, "reports_per_device_day": 86400 // interval_s,
            "bytes": sizes, "bytes_per_device_day": total / devices,
            "gb_per_10k_devices_day": total / devices * 10_000 / 1e9,
            "insert_s": secs, "reports_per_s": devices * (86400 // interval_s) / secs}


def cpu_per_report(reports: int) -> dict[str, Any]:
    from update_server.app import create_app
    from update_server.config import load_config
    from update_server.db import get_db
    from update_server.operators.auth import create_enrollment_token
    from update_server.testing import SoftwareDevice

    tmp = Path(tempfile.mkdtemp(prefix="edgepkg-telbench-"))
    url = f"sqlite:///{tmp / 's.db'}"
    app = create_app(load_config(env={}, database_url=url, testing=True,
                                 telemetry_max_per_minute=10**6, telemetry_max_per_day=10**6))
    Base.metadata.create_all(get_db(app).engine)  # type: ignore[arg-type]
    client = app.test_client()
    devices = [SoftwareDevice() for _ in range(20)]
    with get_db(app).session() as s:
        _, token = create_enrollment_token(s, max_uses=100)
    for d in devices:
        assert client.post("/api/v1/enroll", data=d.enroll_body(token),
                           content_type="application/json").status_code == 201
    rng = random.Random(2)
    now = dt.datetime.now(dt.UTC)
    bodies = []
    for k in range(reports):
        d = devices[k % len(devices)]
        data = json.dumps(make_report(k, now, rng).to_json()).encode()
        path = f"/api/v1/devices/{d.device_id}/telemetry"
        bodies.append((path, data, d.signed_headers("POST", path, data)))
    size = sum(len(b[1]) for b in bodies) / len(bodies)
    w0, c0 = time.perf_counter(), time.process_time()
    for path, data, headers in bodies:
        r = client.post(path, data=data, headers=headers)
        assert r.status_code == 200, r.get_json()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    get_db(app).dispose()
    return {"reports": reports, "report_json_bytes": size, "wall_ms_per_report": wall * 1e3 /
            reports, "cpu_ms_per_report": cpu * 1e3 / reports}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, default=200)
    p.add_argument("--interval", type=int, default=300, help="seconds per report")
    p.add_argument("--reports", type=int, default=500)
    p.add_argument("--no-postgres", action="store_true")
    a = p.parse_args()
    results: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="edgepkg-telbench-"))
    results.append(growth(f"sqlite:///{tmp / 'g.db'}", a.devices, a.interval, "sqlite",
                          tmp / "g.db"))
    if not a.no_postgres:
        from tests.fixtures.postgres import PostgresCluster, _pg_bin

        bin_dir = _pg_bin()
        if bin_dir is not None:
            cluster = PostgresCluster(bin_dir, Path(tempfile.mkdtemp(prefix="edgepkg-pg-")))
            os.chmod(cluster.base, 0o755)
            cluster.start()
            try:
                url = cluster.create_database("telbench")
                results.append(growth(url, a.devices, a.interval, "postgresql", None))
            finally:
                cluster.stop()
    results.append(cpu_per_report(a.reports))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
