"""A rollout stage gated on field telemetry: canary (rollout devices on the new version) vs
control (same selector, previous version). Real database and service, real telemetry rows."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.update_server._rollout_fixtures import RELEASES, T0, add_device, migrated, set_version
from tests.update_server._telemetry_fixtures import report
from update_server.devices.models import Device
from update_server.rollouts import device_path, service as svc
from update_server.rollouts.models import Rollout, RolloutDevice
from update_server.telemetry import storage

GATE = {"max_latency_ratio": 1.5, "min_devices": 5, "alpha": 0.01}


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    db = migrated(f"sqlite:///{tmp_path / 'gate.db'}")
    with db.session() as s:
        yield s
    db.dispose()


def _canary(s: Session, n: int = 40) -> tuple[Rollout, list[Device], list[Device]]:
    devices = [add_device(s, f"dev{i:03d}") for i in range(n)]
    r = svc.create_rollout(s, {"model": "det", "version": "1.1.0",
                               "stages": [{"percent": 25}, {"percent": 100}],
                               "success_share": 0.9, "field_gate": GATE},
                           releases=RELEASES, now=T0)
    admitted = [d for d in devices if device_path.assignments_for_device(s, d, RELEASES, T0)]
    for d in admitted:  # they installed and committed the new version
        set_version(s, d, "1.1.0")
        row = s.get(RolloutDevice, (r.id, d.id))
        assert row is not None
        row.result, row.finished_at = "succeeded", T0 + dt.timedelta(minutes=1)
    s.flush()
    control = [d for d in devices if d not in admitted]
    return r, admitted, control


def _telemetry(s: Session, devices: list[Device], version: str, p95: float, seed: int) -> None:
    rng = random.Random(seed)
    for d in devices:
        for k in range(1, 7):
            rep = report(k, end=T0 + dt.timedelta(minutes=5 * k), version=version,
                         p95=p95 * rng.uniform(0.9, 1.1))
            storage.store_report(s, d.id, rep, T0)


def test_stage_pauses_when_canary_latency_is_worse_than_control_in_the_field(
    session: Session,
) -> None:
    r, canary, control = _canary(session)
    assert len(canary) == 10 and len(control) == 30
    _telemetry(session, canary, "1.1.0", 18.0, 1)
    _telemetry(session, control, "1.0.0", 10.0, 2)
    decision = svc.evaluate_rollout(session, r, T0 + dt.timedelta(hours=1))
    assert decision.action == "pause"
    assert decision.reason.startswith(
        "stage 1: canary p95 latency 1.8x control, n=10 vs 30, p<0.01"
    )
    row = session.scalar(select(Rollout).where(Rollout.id == r.id))
    assert row is not None and row.status == "paused" and row.reason == decision.reason
    assert svc.rollout_json(session, row)["field_gate"]["max_latency_ratio"] == 1.5


def test_stage_advances_when_canary_matches_control(session: Session) -> None:
    r, canary, control = _canary(session)
    _telemetry(session, canary, "1.1.0", 10.0, 3)
    _telemetry(session, control, "1.0.0", 10.0, 4)
    decision = svc.evaluate_rollout(session, r, T0 + dt.timedelta(hours=1))
    assert decision.action == "advance", decision.reason


def test_stage_waits_without_field_telemetry_instead_of_advancing_blind(
    session: Session,
) -> None:
    r, _, _ = _canary(session)
    decision = svc.evaluate_rollout(session, r, T0 + dt.timedelta(hours=1))
    assert decision.action == "none"
    assert "waiting for field telemetry: canary n=0" in decision.reason
    assert r.status == "running"
