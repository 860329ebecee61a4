"""``edgepkg demo``: one command runs a whole fleet release end to end on embedded defaults.

    report = run_demo(DemoConfig(devices=10))
    print(format_report(report)); sys.exit(0 if report.ok else 1)

Release side in this process (edgepkg's API: keys in SoftHSM2 or files, TUF repository,
training, packaging, publishing with deltas); the update server (``edgepkg-server``) and every
device (``edge-updater``) run as separate processes, reached over HTTP and their command lines
only — edgepkg imports neither ``update_server`` nor ``device_updater``.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from edgepkg.demo import _devices, _hsm, _release
from edgepkg.demo._procs import DemoStepError, Interrupted, ProcessSet, on_sigterm
from edgepkg.demo._report import DemoReport, format_report
from edgepkg.demo._rollouts import Conductor, canaries
from edgepkg.demo._server import DASHBOARD_USER, start_server
from edgepkg.demo._summary import summarize
from edgepkg.demo._workspace import make_workspace

__all__ = ["DemoConfig", "DemoReport", "format_report", "run_demo"]


@dataclass
class DemoConfig:
    workdir: str | None = None
    devices: int = 10
    quick: bool = False
    keep_running: bool = False
    port: int | None = None
    screenshot: str | None = None
    use_hsm: bool = True
    poll_interval: int = 1
    trial_window_s: float = 2.0
    stage_timeout_s: float = 90.0
    keep_workspace: bool = False
    log: Callable[[str], None] = field(default=lambda s: print(s, file=sys.stderr, flush=True))


def run_demo(config: DemoConfig) -> DemoReport:
    """Run the demo; never leaves a child process behind (also on error or Ctrl-C)."""
    if config.devices < 1 or config.devices > 100:
        raise DemoStepError("--devices must be between 1 and 100")
    log = config.log
    ws = make_workspace(config.workdir)
    procs = ProcessSet()
    t0 = time.monotonic()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        timings[name] = time.monotonic() - t0 - sum(timings.values())

    old = signal.signal(signal.SIGTERM, on_sigterm) if _main_thread() else None
    module = _hsm.softhsm_module() if config.use_hsm else None
    custody = "files (development only)"
    report = DemoReport(str(ws.root), custody, "")
    pool = ThreadPoolExecutor(max_workers=3)
    trainer = ThreadPoolExecutor(max_workers=1)
    try:
        # 1. keys and repository
        if module is not None:
            _hsm.setup_softhsm(ws.hsm, module)
        keys = _release.create_keys(ws, use_hsm=module is not None)
        if keys.custody == "softhsm2":
            custody = (
                f"SoftHSM2 (PKCS#11, {module}): TUF roles, release signing key and "
                f"release-archive key in token 'edgepkg-release'; every device has its own token "
                "(own SOFTHSM2_CONF)"
            )
        else:
            custody = (
                f"FILE KEYS ({'--no-hsm' if not config.use_hsm else 'SoftHSM2 not installed'}): "
                "development only, private keys are PEM files in the workspace"
            )
        report.key_custody = custody
        log(f"[1/6] keys: {custody}")
        root_json = _release.init_repository(ws, keys)
        log(f"      TUF repository at {ws.repo} (consistent snapshots, keys by reference)")
        lap("keys+repo")

        # 2. training (numpy, in a thread) while the server and the fleet start
        data = _release.demo_data(quick=config.quick)
        training = trainer.submit(_release.train_models, ws, data)
        server, enrollment = start_server(
            ws,
            procs,
            port=config.port,
            poll_interval=config.poll_interval,
            enrollment_uses=config.devices,
            key_service_key=keys.refs[_release.KEY_SERVICE],
        )
        report.dashboard_url = f"{server.url}/dashboard/ (user {DASHBOARD_USER})"
        log(
            f"[2/6] update server: {server.url} (SQLite, gunicorn, poll every "
            f"{config.poll_interval}s)"
        )
        lap("server (+training)")

        # 3. fleet
        from edgepkg.demo import _models

        slices = _models.holdout_slices(data, config.devices)
        devices = [
            _devices.provision(
                ws,
                i + 1,
                slices[i],
                server_url=server.url,
                hsm_module=module,
                trial_window_s=config.trial_window_s,
                poll_interval=config.poll_interval,
            )
            for i in range(config.devices)
        ]
        _devices.enroll_all(
            devices, token=enrollment, root_json=root_json, release_pub=keys.publics["release"]
        )
        device_keys = _fetch_device_keys(server, devices, ws.keys / "devices")
        for d in devices:  # operator-set names, so the console finds "device-03" by name
            server.api.call("PATCH", f"/api/v1/devices/{d.device_id}", {"name": d.name})
        _devices.start_daemons(devices, procs, ws.logs)
        named = {x.get("name") for x in server.devices()}
        report.check(
            "every device is named in the console (device-01 ...)",
            all(d.name in named for d in devices),
        )
        report.check(
            f"{config.devices} devices enrolled, each with its own key "
            f"({'SoftHSM2 token' if module else 'file key store'})",
            len({d.device_id for d in devices}) == config.devices,
        )
        log(f"[3/6] {config.devices} devices enrolled and running (edge-updater run)")
        lap("fleet")

        models = training.result()
        for v, acc in models.accuracy.items():
            log(f"      trained {v} (numpy, ONNX export): pooled holdout accuracy {acc:.3f}")
        lap("training")

        cond = Conductor(server, devices, procs, _release.MODEL_NAME, log, pool=pool)
        n = config.devices
        trackers = {}

        # 4. v1 bootstrap, then v2 in stages
        _release.package_and_publish(ws, keys, models, "1.0.0", device_keys)
        t = cond.start("1.0.0", [100.0])
        trackers["bootstrap v1"] = t
        log("[4/6] v1 published; bootstrap rollout to 100 %")
        cond.wait(
            t,
            lambda ro: ro["status"] == "completed",
            timeout=config.stage_timeout_s,
            what="v1 bootstrap",
        )
        cond.wait_devices_on("1.0.0", n, config.stage_timeout_s)
        lap("v1 bootstrap")
        _, res2 = _release.package_and_publish(ws, keys, models, "2.0.0", device_keys)
        log(
            "      v2 published with deltas: "
            + ", ".join(f"{p.target_path.rsplit('/', 1)[-1]} {p.length} B" for p in res2.published)
        )
        t = cond.start("2.0.0", [20.0, 100.0])
        trackers["staged v2"] = t
        cond.wait(
            t,
            lambda ro: ro["status"] == "completed",
            timeout=2 * config.stage_timeout_s,
            what="v2 rollout",
        )
        cond.wait_devices_on("2.0.0", n, config.stage_timeout_s)
        lap("v2 rollout")

        # 4b. one more device enrolls now, after v2 was packaged and published: a key grant
        from edgepkg.demo._late import enroll_late_device

        late = enroll_late_device(
            ws, server, procs, cond, index=n + 1, holdout=slices[0], hsm_module=module,
            trial_window_s=config.trial_window_s, poll_interval=config.poll_interval,
            root_json=root_json, release_pub=keys.publics["release"],
            timeout=config.stage_timeout_s,
        )
        trackers["late device v2"] = late.tracker
        server.api.call("PATCH", f"/api/v1/devices/{late.device.device_id}",
                        {"name": late.device.name})
        log(f"      {late.device.name} enrolled after v2 was published; reached v2 through a "
            "key grant (no repackaging)")
        lap("late device")

        # 5. v3: the canaries reject it, the rollout pauses itself
        _release.package_and_publish(ws, keys, models, "3.0.0", device_keys)
        k = canaries(n, 20.0)
        t = cond.start("3.0.0", [20.0, 100.0], min_devices=k, failure_share=0.5, on_failure="pause")
        trackers["staged v3"] = t
        log(
            f"[5/6] v3 (trained on corrupted labels) published; rollout 20 % -> 100 % "
            f"({k} canar{'y' if k == 1 else 'ies'})"
        )
        cond.wait(
            t,
            lambda ro: ro["status"] == "paused",
            timeout=config.stage_timeout_s,
            what="v3 rollout",
        )
        time.sleep(max(2.0, 2 * config.poll_interval))  # the fleet keeps polling: nobody moves
        t.observe(server.rollout(t.rollout_id))
        lap("v3 rollout")

        if config.screenshot:
            from edgepkg.demo._screenshot import take_screenshot

            try:
                shot = take_screenshot(
                    f"{server.url}/dashboard/rollouts/{t.rollout_id}",
                    Path(config.screenshot),
                    server.api.token,
                )
                report.screenshot = str(shot)
                canary = next(
                    (
                        d
                        for d in devices
                        for e in server.events(d.device_id)
                        if e.get("version") == "3.0.0" and e.get("type") == "rejected"
                    ),
                    None,
                )
                if canary is not None:  # the canary's page: its rejection reason, as reported
                    take_screenshot(
                        f"{server.url}/dashboard/devices/{canary.device_id}",
                        shot.with_name(shot.stem + "-canary.png"),
                        server.api.token,
                    )
                report.check("dashboard screenshot of the paused v3 rollout taken", True, str(shot))
                log(f"      dashboard screenshots: {shot} (+ {shot.stem}-canary.png)")
            except DemoStepError as exc:
                report.check("dashboard screenshot of the paused v3 rollout taken", False, str(exc))

        # 6. summary and checks
        log("[6/6] collecting results from the server and the devices")
        summarize(report, server, [*devices, late.device], trackers, models, ws, pool,
                  late=late)
        lap("summary")
        report.timings = timings
        if config.keep_running:
            log(format_report(report))
            log(
                f"\nServing the dashboard at {report.dashboard_url} "
                f"(password {server.dashboard_password}); Ctrl-C to stop."
            )
            _serve_until_interrupted(procs)
    except (Interrupted, KeyboardInterrupt) as exc:
        report.error = f"interrupted ({exc or 'Ctrl-C'})"
    except Exception as exc:
        report.error = f"{type(exc).__name__}: {exc}"
    finally:
        report.key_custody = custody
        report.timings = timings
        pool.shutdown(wait=True, cancel_futures=True)
        trainer.shutdown(wait=True, cancel_futures=True)
        procs.stop_all()
        if old is not None:
            signal.signal(signal.SIGTERM, old)
        if ws.temporary and not config.keep_workspace and report.ok:
            ws.remove()
            report.workspace += " (removed)"
    return report


def _serve_until_interrupted(procs: ProcessSet) -> None:
    """--keep-running: the fleet keeps polling and the dashboard stays up until Ctrl-C/SIGTERM
    (a normal end, not a failure)."""
    try:
        while not procs.dead():
            time.sleep(1.0)
    except (Interrupted, KeyboardInterrupt):
        return
    raise DemoStepError(f"processes exited while serving: {', '.join(procs.dead())}")


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _fetch_device_keys(server, devices, out: Path) -> list[Path]:  # type: ignore[no-untyped-def]
    """Each enrolled device's public key, from the server's device records (bundles are
    encrypted to these; the private halves never left the devices' tokens)."""
    from edgepkg import keys as ekeys

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for d in devices:
        pem = server.device(d.device_id)["public_key_pem"].encode()
        if ekeys.public_key_id(ekeys.load_public_key(pem)) != d.device_id:
            raise DemoStepError(f"{d.name}: server key does not match its device id")
        path = out / f"{d.name}.pub.pem"
        path.write_bytes(pem)
        paths.append(path)
    return paths
