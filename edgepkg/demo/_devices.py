"""The demo fleet: real ``edge-updater`` daemons, each a separate process with its own state
directory, A/B slots, key store (a SoftHSM2 token, or the development file key store), holdout
set and configuration. The demo talks to them only through the ``edge-updater`` command line."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgepkg.demo import _hsm
from edgepkg.demo._procs import ProcessSet, python_cmd, run_cmd
from edgepkg.demo._workspace import Workspace

UPDATER_MODULE = "device_updater"


@dataclass
class Device:
    index: int
    name: str
    root: Path
    config: Path
    keystore: str  # "softhsm2" or "file"
    device_id: str = ""
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    def cli(self, *args: str, timeout: float = 120) -> str:
        return run_cmd(
            python_cmd(UPDATER_MODULE, "--config", str(self.config), *args),
            timeout=timeout,
            env=self.env,
            what=f"edge-updater {args[0]} ({self.name})",
        )


def provision(
    ws: Workspace,
    index: int,
    holdout: tuple[np.ndarray, np.ndarray],
    *,
    server_url: str,
    hsm_module: str | None,
    trial_window_s: float,
    poll_interval: int,
) -> Device:
    """Lay out one device: holdout set, key store, configuration."""
    root = ws.device(index)
    name = root.name
    (root / "holdout").mkdir(parents=True, exist_ok=True, mode=0o700)
    np.save(root / "holdout" / "inputs.npy", holdout[0], allow_pickle=False)
    np.save(root / "holdout" / "labels.npy", holdout[1], allow_pickle=False)
    env = dict(os.environ)
    if hsm_module is not None:
        # Its own token directory, as each real device has its own TPM or secure element.
        conf = _hsm.write_softhsm_conf(root / "hsm")
        env["SOFTHSM2_CONF"] = str(conf)
        token = _hsm.init_token(root / "hsm", hsm_module, "edge-updater", conf=conf)
        keystore = f'type = "pkcs11"\ntoken_uri = "{token.uri()}"\n'
    else:
        keystore = f'type = "file"\ndir = "{root / "dev-keys"}"\n'
    config = root / "config.toml"
    config.write_text(
        f'[server]\nurl = "{server_url}"\nconnect_timeout = 5\nread_timeout = 30\n\n'
        f'[device]\nstate_dir = "{root / "state"}"\nruntime_dir = "{root / "run"}"\n'
        f'holdout_dir = "{root / "holdout"}"\ntags = ["demo", "{name}"]\n\n'
        f"[keystore]\n{keystore}\n"
        f"[poll]\ninterval = {poll_interval}\njitter = 0.2\nmax_backoff = 10\n\n"
        "[validation]\ntimeout_s = 60\n\n"
        f"[trial]\nwindow_s = {trial_window_s}\nmin_inferences = 0\nmax_failures = 1\n\n"
        '[log]\nlevel = "INFO"\njson = true\n'
    )
    return Device(index, name, root, config, "softhsm2" if hsm_module else "file", env=env)


def enroll_all(
    devices: list[Device], *, token: str, root_json: Path, release_pub: Path, parallel: int = 3
) -> None:
    """``edge-updater enroll`` for every device (a few at a time: each is a Python start-up)."""

    def one(d: Device) -> None:
        out = d.cli(
            "enroll", "--token", token, "--root", str(root_json), "--release-key", str(release_pub)
        )
        d.device_id = str(json.loads(out.strip().splitlines()[-1])["device_id"])

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        list(pool.map(one, devices))


def start_daemons(devices: list[Device], procs: ProcessSet, logs: Path) -> None:
    for d in devices:
        procs.start(
            d.name,
            python_cmd(UPDATER_MODULE, "--config", str(d.config), "run"),
            log_path=logs / f"{d.name}.log",
            env=d.env,
        )


def report_healthy(
    device: Device, model: str, version: str, latency_ms: float, inferences: int
) -> None:
    """What the inference app does once it serves the new model: tell the updater it is fine."""
    device.cli(
        "report-health",
        "--ok",
        "--model",
        model,
        "--version",
        version,
        "--latency-ms",
        f"{latency_ms:.3f}",
        "--latency-p95-ms",
        f"{1.5 * latency_ms:.3f}",
        "--inferences",
        str(inferences),
        timeout=60,
    )


def status(device: Device) -> dict[str, Any]:
    return dict(json.loads(device.cli("status", "--json")))
