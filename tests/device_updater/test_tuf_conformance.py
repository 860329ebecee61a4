"""The TUF conformance client-under-test CLI, run against a python-tuf-built repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from device_updater.conformance import main
from tests.device_updater.test_tuf import RepoServer, TinyRepo


@pytest.fixture
def repo(tmp_path: Path) -> TinyRepo:
    return TinyRepo(tmp_path / "repo")


@pytest.fixture
def server(repo: TinyRepo) -> Iterator[RepoServer]:
    srv = RepoServer(repo.base)
    yield srv
    srv.close()


def _init(tmp_path: Path, repo: TinyRepo) -> Path:
    root = tmp_path / "trusted-root.json"
    root.write_bytes(repo.root_bytes)
    md = tmp_path / "client"
    md.mkdir()
    assert main(["--metadata-dir", str(md), "init", str(root)]) == 0
    return md


def test_init_stores_root_and_refuses_garbage(tmp_path: Path, repo: TinyRepo) -> None:
    md = _init(tmp_path, repo)
    assert (md / "root.json").read_bytes() == repo.root_bytes
    bad = tmp_path / "bad.json"
    bad.write_text('{"signed": {}}')
    assert main(["--metadata-dir", str(tmp_path / "c2"), "init", str(bad)]) == 1


def test_refresh_stores_unversioned_trusted_metadata(tmp_path: Path, repo: TinyRepo,
                                                     server: RepoServer) -> None:
    md = _init(tmp_path, repo)
    assert main(["--metadata-dir", str(md), "--metadata-url", f"{server.url}/metadata",
                 "refresh"]) == 0
    for role in ("root", "timestamp", "snapshot", "targets"):
        assert (md / f"{role}.json").is_file()


def test_refresh_fails_on_tampered_timestamp(tmp_path: Path, repo: TinyRepo,
                                             server: RepoServer) -> None:
    md = _init(tmp_path, repo)
    ts = repo.meta_dir / "timestamp.json"
    doc = json.loads(ts.read_bytes())
    doc["signed"]["version"] += 7  # signature no longer matches
    ts.write_text(json.dumps(doc))
    assert main(["--metadata-dir", str(md), "--metadata-url", f"{server.url}/metadata",
                 "refresh"]) == 1


def test_download_targets_in_order_and_uses_cache(tmp_path: Path, repo: TinyRepo,
                                                  server: RepoServer) -> None:
    repo.add_target("dir/a.bin", b"alpha")
    repo.add_target("b.bin", b"beta")
    repo.publish()
    md = _init(tmp_path, repo)
    tdir = tmp_path / "targets"
    argv = ["--metadata-dir", str(md), "--metadata-url", f"{server.url}/metadata",
            "--target-name", "dir/a.bin", "--target-name", "b.bin",
            "--target-base-url", f"{server.url}/targets", "--target-dir", str(tdir), "download"]
    assert main(argv) == 0
    assert (tdir / quote("dir/a.bin", "")).read_bytes() == b"alpha"
    assert (tdir / "b.bin").read_bytes() == b"beta"
    server.requests.clear()
    assert main(argv) == 0
    assert not [p for p, _ in server.requests if "/targets/" in p]  # cached, hashes match


def test_download_stops_at_first_missing_target(tmp_path: Path, repo: TinyRepo,
                                                server: RepoServer) -> None:
    repo.add_target("b.bin", b"beta")
    repo.publish()
    md = _init(tmp_path, repo)
    tdir = tmp_path / "targets"
    assert main(["--metadata-dir", str(md), "--metadata-url", f"{server.url}/metadata",
                 "--target-name", "missing.bin", "--target-name", "b.bin",
                 "--target-base-url", f"{server.url}/targets", "--target-dir", str(tdir),
                 "download"]) == 1
    assert not (tdir / "b.bin").exists()


def test_download_refuses_tampered_target(tmp_path: Path, repo: TinyRepo,
                                          server: RepoServer) -> None:
    repo.add_target("b.bin", b"beta")
    repo.publish()
    repo.target_file("b.bin").write_bytes(b"evil")
    md = _init(tmp_path, repo)
    assert main(["--metadata-dir", str(md), "--metadata-url", f"{server.url}/metadata",
                 "--target-name", "b.bin", "--target-base-url", f"{server.url}/targets",
                 "--target-dir", str(tmp_path / "t"), "download"]) == 1


def test_module_entry_point_usage_error_exits_2(tmp_path: Path, repo_root: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "device_updater.conformance", "refresh"],
                          check=False, capture_output=True, text=True, cwd=repo_root,
                          env={**os.environ, "PYTHONPATH": str(repo_root)})
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
