"""The CLI conventions of all three command lines, run through ``main(argv)`` and the real
console scripts: one-line errors, ``--json`` errors, exit codes, a quiet closed pipe, each
warning once, ``edge-updater check`` text unless ``--json``, text logs that carry fields."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import device_updater.cli
import edgepkg.cli
import update_server.cli

ROOT = Path(__file__).resolve().parents[2]


def _script(name: str, module: str) -> list[str]:
    """The installed console script when there is one (what a user runs), else ``-m``."""
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", module]


SCRIPTS = {
    "edgepkg": _script("edgepkg", "edgepkg.cli"),
    "edgepkg-server": _script("edgepkg-server", "update_server"),
    "edge-updater": _script("edge-updater", "device_updater"),
}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.fixture()
def keys(tmp_path: Path) -> dict[str, Path]:
    kdir = tmp_path / "keys"
    assert edgepkg.cli.main(["keys", "create", "rel", "--kind", "signing", "--dir", str(kdir)]) == 0
    assert edgepkg.cli.main(["keys", "create", "fleet", "--kind", "recipient", "--dir",
                             str(kdir)]) == 0
    return {"sign": kdir / "rel.key.pem", "sign_pub": kdir / "rel.pub.pem",
            "fleet": kdir / "fleet.key.pem", "fleet_pub": kdir / "fleet.pub.pem"}


def _package_argv(model: Path, keys: dict[str, Path], out: Path) -> list[str]:
    return ["package", str(model), "--name", "m", "--version", "1.0.0", "--format", "raw",
            "--sign-key", str(keys["sign"]), "--recipient", str(keys["fleet_pub"]), "-o", str(out)]


def _one_error_line(err: str, prog: str = "edgepkg") -> str:
    lines = [line for line in err.splitlines() if not line.startswith(f"{prog}: warning:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith(f"{prog}: error: ")
    return lines[0]


def test_missing_input_files_are_one_line_errors_exit_1(tmp_path, keys, capsys) -> None:
    missing = str(tmp_path / "nope.edgepkg")
    pub, key = str(keys["sign_pub"]), str(keys["fleet"])
    capsys.readouterr()
    for argv in (
        ["inspect", missing],
        ["verify", missing, "--trusted-key", pub],
        ["unpack", missing, "--key", key, "--trusted-key", pub, "-o", str(tmp_path / "o")],
        _package_argv(tmp_path / "nope.onnx", keys, tmp_path / "x.edgepkg"),
    ):
        assert edgepkg.cli.main(argv) == 1, argv
        line = _one_error_line(capsys.readouterr().err)
        assert "No such file or directory" in line and "nope." in line, line


def test_missing_output_directory_names_the_directory(tmp_path, keys, capsys) -> None:
    model = tmp_path / "m.bin"
    model.write_bytes(os.urandom(3000))
    capsys.readouterr()
    assert edgepkg.cli.main(_package_argv(model, keys, tmp_path / "nodir" / "m.edgepkg")) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "output directory does not exist" in line and str(tmp_path / "nodir") in line
    assert ".tmp" not in line


def test_verbose_shows_the_traceback(tmp_path, capsys) -> None:
    assert edgepkg.cli.main(["-v", "inspect", str(tmp_path / "nope")]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_json_errors_are_json_on_stderr(tmp_path, keys, capsys) -> None:
    capsys.readouterr()
    assert edgepkg.cli.main(["inspect", str(tmp_path / "nope"), "--json"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    doc = json.loads(err)
    assert doc["error"]["type"] == "FileNotFoundError"
    assert "No such file or directory" in doc["error"]["message"]
    # a deliberate edgepkg error and a usage error too
    other = tmp_path / "o.pub.pem"
    assert edgepkg.cli.main(["keys", "create", "o", "--kind", "recipient", "--dir",
                             str(tmp_path)]) == 0
    capsys.readouterr()
    bundle = tmp_path / "b.edgepkg"
    model = tmp_path / "m.bin"
    model.write_bytes(b"x" * 500)
    assert edgepkg.cli.main(_package_argv(model, keys, bundle)) == 0
    capsys.readouterr()
    assert edgepkg.cli.main(["verify", str(bundle), "--trusted-key", str(other), "--json"]) == 1
    assert json.loads(capsys.readouterr().err)["error"]["type"] == "UnknownSignerError"
    with pytest.raises(SystemExit) as exc:
        edgepkg.cli.main(["verify", "--json"])  # the bundle argument is missing
    assert exc.value.code == 2
    doc = json.loads(capsys.readouterr().err)
    assert doc["error"]["type"] == "UsageError" and "bundle" in doc["error"]["message"]


def test_server_and_updater_json_errors(tmp_path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}"
    assert update_server.cli.main(["--database-url", url, "--json", "init-db"]) == 1
    doc = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert set(doc["error"]) == {"type", "message"}
    assert device_updater.cli.main(["-c", str(tmp_path / "none.toml"), "status", "--json"]) == 1
    doc = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert doc["error"]["type"] == "ConfigError"


def test_file_key_warning_is_printed_once(tmp_path: Path) -> None:
    # The console script, not main(): pytest's own log capture would hide the logged copy.
    proc = subprocess.run([*SCRIPTS["edgepkg"], "keys", "create", "dev", "--kind", "signing",
                           "--dir", str(tmp_path)], capture_output=True, text=True, env=_env(),
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("development") == 1, proc.stderr
    assert proc.stderr.startswith("edgepkg: warning: ")


def _into_closed_pipe(argv: list[str]) -> tuple[int, str]:
    """Run a console script whose reader is gone before it writes (like ``| head`` after its
    lines); return its exit status and stderr."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    return proc.wait(timeout=120), err


def test_server_and_updater_into_a_closed_pipe_are_quiet(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'server.db'}"
    assert update_server.cli.main(["--database-url", url, "init-db"]) == 0
    rc, err = _into_closed_pipe([*SCRIPTS["edgepkg-server"], "--database-url", url,
                                 "create-token", "--role", "viewer", "--name", "pipe"])
    assert rc == 141 and err == "", err
    cfg = _offline_device(tmp_path)
    rc, err = _into_closed_pipe([*SCRIPTS["edge-updater"], "-c", str(cfg), "status"])
    assert rc == 141 and "Traceback" not in err and "Exception ignored" not in err, err


def test_repo_status_into_a_closed_pipe_is_quiet(tmp_path: Path, keys) -> None:
    repo = tmp_path / "repo"
    k = str(keys["sign"])
    assert edgepkg.cli.main(["repo", "init", str(repo), "--key", f"root={k}", "--key",
                             f"targets={k}", "--key", f"snapshot={k}", "--key",
                             f"timestamp={k}"]) == 0
    rc, err = _into_closed_pipe([*SCRIPTS["edgepkg"], "repo", "status", str(repo)])
    assert rc == 141 and "Traceback" not in err and "Exception ignored" not in err, err


@pytest.mark.parametrize("prog", sorted(SCRIPTS))
def test_console_script_usage_error_exits_2_in_one_line(prog: str) -> None:
    proc = subprocess.run([*SCRIPTS[prog], "--no-such-option"], capture_output=True, text=True,
                          env=_env(), timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"{prog}: error: ")


def _offline_device(tmp_path: Path) -> Path:
    """An enrolled-looking device whose server is unreachable (port 9, discard)."""
    from device_updater.keystore import FileKeystore

    state = tmp_path / "state"
    state.mkdir()
    (state / "enrollment.json").write_text(json.dumps(
        {"device_id": "dev-1", "server_url": "http://127.0.0.1:9", "poll_interval": 60}))
    FileKeystore(tmp_path / "keys").ensure_device_key()
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"""
[server]
url = "http://127.0.0.1:9"
[device]
state_dir = "{state}"
runtime_dir = "{tmp_path / 'run'}"
[keystore]
type = "file"
dir = "{tmp_path / 'keys'}"
[log]
json = false
""")
    return cfg


def test_updater_check_prints_text_unless_json(tmp_path: Path, capsys) -> None:
    cfg = _offline_device(tmp_path)
    assert device_updater.cli.main(["-c", str(cfg), "check"]) == 1
    out, err = capsys.readouterr()
    assert out.startswith("server: NOT reached") and "{" not in out
    # json = false: the text log line carries the event's fields, not just its message
    assert "check-in failed" in err and "error=" in err and "connection refused" in err
    assert err.count("development") == 1, err  # the FILE keystore's warning, not a 2nd copy
    assert device_updater.cli.main(["-c", str(cfg), "check", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["online"] is False


def test_text_log_lines_carry_extra_fields() -> None:
    rec = logging.LogRecord("edge_updater", logging.INFO, __file__, 1, "state", None, None)
    rec.model, rec.phase, rec.reason = "detector", "TRIAL", "holdout ok"
    line = device_updater.cli.TextFormatter().format(rec)
    assert line == 'INFO edge_updater: state model=detector phase=TRIAL reason="holdout ok"'
