"""Offline (USB) updates end to end: ``edgepkg export-offline`` writes a package from the real
repository, and a device with NO reachable server installs it with ``install_offline`` through
its own TUF trust chain, the validation gate and the A/B switch; events wait in the queue and
reach the server once the device is online again.

Scenarios: full install from a directory then an update from a .tar archive (trial, commit);
a tampered bundle is refused and the running model stays; a late device (not a recipient)
installs through the package's key grant, while a grant for another device is refused.
"""

from __future__ import annotations

import dataclasses
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from device_updater.agent import Agent
from device_updater.offline import OfflinePackageRefusedError, install_offline
from device_updater.state import Phase
from edgepkg import keys as ekeys
from edgepkg.cli import main as edgepkg_main
from tests.e2e.conftest import MODEL, World
from tests.e2e.test_key_grants_e2e import _device_id, _late_device

NO_SERVER = "http://127.0.0.1:9"  # discard port: nothing answers


def offline_agent(w: World) -> Agent:
    """The device's agent with a server URL nothing answers at: proof that no step needs it."""
    return dataclasses.replace(w, config=dataclasses.replace(w.config,
                                                             server_url=NO_SERVER)).agent()


def export(w: World, version: str, out: Path, *extra: str) -> Path:
    rc = edgepkg_main(["export-offline", "--repo", str(w.repo), "--model", MODEL,
                       "--version", version, "-o", str(out), *extra])
    assert rc == 0
    return out


def test_device_without_server_installs_from_a_directory_then_a_tar(
        e2e_world: Callable[..., World], tmp_path: Path) -> None:
    w = e2e_world()
    w.publish("1.0.0", w.models["1.0.0"])
    w.publish("2.0.0", w.models["2.0.0"])
    agent = offline_agent(w)
    agent.recover()

    res = install_offline(agent, export(w, "1.0.0", tmp_path / "usb-1"))
    assert res.ok and res.phase == "trial" and res.active_version == "1.0.0", res
    w.healthy("1.0.0")
    agent.run_cycle()  # offline: the trial is judged locally, the check-in fails
    assert agent.store(MODEL).load().phase is Phase.COMMITTED

    archive = export(w, "2.0.0", tmp_path / "usb-2.tar", "--deltas")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "edgepkg-offline.json" in names and "metadata/1.root.json" in names
    assert any("delta-from-1.0.0" in n for n in names)
    res = install_offline(agent, archive)
    assert res.ok and res.phase == "trial" and res.active_version == "2.0.0", res
    w.healthy("2.0.0")
    agent.run_cycle()
    assert agent.store(MODEL).load().phase is Phase.COMMITTED
    assert b"".join(agent.slots(MODEL).open_plaintext(None)) == w.models["2.0.0"]

    queued = {e["type"] for e in agent.events.pending(1000)}
    assert {"download_started", "installed", "validation_result", "trial_started",
            "committed"} <= queued
    assert not w.device_events()  # nothing reached the server yet

    online = w.agent()  # the device is back online: the queue is flushed
    assert online.run_cycle().online
    assert not online.events.pending(10)
    sent = [e["type"] for e in w.device_events()]
    assert "committed" in sent and "installed" in sent


def test_tampered_package_is_refused_and_the_running_model_stays(
        e2e_world: Callable[..., World], tmp_path: Path) -> None:
    w = e2e_world()
    w.publish("1.0.0", w.models["1.0.0"])
    w.publish("4.0.0", w.models["4.0.0"])
    agent = offline_agent(w)
    agent.recover()
    assert install_offline(agent, export(w, "1.0.0", tmp_path / "a")).ok
    w.healthy("1.0.0")
    agent.run_cycle()

    usb = export(w, "4.0.0", tmp_path / "b")
    bundle = next((usb / "targets").rglob("*.edgepkg"))
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0x01
    bundle.write_bytes(bytes(data))
    res = install_offline(agent, usb)
    assert not res.ok and res.active_version == "1.0.0", res
    assert any("verification" in e for e in res.errors), res.errors

    # A tampered signed metadata file is refused by TUF before any download.
    usb2 = export(w, "4.0.0", tmp_path / "c")
    (usb2 / "metadata" / "timestamp.json").write_text("{}")
    res = install_offline(agent, usb2)
    assert not res.ok and res.active_version == "1.0.0", res

    # A good package resumes the same update.
    res = install_offline(agent, export(w, "4.0.0", tmp_path / "d"))
    assert res.ok and res.active_version == "4.0.0", res

    # A hostile archive (path traversal) is refused before anything is extracted.
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        tar.add(bundle, arcname="../../escape")
    with pytest.raises(OfflinePackageRefusedError, match="not part of an offline package"):
        install_offline(agent, evil)


def test_late_device_installs_through_its_grant_and_refuses_another_devices(
        e2e_world: Callable[..., World], tmp_path: Path) -> None:
    w = e2e_world(key_service=True)
    w.publish("1.0.0", w.models["1.0.0"])  # packaged before the late devices existed
    ks_ref = w.app.config["EDGEPKG"].key_service_key
    a, b = _late_device(w, "dev-a"), _late_device(w, "dev-b")
    pub_a = tmp_path / "a.pub.pem"
    pub_a.write_bytes(ekeys.public_key_pem(a.keystore.recipient_key().public_key()))

    usb = export(w, "1.0.0", tmp_path / "usb.tar", "--key-service", ks_ref,
                 "--device-key", str(pub_a), "--device-id", _device_id(a))

    agent_b = offline_agent(b)  # the package holds a grant for device a only
    agent_b.recover()
    res = install_offline(agent_b, usb)
    assert not res.ok and res.phase == "rejected" and res.active_version is None, res
    assert "not encrypted for this device" in (res.reason or ""), res.reason

    agent_a = offline_agent(a)
    agent_a.recover()
    res = install_offline(agent_a, usb)
    assert res.ok and res.active_version == "1.0.0", res
