"""End to end for the console (issue 14): the real device agent, the real server.

A rollout that targets a dynamic group reaches a device because of the facts the device itself
reported (the group is resolved at check-in, so the device needed no tag and joined after the
group was saved), and the failure the inference app reported shows as the device's last error.
"""

from __future__ import annotations

import platform
from collections.abc import Callable

from device_updater.state import Phase
from device_updater.status import status
from tests.e2e.conftest import MODEL, World


def _platform() -> str:
    return f"{platform.system().lower()}-{platform.machine().lower()}"


def test_group_rollout_selects_the_device_by_its_reported_facts(
        e2e_world: Callable[[], World]) -> None:
    world = e2e_world()
    world.publish("1.0.0", world.models["1.0.0"])
    agent = world.agent()
    agent.run_cycle()  # the first check-in reports the device's facts
    did = status(world.config)["device_id"]

    # A group the device is not in: a rollout to it assigns nothing.
    r = world.api("POST", "/api/v1/groups", json={"name": "elsewhere",
                                                   "selector": "platform=plan9-mips"})
    assert r.status_code == 201, r.text
    assert r.json()["count"] == 0
    r = world.api("POST", "/api/v1/rollouts", json={
        "model": MODEL, "version": "1.0.0", "group": "elsewhere",
        "stages": [{"percent": 100}], "min_devices": 1})
    assert r.status_code == 201, r.text
    assert agent.run_cycle().assignments == 0
    world.api("POST", f"/api/v1/rollouts/{r.json()['id']}/abort")

    # A group over the platform fact the device reported: the rollout reaches it.
    selector = f"platform={_platform()} and not tag:quarantined"
    preview = world.api("POST", "/api/v1/groups/preview", json={"selector": selector}).json()
    assert preview["count"] == 1 and preview["sample"][0]["device_id"] == did
    assert world.api("POST", "/api/v1/groups", json={"name": "here", "selector": selector}
                     ).status_code == 201
    r = world.api("POST", "/api/v1/rollouts", json={
        "model": MODEL, "version": "1.0.0", "group": "here",
        "stages": [{"percent": 100}], "min_devices": 1})
    assert r.status_code == 201, r.text
    for _ in range(4):
        agent.run_cycle()
        st = agent.store(MODEL).load()
        if st.phase is Phase.TRIAL:
            world.healthy("1.0.0")
        if st.phase is Phase.COMMITTED:
            break
    agent.run_cycle()
    assert status(world.config)["models"][MODEL]["phase"] == "committed"
    body = world.api("GET", f"/api/v1/rollouts/{r.json()['id']}").json()
    assert body["selector"]["group"] == "here" and body["totals"]["committed"] == 1


def test_the_app_reported_failure_is_the_devices_last_error(
        e2e_world: Callable[[], World]) -> None:
    world = e2e_world()
    agent = world.agent()
    agent.run_cycle()
    did = status(world.config)["device_id"]
    assert world.api("GET", f"/api/v1/devices/{did}").json()["last_error"] is None
    world.healthy("1.0.0", ok=False)  # the app: report-health --fail --message "NaN outputs"
    agent.run_cycle()
    last_error = world.api("GET", f"/api/v1/devices/{did}").json()["last_error"]
    assert last_error is not None and "NaN outputs" in last_error
