"""TUF files served read-only: Range (206/416), ETag (304), cache headers, path containment."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from update_server.tuf.releases import read_releases

TARGET = "abcd" * 16 + ".detector-1.0.0.edgepkg"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "metadata").mkdir(parents=True)
    (repo / "targets" / "models" / "detector" / "1.0.0").mkdir(parents=True)
    (repo / "metadata" / "timestamp.json").write_text('{"signed": {"version": 7}}')
    (repo / "metadata" / "1.root.json").write_text('{"signed": {"version": 1}}')
    (repo / "metadata" / ".timestamp.json.tmp").write_text("partial")
    payload = bytes(range(256)) * 40  # 10240 bytes
    (repo / "targets" / "models" / "detector" / "1.0.0" / TARGET).write_bytes(payload)
    (tmp_path / "secret.txt").write_text("outside the repository")
    return repo


@pytest.fixture
def client(repo: Path, tmp_path: Path, make_server_app: Callable[..., Flask]) -> FlaskClient:
    app = make_server_app(f"sqlite:///{tmp_path / 'db.sqlite'}", repo_dir=str(repo), testing=True)
    return app.test_client()


TARGET_URL = f"/tuf/targets/models/detector/1.0.0/{TARGET}"


def test_metadata_is_served_with_etag_and_no_cache(client: FlaskClient) -> None:
    r = client.get("/tuf/metadata/timestamp.json")
    assert r.status_code == 200
    assert r.get_json() == {"signed": {"version": 7}}
    assert r.headers["Cache-Control"] == "no-cache"
    etag = r.headers["ETag"]
    again = client.get("/tuf/metadata/timestamp.json", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.data == b""


def test_etag_changes_when_metadata_changes(client: FlaskClient, repo: Path) -> None:
    etag = client.get("/tuf/metadata/timestamp.json").headers["ETag"]
    path = repo / "metadata" / "timestamp.json"
    path.write_text('{"signed": {"version": 8}}')
    os.utime(path, ns=(1, 10**18))
    r = client.get("/tuf/metadata/timestamp.json", headers={"If-None-Match": etag})
    assert r.status_code == 200 and r.get_json()["signed"]["version"] == 8


def test_target_range_requests_resume_a_download(client: FlaskClient, repo: Path) -> None:
    full = client.get(TARGET_URL)
    assert full.status_code == 200 and len(full.data) == 10240
    assert "immutable" in full.headers["Cache-Control"]
    assert full.headers["Accept-Ranges"] == "bytes"
    part = client.get(TARGET_URL, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.data == full.data[100:200]
    assert part.headers["Content-Range"] == "bytes 100-199/10240"
    tail = client.get(TARGET_URL, headers={"Range": "bytes=10000-"})
    assert tail.status_code == 206 and tail.data == full.data[10000:]
    suffix = client.get(TARGET_URL, headers={"Range": "bytes=-40"})
    assert suffix.status_code == 206 and suffix.data == full.data[-40:]
    # If-Range with the current ETag keeps the range; a stale validator gets the whole file.
    etag = full.headers["ETag"]
    r = client.get(TARGET_URL, headers={"Range": "bytes=0-9", "If-Range": etag})
    assert r.status_code == 206
    r = client.get(TARGET_URL, headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
    assert r.status_code == 200 and len(r.data) == 10240


def test_unsatisfiable_range_is_416_json(client: FlaskClient) -> None:
    r = client.get(TARGET_URL, headers={"Range": "bytes=20000-30000"})
    assert r.status_code == 416
    assert r.headers["Content-Range"] == "bytes */10240"
    assert r.get_json()["error"]["code"]


@pytest.mark.parametrize(
    "url",
    [
        "/tuf/metadata/../../secret.txt",
        "/tuf/metadata/..%2f..%2fsecret.txt",
        "/tuf/targets/../metadata/timestamp.json",
        "/tuf/metadata/%2e%2e/%2e%2e/secret.txt",
        "/tuf/metadata/.timestamp.json.tmp",
        "/tuf/metadata/escape.json",
        "/tuf/metadata/nope.json",
        "/tuf/targets/models",
        "/tuf/metadata/a\\..\\..\\secret.txt",
    ],
)
def test_paths_are_contained(client: FlaskClient, repo: Path, url: str) -> None:
    (repo / "metadata" / "escape.json").symlink_to(repo.parent / "secret.txt")
    r = client.get(url)
    assert r.status_code == 404, url
    assert b"outside the repository" not in r.data
    assert r.get_json()["error"]["code"] == "not_found"


def test_symlink_inside_the_repository_is_served(client: FlaskClient, repo: Path) -> None:
    (repo / "metadata" / "timestamp-link.json").symlink_to(repo / "metadata" / "timestamp.json")
    assert client.get("/tuf/metadata/timestamp-link.json").status_code == 200


def test_no_repository_configured_is_404(
    tmp_path: Path, make_server_app: Callable[..., Flask]
) -> None:
    app = make_server_app(f"sqlite:///{tmp_path / 'x.db'}")
    r = app.test_client().get("/tuf/metadata/timestamp.json")
    assert r.status_code == 404


def _write_chain(repo: Path, targets: dict[str, object]) -> None:
    meta = repo / "metadata"
    (meta / "timestamp.json").write_text(
        json.dumps({"signed": {"meta": {"snapshot.json": {"version": 3}}}})
    )
    (meta / "3.snapshot.json").write_text(
        json.dumps({"signed": {"meta": {"targets.json": {"version": 2}}}})
    )
    (meta / "1.targets.json").write_text(json.dumps({"signed": {"targets": {}}}))
    (meta / "2.targets.json").write_text(json.dumps({"signed": {"targets": targets}}))


def test_fallback_reader_lists_current_unrevoked_edgepkg_targets(repo: Path) -> None:
    def ep(version: str, kind: str = "full", **extra: object) -> dict[str, object]:
        return {
            "length": 5,
            "hashes": {"sha256": "ab" * 32},
            "custom": {"edgepkg": {"kind": kind, "name": "detector", "version": version, **extra}},
        }

    _write_chain(
        repo,
        {
            "models/detector/1.0.0/detector-1.0.0.edgepkg": ep("1.0.0"),
            "models/detector/1.1.0/detector-1.1.0.edgepkg": ep("1.1.0", revoked=True),
            "models/detector/1.1.0/delta-from-1.0.0.edgepkg": ep(
                "1.1.0", "delta", delta={"base_version": "1.0.0"}
            ),
            "README.txt": {"length": 1, "hashes": {"sha256": "00" * 32}},
        },
    )
    got = {(r.target_path, r.kind, r.base_version) for r in read_releases(repo)}
    assert got == {
        ("models/detector/1.0.0/detector-1.0.0.edgepkg", "full", None),
        ("models/detector/1.1.0/delta-from-1.0.0.edgepkg", "delta", "1.0.0"),
    }
