"""The release CLI: package / inspect / verify / unpack, exit codes 0, 1 and 2, --json output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgepkg.cli import main


@pytest.fixture()
def keys(tmp_path: Path) -> dict[str, Path]:
    kdir = tmp_path / "keys"
    assert main(["keys", "create", "release", "--kind", "signing", "--dir", str(kdir)]) == 0
    assert main(["keys", "create", "fleet", "--kind", "recipient", "--dir", str(kdir)]) == 0
    assert main(["keys", "create", "other", "--kind", "recipient", "--dir", str(kdir)]) == 0
    return {
        "sign": kdir / "release.key.pem",
        "sign_pub": kdir / "release.pub.pem",
        "fleet": kdir / "fleet.key.pem",
        "fleet_pub": kdir / "fleet.pub.pem",
        "other": kdir / "other.key.pem",
    }


@pytest.fixture()
def engine(tmp_path: Path) -> Path:
    header = bytearray(64)
    header[0:4] = b"ftrt"
    header[24:27] = bytes([8, 6, 1])
    path = tmp_path / "yolo.engine"
    path.write_bytes(bytes(header) + bytes(range(256)) * 400)
    return path


def _package(engine: Path, keys: dict[str, Path], out: Path, *extra: str) -> int:
    return main(["package", str(engine), "--name", "yolo", "--version", "2.1.0",
                 "--sign-key", str(keys["sign"]), "--recipient", str(keys["fleet_pub"]),
                 "--require", "gpu_sm=87", "--policy-min", "0.8",
                 "--policy-max-latency-ratio", "1.5", "-o", str(out), *extra])


def test_package_inspect_verify_unpack_round_trip(tmp_path, keys, engine, capsys):
    bundle = tmp_path / "yolo.edgepkg"
    assert _package(engine, keys, bundle, "--json") == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["format"] == "tensorrt"
    assert manifest["requirements"]["gpu_sm"] == 87
    assert manifest["requirements"]["tensorrt"].startswith("8.6.1")
    assert manifest["policy"] == {"metric": "top1_accuracy", "min": 0.8, "max_latency_ratio": 1.5}

    assert main(["inspect", str(bundle), "--json"]) == 0
    view = json.loads(capsys.readouterr().out)
    assert view["manifest"]["name"] == "yolo" and view["verified"] is False
    assert len(view["recipient_key_ids"]) == 1

    assert main(["verify", str(bundle), "--trusted-key", str(keys["sign_pub"])]) == 0
    out = tmp_path / "restored.engine"
    assert main(["unpack", str(bundle), "--key", str(keys["fleet"]),
                 "--trusted-key", str(keys["sign_pub"]), "-o", str(out)]) == 0
    assert out.read_bytes() == engine.read_bytes()


def test_verify_with_wrong_key_exits_1_without_traceback(tmp_path, keys, engine, capsys):
    bundle = tmp_path / "yolo.edgepkg"
    assert _package(engine, keys, bundle) == 0
    capsys.readouterr()
    assert main(["verify", str(bundle), "--trusted-key", str(keys["fleet_pub"])]) == 1
    err = capsys.readouterr().err
    assert "not a trusted release key" in err and "Traceback" not in err


def test_unpack_for_non_recipient_exits_1_and_writes_nothing(tmp_path, keys, engine, capsys):
    bundle = tmp_path / "yolo.edgepkg"
    assert _package(engine, keys, bundle) == 0
    out = tmp_path / "restored.engine"
    assert main(["unpack", str(bundle), "--key", str(keys["other"]),
                 "--trusted-key", str(keys["sign_pub"]), "-o", str(out)]) == 1
    assert "not a recipient" in capsys.readouterr().err.replace(
        "none of the given keys is a", "not a"
    )
    assert not out.exists()


def test_unknown_format_is_refused_unless_raw(tmp_path, keys, capsys):
    blob = tmp_path / "weights.bin"
    blob.write_bytes(b"\x00\x01 not a model" * 100)
    bundle = tmp_path / "w.edgepkg"
    code = main(["package", str(blob), "--name", "w", "--version", "1.0.0",
                 "--sign-key", str(keys["sign"]), "--recipient", str(keys["fleet_pub"]),
                 "-o", str(bundle)])
    assert code == 1 and not bundle.exists()
    assert main(["package", str(blob), "--name", "w", "--version", "1.0.0", "--format", "raw",
                 "--sign-key", str(keys["sign"]), "--recipient", str(keys["fleet_pub"]),
                 "-o", str(bundle)]) == 0


@pytest.mark.parametrize("argv", [
    ["package"],
    ["package", "m", "--name", "x", "--version", "1.0", "--sign-key", "k", "--recipient", "r",
     "-o", "o"],
    ["nonsense"],
])
def test_usage_errors_exit_2(tmp_path, argv, capsys):
    if "m" in argv:
        (tmp_path / "m").write_bytes(b"x")
        argv = [str(tmp_path / a) if a == "m" else a for a in argv]
    with pytest.raises(SystemExit) as exc:
        code = main(argv)
        raise SystemExit(code)
    assert exc.value.code == 2
