"""The device against a hostile or broken server (issue 13 item 9), with ``fuzz.hostile_server``.

One real world (server, TUF repository, device with v1 committed and v2 assigned), then for each
scenario the real ``edge-updater check`` runs in a child process against the hostile server,
from the same saved device state. Each run must: exit 0 or 1 (documented codes) without a
traceback, say what went wrong, end within its timeouts plus a margin, stay under a memory
ceiling (the child's peak RSS, ``VmHWM``), and leave v1 active and intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from fuzz.hostile_server import SCENARIOS, HostileServer, Scenario, route_of
from tests.e2e.conftest import MODEL, World

pytestmark = pytest.mark.timeout(600)

CONNECT_S, READ_S = 2.0, 2.0
# A check makes a handful of requests (events, check-in, events, TUF metadata, a target); each
# may take at most its deadline (see device_updater.http) plus process start and a validation.
TIME_LIMIT_S = 45.0
RSS_MARGIN_KB = 96 * 1024  # over the pass-through run's peak


@dataclass
class Run:
    rc: int
    seconds: float
    max_rss_kb: int
    stdout: str
    stderr: str


def _config(world: World, url: str, out: Path) -> Path:
    c = world.config
    cfg = out / "hostile.toml"
    cfg.write_text(f"""
[server]
url = "{url}"
connect_timeout = {CONNECT_S}
read_timeout = {READ_S}
[device]
state_dir = "{c.state_dir}"
runtime_dir = "{c.runtime_dir}"
holdout_dir = "{c.holdout_dir}"
[keystore]
type = "pkcs11"
token_uri = "{c.token_uri}"
[log]
json = true
""")
    return cfg


def _hwm_kb(pid: int) -> int:
    """The child's peak RSS so far (``VmHWM``). Not ``wait4``'s ``ru_maxrss``: Linux carries the
    parent's high-water mark across fork and exec, so it reports at least the test's own RSS."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _check(cfg: Path, out: Path, limit: float) -> Run:
    """``edge-updater check --json`` in a child, its peak RSS sampled every 20 ms, killed at
    ``limit`` seconds."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    so, se = out / "stdout", out / "stderr"
    start = time.monotonic()
    with open(so, "wb") as fo, open(se, "wb") as fe:
        proc = subprocess.Popen([sys.executable, "-m", "device_updater", "-c", str(cfg), "check",
                                 "--json"], stdout=fo, stderr=fe, env=env)
        peak = 0
        while True:
            peak = max(peak, _hwm_kb(proc.pid))  # before reaping: /proc/<pid> goes with it
            pid, status = os.waitpid(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - start > limit:
                proc.kill()
                pid, status = os.waitpid(proc.pid, 0)
                break
            time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Run(proc.returncode, time.monotonic() - start, peak,
               so.read_text(errors="replace"), se.read_text(errors="replace"))


def _restore(snapshot: Path, world: World) -> None:
    for name, live in (("state", world.config.state_dir), ("run", world.config.runtime_dir)):
        shutil.rmtree(live, ignore_errors=True)
        if (snapshot / name).exists():
            shutil.copytree(snapshot / name, live, symlinks=True)


def _serving_v1(world: World) -> str | None:
    """Why v1 is not the active, verifiable model (``None`` when it is)."""
    slots = world.agent().slots(MODEL)
    active = slots.active()
    if active is None or active.version != "1.0.0":
        return f"active slot changed: {active}"
    data = b"".join(slots.open_plaintext(None))  # checks length and SHA-256 as it ends
    if hashlib.sha256(data).digest() != hashlib.sha256(world.models["1.0.0"]).digest():
        return "active model bytes differ from v1"
    return None


def _logged_error(run: Run) -> str:
    """The error of the last warning/error the agent logged (JSON log lines on stderr)."""
    found = ""
    for line in run.stderr.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("error") and rec.get("level") in ("warning", "error"):
            found = f"{rec.get('message')}: {rec['error']}"
    return found


def _outcome(run: Run) -> str:
    try:
        doc = json.loads(run.stdout.strip().splitlines()[-1])
        errors = "; ".join(doc["errors"]) or _logged_error(run)
        return f"online={doc['online']} {doc['outcomes'].get(MODEL)} {errors[:200]}".strip()
    except (ValueError, IndexError, KeyError, TypeError, AttributeError):
        return run.stderr.strip().splitlines()[-1][:200] if run.stderr.strip() else ""


def _problems(sc: Scenario, run: Run, rss_ceiling: int) -> list[str]:
    out = []
    if run.rc not in (0, 1):
        out.append(f"exit code {run.rc}")
    if "Traceback" in run.stdout + run.stderr:
        out.append("traceback: " + run.stderr[-600:])
    if "internal error:" in run.stderr:  # _cli_support's words for an untyped exception
        out.append("untyped exception: " + run.stderr[-600:])
    if run.seconds > TIME_LIMIT_S:
        out.append(f"took {run.seconds:.1f} s")
    if run.max_rss_kb > rss_ceiling:
        out.append(f"peak RSS {run.max_rss_kb // 1024} MiB > {rss_ceiling // 1024} MiB")
    if run.rc == 0 and "api" not in sc.routes and not _logged_error(run):
        out.append("a refused TUF download was not reported (no warning with its error)")
    said = run.stdout.strip()
    if run.rc == 1:
        # a documented failure says what happened: the --json report, or a one-line error
        try:
            doc = json.loads(said.splitlines()[-1]) if said else {}
        except ValueError:
            doc = {}
        reported = (doc.get("online") is False or doc.get("errors")
                    or "refused:" in run.stderr or '"level": "ERROR"' in run.stderr
                    or "error" in run.stderr.lower())
        if not reported:
            out.append(f"exit 1 without a reason: {run.stdout[-300:]} {run.stderr[-300:]}")
    return out


def test_device_survives_every_hostile_server_scenario(e2e_world: Callable[[], World],
                                                         tmp_path: Path) -> None:
    world = e2e_world()
    world.publish("1.0.0", world.models["1.0.0"])
    world.rollout("1.0.0")
    agent = world.agent()
    agent.recover()
    for _ in range(4):
        agent.run_cycle()
        if agent.store(MODEL).load().phase.value == "trial":
            world.healthy("1.0.0")
        if agent.store(MODEL).load().phase.value == "committed":
            break
    assert _serving_v1(world) is None
    world.publish("2.0.0", world.models["2.0.0"])  # the next check-in assigns v2
    world.rollout("2.0.0")
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    shutil.copytree(world.config.state_dir, snapshot / "state", symlinks=True)
    if world.config.runtime_dir.exists():
        shutil.copytree(world.config.runtime_dir, snapshot / "run", symlinks=True)

    # control: through the pass-through proxy the device reaches the server and fetches v2
    with HostileServer(world.server_url) as proxy:
        control = _check(_config(world, proxy.url, tmp_path), tmp_path, TIME_LIMIT_S * 2)
        assert any(p.startswith("/tuf/targets/") for _, p in proxy.hits), proxy.hits
    assert control.rc in (0, 1) and "Traceback" not in control.stderr, control.stderr[-2000:]
    assert json.loads(control.stdout.splitlines()[-1])["online"] is True
    rss_ceiling = control.max_rss_kb + RSS_MARGIN_KB

    failures: dict[str, list[str]] = {}
    timings: dict[str, tuple[float, int, int, str]] = {}
    for sc in SCENARIOS.values():
        _restore(snapshot, world)
        # a fresh rollout: a failure the device reported in an earlier scenario must not stop the
        # server from assigning v2 again (the device's own state is restored above)
        world.rollout("2.0.0")
        with HostileServer(world.server_url, sc) as server:
            run = _check(_config(world, server.url, tmp_path), tmp_path, TIME_LIMIT_S + 30)
            hit = [p for _, p in server.hits]
        problems = _problems(sc, run, rss_ceiling)
        why = _serving_v1(world)
        if why:
            problems.append(why)
        if not any(route_of(p) in sc.routes for p in hit):
            problems.append(f"the device never made a request this scenario attacks: {hit}")
        timings[sc.name] = (round(run.seconds, 1), run.max_rss_kb // 1024, run.rc,
                            _outcome(run))
        if problems:
            failures[sc.name] = problems
    print(f"control: {control.seconds:.1f} s, {control.max_rss_kb // 1024} MiB")
    print("hostile-server scenarios (seconds, peak RSS MiB, exit code, outcome):")
    for name, row in timings.items():
        print(f"  {name}: {row}")
    assert not failures, json.dumps(failures, indent=1)[:6000]
