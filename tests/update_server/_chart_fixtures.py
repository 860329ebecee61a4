"""A small fleet with stored field telemetry for the chart tests: ``det`` 1.0.0 on four
control devices, 1.1.0 (the rollout's version) on two canaries whose p95 latency is three
times control; one control device drifts. Rows go into the telemetry room's tables
(``telemetry_reports`` + ``telemetry_intervals``). When those tables are not in the schema
(a branch without the telemetry room's migration), :func:`ensure_tables` creates the columns
the charts read plus every NOT NULL column of the room's models, so the same inserts work on
both.
"""

from __future__ import annotations

import datetime as dt
import json

from sqlalchemy import inspect, text
from sqlalchemy.orm import Session

from tests.update_server._rollout_fixtures import add_device, dev_ids

CONTROL = dev_ids(4, "ctl")
CANARY = dev_ids(2, "can")
DRIFTING = CONTROL[0]
INTERVALS = 12
STEP = dt.timedelta(minutes=5)

_DDL = (
    """CREATE TABLE telemetry_reports (
        device_id VARCHAR(64) NOT NULL, seq BIGINT NOT NULL, interval_start TIMESTAMP NOT NULL,
        interval_end TIMESTAMP NOT NULL, received_at TIMESTAMP NOT NULL,
        dropped_intervals INTEGER NOT NULL, cpu_temp_c FLOAT, gpu_temp_c FLOAT,
        PRIMARY KEY (device_id, seq))""",
    """CREATE TABLE telemetry_intervals (
        device_id VARCHAR(64) NOT NULL, seq BIGINT NOT NULL, model VARCHAR(200) NOT NULL,
        version VARCHAR(100) NOT NULL, interval_end TIMESTAMP NOT NULL,
        inferences BIGINT NOT NULL, errors BIGINT NOT NULL, latency_p95_ms FLOAT,
        feedback_labelled BIGINT NOT NULL, feedback_correct BIGINT NOT NULL,
        confidence_mean FLOAT, psi FLOAT, js FLOAT, summaries JSON NOT NULL,
        PRIMARY KEY (device_id, seq, model))""",
)


def ensure_tables(s: Session) -> None:
    if "telemetry_intervals" not in inspect(s.connection()).get_table_names():
        for ddl in _DDL:
            s.execute(text(ddl))


def add_interval(s: Session, device_id: str, seq: int, end: dt.datetime, version: str, *,
                 p95: float, psi: float, temp: float, errors: int = 0,
                 confidence: float = 0.9) -> None:
    # naive UTC in SQLAlchemy's SQLite layout (PostgreSQL casts the same text): what the
    # room's UTCDateTime columns store
    start_s, end_s = (t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
                      for t in (end - STEP, end))
    s.execute(text(
        "INSERT INTO telemetry_reports (device_id, seq, interval_start, interval_end, "
        "received_at, dropped_intervals, cpu_temp_c) VALUES (:d, :q, :s, :e, :e, 0, :t)"),
        {"d": device_id, "q": seq, "s": start_s, "e": end_s, "t": temp})
    s.execute(text(
        "INSERT INTO telemetry_intervals (device_id, seq, model, version, interval_end, "
        "inferences, errors, latency_p95_ms, feedback_labelled, feedback_correct, "
        "confidence_mean, psi, summaries) VALUES (:d, :q, 'det', :v, :e, 600, :err, :p, 20, "
        ":ok, :c, :psi, :sum)"),
        {"d": device_id, "q": seq, "v": version, "e": end_s, "err": errors, "p": p95,
         "ok": 18, "c": confidence, "psi": psi, "sum": json.dumps({})})


def seed_fleet(s: Session, now: dt.datetime) -> None:
    """The fleet of the module docstring, with INTERVALS five-minute reports up to ``now``."""
    ensure_tables(s)
    for i, dev in enumerate(CONTROL + CANARY):
        canary = dev in CANARY
        add_device(s, dev, tags=("site:a",) if i % 2 == 0 else ("site:a", "cam:ir"),
                   version="1.1.0" if canary else "1.0.0", last_seen=now)
        for k in range(INTERVALS):
            end = now - STEP * (INTERVALS - 1 - k)
            add_interval(s, dev, k + 1, end, "1.1.0" if canary else "1.0.0",
                         p95=30.0 if canary else 10.0 + i,
                         psi=0.4 if dev == DRIFTING and k >= 6 else 0.02,
                         temp=55.0 + i, errors=3 if canary else 0,
                         confidence=0.7 if canary else 0.9)
    s.flush()
