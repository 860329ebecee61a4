"""``edgepkg demo --quick``: the broadest end-to-end test (keys in SoftHSM2, TUF repository,
training, packaging, deltas, the real update server and a fleet of real device updaters as
separate processes, staged rollouts, v3 rejected by the canaries). Runs the real command."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import require

EDGEPKG = [sys.executable, "-m", "edgepkg"]
QUICK_DEVICES = 4


def _softhsm() -> bool:
    return bool(shutil.which("softhsm2-util")) and os.path.exists("/usr/lib/softhsm/libsofthsm2.so")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SOFTHSM2_CONF", None)  # the demo makes its own token directory
    return env


def _leftovers(workdir: Path) -> list[str]:
    """Processes whose command line mentions the workspace (server, device daemons)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(workdir) in cmd:
            out.append(f"{pid}: {cmd}")
    return out


@pytest.mark.timeout(420)
def test_demo_quick_runs_the_whole_fleet_release_and_every_expectation_holds(
    tmp_path: Path,
) -> None:
    require(_softhsm(), "SoftHSM2 (softhsm2-util and libsofthsm2.so)")
    workdir = tmp_path / "ws"
    started = time.monotonic()
    proc = subprocess.run(
        [*EDGEPKG, "demo", "--quick", "--json", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=400,
        env=_env(),
        check=False,
    )
    elapsed = time.monotonic() - started
    assert proc.stdout, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    failed = [c for c in report["checks"] if not c["ok"]]
    assert proc.returncode == 0 and report["ok"], (failed, report["error"], proc.stderr[-3000:])
    assert "SoftHSM2" in report["key_custody"]
    whats = " | ".join(c["what"] for c in report["checks"])
    for expected in (
        "v2 rollout went through its stages",
        "every device ends on v2",
        "most devices got v2 through a delta",
        "v3 rollout paused itself",
        "canaries rejected it on holdout validation",
        "no device ever ran v3",
        "enrolled after v2 was published and reached v2 through a key grant",
    ):
        assert expected in whats
    devices = report["devices"]
    # the fleet, plus one device enrolled after v2 was packaged and published
    assert len(devices) == QUICK_DEVICES + 1
    late = devices[-1]
    assert late["note"] == "enrolled after v2 was published: key grant"
    assert late["version"] == "2.0.0" and late["v2_route"] == "full"
    assert all(d["version"] == "2.0.0" and d["keystore"] == "softhsm2" for d in devices)
    delta = [d for d in devices if d["v2_route"] == "delta"]
    assert delta and all(d["v2_bytes"] < d["v2_full_size"] for d in delta)
    v3 = next(r for r in report["rollouts"] if r["version"] == "3.0.0")
    assert v3["status"] == "paused" and "failed" in v3["reason"]
    assert any(d["v3"].startswith("REJECTED: min: top1_accuracy") for d in devices)
    assert not _leftovers(workdir), "the demo left processes behind"
    print(f"demo --quick took {elapsed:.0f} s")


@pytest.mark.timeout(180)
def test_demo_interrupted_midway_stops_every_child_process(tmp_path: Path) -> None:
    workdir = tmp_path / "ws"
    proc = subprocess.Popen(
        [*EDGEPKG, "demo", "--quick", "--no-hsm", "--workdir", str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    # wait until the fleet is running, then stop the demo as systemd or a user would
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and proc.poll() is None:
        if (
            len(
                [
                    p
                    for p in _leftovers(workdir)
                    if "device_updater" in p and p.rstrip().endswith(" run")
                ]
            )
            >= 2
        ):
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "interrupted" in out
    assert "FILE KEYS" in out  # --no-hsm says so clearly
    time.sleep(0.5)
    assert not _leftovers(workdir), "the demo left processes behind"


def test_demo_refuses_a_non_empty_workdir(tmp_path: Path) -> None:
    (tmp_path / "something").write_text("mine")
    proc = subprocess.run(
        [*EDGEPKG, "demo", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
        check=False,
    )
    assert proc.returncode == 2
    assert "not empty" in proc.stderr
    assert (tmp_path / "something").read_text() == "mine"
