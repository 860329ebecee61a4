"""The late-comer: after v2 is published, one more device enrolls and reaches v2 through a key
grant, with no repackaging and no republishing (issue 11 item 7).

The bundles were packaged for the devices enrolled then, the archive key and the key-service
key (``--key-service``). The new device is none of those; at its check-in the server's key
service re-wraps v2's data key to the device's token key (a key grant), and the device opens it
in its own token. The bundle file, and so its TUF target hash, stays exactly the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepkg.demo import _devices
from edgepkg.demo._procs import ProcessSet
from edgepkg.demo._rollouts import Conductor, Tracker
from edgepkg.demo._server import Server
from edgepkg.demo._workspace import Workspace
from edgepkg.repo import list_releases

LATE_TAG = "late"


@dataclass
class LateDevice:
    device: _devices.Device
    v2_target_sha256: str  # the published v2 bundle's TUF hash before the device enrolled
    tracker: Tracker


def v2_target_sha256(ws: Workspace, model: str) -> str:
    return next(r.sha256 for r in list_releases(ws.repo)
                if r.kind == "full" and r.name == model and r.version == "2.0.0")


def enroll_late_device(
    ws: Workspace,
    server: Server,
    procs: ProcessSet,
    cond: Conductor,
    *,
    index: int,
    holdout: tuple[np.ndarray, np.ndarray],
    hsm_module: str | None,
    trial_window_s: float,
    poll_interval: int,
    root_json: Path,
    release_pub: Path,
    timeout: float,
) -> LateDevice:
    """Enroll device ``index`` now, start its daemon, roll v2 out to it and wait until it runs
    v2. Its enrollment token tags it ``late`` so its rollout selects only it."""
    sha_before = v2_target_sha256(ws, cond.model)
    token = server.api.post("/api/v1/enrollment-tokens", {
        "max_uses": 1, "expires_in_s": 3600, "tags": ["demo", LATE_TAG],
        "note": "edgepkg demo: a device enrolled after v2 was published"})["token"]
    device = _devices.provision(ws, index, holdout, server_url=server.url, hsm_module=hsm_module,
                                trial_window_s=trial_window_s, poll_interval=poll_interval)
    _devices.enroll_all([device], token=str(token), root_json=root_json, release_pub=release_pub)
    _devices.start_daemons([device], procs, ws.logs)
    cond.by_id[device.device_id] = device
    tracker = cond.start("2.0.0", [100.0], selector={"tags": [LATE_TAG]}, min_devices=1)
    cond.wait_devices_on("2.0.0", len(cond.by_id), timeout)
    tracker.observe(server.rollout(tracker.rollout_id))
    return LateDevice(device, sha_before, tracker)
