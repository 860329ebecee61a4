"""The ``edge-updater`` command line as the inference app and an operator use it (subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from device_updater.cli import JsonFormatter


def _run(*argv: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    args = [sys.executable, "-m", "device_updater"]
    if config is not None:
        args += ["-c", str(config)]
    return subprocess.run([*args, *argv], check=False, capture_output=True, text=True, env=env,
                          timeout=60)


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"""
[server]
url = "http://127.0.0.1:9"
[device]
state_dir = "{tmp_path / 'state'}"
runtime_dir = "{tmp_path / 'run'}"
[keystore]
type = "file"
dir = "{tmp_path / 'keys'}"
[log]
json = true
""")
    return cfg


def test_status_json_on_a_fresh_device(tmp_path: Path) -> None:
    proc = _run("status", "--json", config=_config(tmp_path))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["device_id"] is None and doc["models"] == {} and doc["queued_events"] == 0


def test_report_health_is_persisted_for_the_daemon(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    assert _run("report-health", "--ok", "--latency-ms", "3.5", "--inferences", "12",
                config=cfg).returncode == 0
    assert _run("report-health", "--fail", "--message", "NaN", config=cfg).returncode == 0
    items = json.loads((tmp_path / "state" / "health.json").read_text())
    assert [i["status"] for i in items] == ["healthy", "failing"]
    assert items[0]["latency_p50_ms"] == 3.5 and items[0]["inferences"] == 12


def test_errors_exit_1_without_traceback_and_usage_exits_2(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    proc = _run("check", config=cfg)  # not enrolled
    assert proc.returncode == 1 and "not enrolled" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _run("current-model", config=cfg)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert _run("report-health", config=cfg).returncode == 2  # --ok/--fail required
    assert _run("frobnicate", config=cfg).returncode == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nurl = 'http://x'\nspeed = 3\n")
    proc = _run("status", config=bad)
    assert proc.returncode == 1 and "unknown key" in proc.stderr


def test_json_logs_carry_extra_fields() -> None:
    import logging

    rec = logging.LogRecord("edge_updater", logging.WARNING, __file__, 1, "rolled back", None, None)
    rec.model = "clf"
    doc = json.loads(JsonFormatter().format(rec))
    assert doc["message"] == "rolled back" and doc["model"] == "clf" and doc["level"] == "warning"
