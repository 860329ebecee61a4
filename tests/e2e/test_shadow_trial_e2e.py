"""End to end (the shared :func:`~tests.e2e.conftest.e2e_world`): a shadow run on live inputs
rejects a candidate that disagrees with the running model before the switch, and a trial whose
reported latency is 3x the previous model's baseline rolls back with the reason."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np

from device_updater.agent import Agent
from device_updater.layout import Layout
from device_updater.state import Phase
from device_updater.trial import HealthLog, HealthReport
from edgepkg.formats.build import blobs_dataset
from tests.e2e.conftest import MODEL, World

SHADOW_POLICY = {"metric": "top1_accuracy",  # no holdout rule: only the shadow run can object
                 "shadow": {"min_agreement": 0.9, "min_samples": 48, "max_wait_s": 3600,
                            "on_timeout": "reject"}}
TRIAL_POLICY = {"metric": "top1_accuracy",
                "trial": {"max_latency_ratio": 1.5, "min_reports": 3}}


def _install_v1(world: World) -> Agent:
    world.publish("1.0.0", world.models["1.0.0"])
    world.rollout("1.0.0")
    agent = world.agent()
    agent.recover()
    for _ in range(4):
        agent.run_cycle()
        if agent.store(MODEL).load().phase is Phase.TRIAL:
            world.healthy("1.0.0")
        if agent.store(MODEL).load().phase is Phase.COMMITTED:
            break
    assert agent.store(MODEL).load().phase is Phase.COMMITTED
    return agent


def _report(world: World, version: str, p95: float) -> None:
    HealthLog(Layout(world.config.state_dir).health).append(HealthReport(
        time=time.time() + 0.001, status="healthy", model=MODEL, version=version,
        inferences=50, latency_p95_ms=p95))


def _active_plaintext(world: World) -> bytes:
    return b"".join(world.agent().slots(MODEL).open_plaintext(None))


def test_shadow_rejects_a_candidate_that_disagrees_on_spooled_live_inputs(
        e2e_world: Callable[[], World]) -> None:
    world = e2e_world()
    spool = world.tmp / "spool"
    spool.mkdir()
    world.config = dataclasses.replace(world.config, shadow_spool_dir=spool,
                                       shadow_max_samples_per_cycle=32)
    _install_v1(world)
    # v3 has its output classes permuted: it passes a holdout policy without rules, but it
    # disagrees with v1 on live inputs.
    world.publish("3.0.0", world.models["3.0.0"], policy=SHADOW_POLICY)
    world.rollout("3.0.0")
    agent = world.agent()
    agent.run_cycle()
    st = agent.store(MODEL).load()
    assert st.phase is Phase.SHADOW, st  # waiting for live samples; nothing switched
    assert _active_plaintext(world) == world.models["1.0.0"]

    x, _ = blobs_dataset(64, 16, 4, seed=11)
    for i in range(4):  # the app writes samples atomically: temp name, then rename
        tmp = spool / f".batch{i}.npy.tmp"
        with open(tmp, "wb") as fh:
            np.save(fh, x[i * 16:(i + 1) * 16])
        tmp.rename(spool / f"batch{i}.npy")
    agent.run_cycle()
    st = agent.store(MODEL).load()
    assert st.phase is Phase.SHADOW and st.shadow_samples == 32  # K samples per cycle
    agent.run_cycle()
    st = agent.store(MODEL).load()
    assert st.phase is Phase.REJECTED, st
    assert st.reason is not None and st.reason.startswith("shadow: the candidate agrees")
    assert "of 64 live samples; the policy needs 90.0%" in st.reason
    assert _active_plaintext(world) == world.models["1.0.0"]
    assert not list(spool.glob("*.npy"))  # samples are consumed
    agent.run_cycle()  # flush events
    shadow = [e for e in world.device_events()
              if e["type"] == "validation_result" and e["version"] == "3.0.0"
              and e["details"].get("stage") == "shadow"]
    assert shadow and shadow[-1]["details"]["passed"] is False
    assert shadow[-1]["details"]["shadow"]["samples"] == 64


def test_trial_with_3x_the_baseline_latency_rolls_back_with_the_reason(
        e2e_world: Callable[[], World]) -> None:
    world = e2e_world()
    _install_v1(world)
    for _ in range(4):  # the app reports while v1 serves: the baseline on this device
        _report(world, "1.0.0", 10.0)
    world.publish("2.0.0", world.models["2.0.0"], policy=TRIAL_POLICY)
    world.rollout("2.0.0")
    agent = world.agent()
    agent.run_cycle()
    assert agent.store(MODEL).load().phase is Phase.TRIAL
    world.healthy("2.0.0")  # healthy: without the quality rule this trial would commit
    agent.run_cycle()
    assert agent.store(MODEL).load().phase is Phase.TRIAL  # waits for min_reports
    for _ in range(3):
        _report(world, "2.0.0", 30.0)
    agent.run_cycle()
    st = agent.store(MODEL).load()
    assert st.phase is Phase.ROLLED_BACK, st
    assert st.reason == ("trial: p95 latency 30.0 ms is 3.0x the previous model's 10.0 ms "
                         "(policy 1.5x)")
    assert _active_plaintext(world) == world.models["1.0.0"]
    agent.run_cycle()
    assert any(e["type"] == "rolled_back" and e["version"] == "2.0.0"
               and "p95 latency" in e["details"]["reason"] for e in world.device_events())
