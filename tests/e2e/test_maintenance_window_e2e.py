"""Maintenance windows end to end: the real server sends the rollout's window with the
assignment; the real device downloads, installs and validates at once, then WAITS (active slot
untouched, across a restart) and switches only when its own clock is inside the window."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

from device_updater.state import Phase
from edgepkg.protocol import Assignment, full_target_name
from tests.e2e.conftest import MODEL, World


def test_device_waits_for_the_window_then_switches_inside_it(
        e2e_world: Callable[..., World]) -> None:
    w = e2e_world()
    w.publish("1.0.0", w.models["1.0.0"])
    w.publish("2.0.0", w.models["2.0.0"])
    w.rollout("1.0.0")
    agent = w.agent()
    agent.recover()
    agent.run_cycle()
    w.healthy("1.0.0")
    agent.run_cycle()
    assert agent.slots(MODEL).active().version == "1.0.0"  # type: ignore[union-attr]

    # A window that opens 12 hours from now (UTC), for one hour: closed at the real time.
    opens = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0) + dt.timedelta(hours=12)
    window = {"cron": f"{opens.minute} {opens.hour} * * *", "duration": "1h", "tz": "UTC"}
    for ro in w.api("GET", "/api/v1/rollouts").json()["rollouts"]:
        if ro["status"] == "running":
            w.api("POST", f"/api/v1/rollouts/{ro['id']}/abort")
    r = w.api("POST", "/api/v1/rollouts", json={
        "model": MODEL, "version": "2.0.0", "stages": [{"percent": 100}], "min_devices": 1,
        "maintenance_window": window})
    assert r.status_code == 201, r.text
    assert r.json()["maintenance_window"] == window
    rid = r.json()["id"]

    report = agent.run_cycle()
    assert report.online
    st = agent.store(MODEL).load()
    assert st.phase is Phase.WAITING and st.version == "2.0.0", st
    assert st.maintenance_window == window
    assert agent.slots(MODEL).active().version == "1.0.0"  # type: ignore[union-attr]
    assert agent.slots(MODEL).info("b" if st.slot == "b" else "a") is not None  # installed
    agent.run_cycle()  # still closed: still waiting, nothing switched
    assert agent.store(MODEL).load().phase is Phase.WAITING
    assert agent.checkin_report()["state"] == "waiting_window"

    # Power cut while waiting: the next start-up resumes waiting, the old model still runs.
    agent.store(MODEL).mark_running()
    restarted = w.agent()
    restarted.recover()
    assert restarted.store(MODEL).load().phase is Phase.WAITING
    assert restarted.slots(MODEL).active().version == "1.0.0"  # type: ignore[union-attr]

    # The device's own clock reaches the window (offline: no server involved in the decision).
    inside = opens.timestamp() + 600 - time.time()
    late = w.agent(clock=lambda: time.time() + inside)
    late.recover()
    late.apply_assignment(Assignment(model=MODEL, version="2.0.0",
                                     target=full_target_name(MODEL, "2.0.0"), rollout_id=rid))
    st = late.store(MODEL).load()
    assert st.phase is Phase.TRIAL, st
    assert late.slots(MODEL).active().version == "2.0.0"  # type: ignore[union-attr]
