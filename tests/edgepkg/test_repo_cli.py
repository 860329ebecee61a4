"""`edgepkg repo ...` and `edgepkg publish` from the command line: output and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgepkg import keys as ekeys
from edgepkg.bundle import write_bundle
from edgepkg.cli import main
from tests.edgepkg._repo_support import make_client, write_key, write_public


@pytest.fixture()
def keys(tmp_path: Path) -> dict[str, str]:
    d = tmp_path / "keys"
    d.mkdir()
    k = {
        r: write_key(d / f"{r}.pem")
        for r in ("root", "root2", "targets", "snapshot", "timestamp", "release")
    }
    k["archive"] = write_key(d / "archive.pem", "p256")
    k["fleet"] = write_key(d / "fleet.pem", "p256")
    k["fleet_pub"] = write_public(k["fleet"], d / "fleet.pub.pem")
    k["release_pub"] = write_public(k["release"], d / "release.pub.pem")
    return k


def _init(repo: Path, k: dict[str, str], *extra: str) -> int:
    return main(
        [
            "repo",
            "init",
            str(repo),
            "--key",
            f"root={k['root']}",
            "--key",
            f"root={k['root2']}",
            "--threshold",
            "root=2",
            "--key",
            f"targets={k['targets']}",
            "--key",
            f"snapshot={k['snapshot']}",
            "--key",
            f"timestamp={k['timestamp']}",
            "--release-key",
            k["release_pub"],
            "--release-signer",
            k["release"],
            "--archive-key",
            k["archive"],
            "--recipient",
            k["fleet_pub"],
            *extra,
        ]
    )


def _bundle(
    tmp: Path, k: dict[str, str], version: str, data: bytes, signer: str | None = None
) -> str:
    model = tmp / f"m-{version}.bin"
    model.write_bytes(data)
    out = tmp / f"det-{version}.edgepkg"
    write_bundle(
        model,
        out,
        manifest_fields={"name": "det", "version": version, "format": "raw"},
        signer=ekeys.load_signer(signer or k["release"]),
        recipients=[ekeys.load_public_key(k["fleet_pub"]), ekeys.load_public_key(k["archive"])],
    )
    return str(out)


def test_cli_init_publish_status_revoke(tmp_path: Path, keys, capsys) -> None:
    repo = tmp_path / "repo"
    assert _init(repo, keys, "--json") == 0
    init = json.loads(capsys.readouterr().out)
    assert len(init["keyids"]["root"]) == 2
    assert (
        main(
            [
                "publish",
                _bundle(tmp_path, keys, "1.0.0", b"\x00" * 100_000),
                "--repo",
                str(repo),
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["published"][0]["target_path"] == "models/det/1.0.0/det-1.0.0.edgepkg"
    assert main(["repo", "status", str(repo), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["roles"]["root"]["threshold"] == 2 and "1.0.0" in st["models"]["det"]
    assert main(["repo", "status", str(repo)]) == 0
    assert "model det" in capsys.readouterr().out
    assert main(["repo", "revoke", str(repo), "det", "1.0.0", "--reason", "bad"]) == 0
    capsys.readouterr()
    make_client(repo, tmp_path / "client").refresh()


def test_cli_publish_unknown_signer_exits_1_with_message(tmp_path: Path, keys, capsys) -> None:
    repo = tmp_path / "repo"
    _init(repo, keys)
    rogue = write_key(tmp_path / "keys" / "rogue.pem")
    code = main(
        [
            "publish",
            _bundle(tmp_path, keys, "1.0.0", b"x" * 1000, signer=rogue),
            "--repo",
            str(repo),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "release key" in err and "Traceback" not in err


def test_cli_publish_older_version_exits_1(tmp_path: Path, keys, capsys) -> None:
    repo = tmp_path / "repo"
    _init(repo, keys)
    assert (
        main(["publish", _bundle(tmp_path, keys, "2.0.0", b"x" * 1000), "--repo", str(repo)]) == 0
    )
    (tmp_path / "b").mkdir()
    assert (
        main(["publish", _bundle(tmp_path / "b", keys, "1.9.0", b"y" * 1000), "--repo", str(repo)])
        == 1
    )
    assert "not newer" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["repo", "init", "R", "--key", "nosuchrole=x"],
    ["repo", "init", "R", "--key", "root"],
    ["repo", "rotate", "R", "mirror", "--add", "x"],
])
def test_cli_usage_errors_exit_2(argv: list[str], tmp_path: Path, capsys) -> None:
    argv = [str(tmp_path / "r") if a == "R" else a for a in argv]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = int(exc.code or 0)
    assert code == 2
    assert not (tmp_path / "r").exists()


def test_cli_refresh_exit_codes_for_monitoring(tmp_path: Path, keys, capsys) -> None:
    repo = tmp_path / "repo"
    _init(repo, keys, "--expires", "targets=2d")
    capsys.readouterr()
    assert main(["repo", "refresh", str(repo), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["resigned"] == []
    assert main(["repo", "refresh", str(repo), "--force", "--role", "timestamp"]) == 0
    assert "timestamp" in capsys.readouterr().out
    repo2 = tmp_path / "repo2"
    _init(repo2, keys, "--expires", "targets=1s")
    import time

    time.sleep(1.1)
    assert main(["repo", "refresh", str(repo2)]) == 4
    assert "CRITICAL" in capsys.readouterr().err
    missing = tmp_path / "nothing"
    assert main(["repo", "refresh", str(missing)]) == 1


def test_cli_rotate_root_with_threshold_two(tmp_path: Path, keys, capsys) -> None:
    repo = tmp_path / "repo"
    _init(repo, keys)
    capsys.readouterr()
    new = write_key(tmp_path / "keys" / "root3.pem")
    old = ekeys.public_key_id(ekeys.load_public_key(keys["root"]))
    assert main(["repo", "rotate", str(repo), "root", "--add", new, "--remove", old, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["root_version"] == 2 and old not in out["keyids"] and out["threshold"] == 2
    client = make_client(repo, tmp_path / "client", root_version=1)
    client.refresh()
    assert client._trusted_set.root.version == 2
