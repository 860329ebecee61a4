"""Device TUF client: python-tuf Updater + the device fetcher (signing, resume), anchored root.

The repository is built here with python-tuf's metadata API and served by a small local HTTP
server that honours Range and can cut a download midway (to test resume across restarts).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from device_updater.http import DeviceAuth
from device_updater.tuf_client import (
    DeviceFetcher,
    MetadataExpiredError,
    TargetNotFoundError,
    TrustAnchorMismatchError,
    TufSession,
    TufTransportError,
    TufVerificationError,
    install_trusted_root,
    load_anchored_root,
)

ROLES = ("root", "timestamp", "snapshot", "targets")


class TinyRepo:
    """A consistent-snapshot TUF repository on disk, written with python-tuf's metadata API."""

    def __init__(self, base: Path, expires_in: timedelta = timedelta(days=7)) -> None:
        self.base = base
        self.meta_dir = base / "metadata"
        self.targets_dir = base / "targets"
        self.meta_dir.mkdir(parents=True)
        self.targets_dir.mkdir(parents=True)
        self.expires_in = expires_in
        self.signers = {role: CryptoSigner.generate_ed25519() for role in ROLES}
        exp = self._expiry()
        self.root = Metadata(Root(expires=exp, consistent_snapshot=True))
        for role in ROLES:
            self.root.signed.add_key(self.signers[role].public_key, role)
        self.targets = Metadata(Targets(expires=exp))
        self.snapshot = Metadata(Snapshot(expires=exp))
        self.timestamp = Metadata(Timestamp(expires=exp))
        self._write("root", self.root, versioned=True)
        self.publish()

    def _expiry(self) -> datetime:
        return (datetime.now(UTC) + self.expires_in).replace(microsecond=0)

    def _write(self, role: str, md: Metadata, *, versioned: bool) -> bytes:
        md.signatures.clear()
        md.sign(self.signers[role])
        data = md.to_bytes()
        name = f"{md.signed.version}.{role}.json" if versioned else f"{role}.json"
        (self.meta_dir / name).write_bytes(data)
        return data

    @property
    def root_bytes(self) -> bytes:
        return (self.meta_dir / "1.root.json").read_bytes()

    def add_target(self, name: str, data: bytes) -> TargetFile:
        tf = TargetFile.from_data(name, data, ["sha256"])
        self.targets.signed.targets[name] = tf
        dirname, _, basename = name.rpartition("/")
        out = self.targets_dir / dirname / f"{tf.hashes['sha256']}.{basename}"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        return tf

    def target_file(self, name: str) -> Path:
        tf = self.targets.signed.targets[name]
        dirname, _, basename = name.rpartition("/")
        return self.targets_dir / dirname / f"{tf.hashes['sha256']}.{basename}"

    def publish(self, *, expires_in: timedelta | None = None) -> None:
        if expires_in is not None:
            self.expires_in = expires_in
        exp = self._expiry()
        for md in (self.targets, self.snapshot, self.timestamp):
            md.signed.expires = exp
        self.targets.signed.version += 1
        self._write("targets", self.targets, versioned=True)
        self.snapshot.signed.meta["targets.json"] = MetaFile(self.targets.signed.version)
        self.snapshot.signed.version += 1
        self._write("snapshot", self.snapshot, versioned=True)
        self.timestamp.signed.snapshot_meta = MetaFile(self.snapshot.signed.version)
        self.timestamp.signed.version += 1
        self._write("timestamp", self.timestamp, versioned=False)


class RepoServer:
    """Serves a directory over HTTP with Range support; can cut the next N downloads midway."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.cut_after: int | None = None  # bytes to send before dropping the connection
        self.cuts_left = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests.append((self.path, dict(self.headers.items())))
                path = (outer.root / self.path.lstrip("/")).resolve()
                if not str(path).startswith(str(outer.root.resolve())) or not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start, status = 0, 200
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes=") and rng.endswith("-"):
                    start = int(rng[6:-1])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    status = 206
                body = data[start:]
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if outer.cuts_left > 0 and outer.cut_after is not None and "/targets/" in self.path:
                    outer.cuts_left -= 1
                    self.wfile.write(body[: outer.cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a client hanging up on a cut download is expected here

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def repo(tmp_path: Path) -> TinyRepo:
    return TinyRepo(tmp_path / "repo")


@pytest.fixture
def server(repo: TinyRepo) -> Iterator[RepoServer]:
    srv = RepoServer(repo.base)
    yield srv
    srv.close()


def make_session(state: Path, server: RepoServer, anchor: str, *, auth: DeviceAuth | None = None,
                 fetcher: DeviceFetcher | None = None) -> TufSession:
    targets_url = f"{server.url}/targets/"
    fetcher = fetcher or DeviceFetcher(auth=auth, resume_dir=state / "partial",
                                       resume_prefixes=(targets_url,), read_timeout=5)
    return TufSession(
        state / "tuf" / "metadata", f"{server.url}/metadata/", targets_url,
        bootstrap_root=load_anchored_root(state / "tuf", anchor), fetcher=fetcher,
        target_dir=state / "downloads",
    )


def test_downloads_and_verifies_target_with_anchored_root(tmp_path: Path, repo: TinyRepo,
                                                          server: RepoServer) -> None:
    data = os.urandom(300_000)
    repo.add_target("models/m/1.0.0/m-1.0.0.edgepkg", data)
    repo.publish()
    anchor = install_trusted_root(tmp_path / "dev" / "tuf", repo.root_bytes)
    session = make_session(tmp_path / "dev", server, anchor)
    info = session.target_info("models/m/1.0.0/m-1.0.0.edgepkg")
    path = session.fetch(info)
    assert path.read_bytes() == data
    # cached: no second download
    n = len(server.requests)
    assert make_session(tmp_path / "dev", server, anchor).fetch(info) == path
    assert len(server.requests) == n


def test_swapped_root_on_disk_is_refused(tmp_path: Path, repo: TinyRepo) -> None:
    anchor = install_trusted_root(tmp_path / "tuf", repo.root_bytes)
    evil = TinyRepo(tmp_path / "evil")
    (tmp_path / "tuf" / "trusted-root.json").write_bytes(evil.root_bytes)
    with pytest.raises(TrustAnchorMismatchError, match="does not match the root anchor"):
        load_anchored_root(tmp_path / "tuf", anchor)


def test_root_symlink_swap_in_metadata_dir_is_ignored(tmp_path: Path, repo: TinyRepo,
                                                      server: RepoServer) -> None:
    """The Updater bootstraps from the anchored root, never from the writable root.json."""
    repo.add_target("a.bin", b"genuine")
    repo.publish()
    anchor = install_trusted_root(tmp_path / "tuf", repo.root_bytes)
    make_session(tmp_path, server, anchor).refresh()
    evil = TinyRepo(tmp_path / "evil")
    md_dir = tmp_path / "tuf" / "metadata"
    (md_dir / "root.json").unlink()
    (md_dir / "root.json").write_bytes(evil.root_bytes)
    (md_dir / "root_history" / "2.root.json").write_bytes(evil.root_bytes)  # fake "newer" root
    session = make_session(tmp_path, server, anchor)
    assert session.fetch(session.target_info("a.bin")).read_bytes() == b"genuine"


def test_tampered_target_is_refused_and_not_kept(tmp_path: Path, repo: TinyRepo,
                                                 server: RepoServer) -> None:
    repo.add_target("m.bin", b"A" * 50_000)
    repo.publish()
    repo.target_file("m.bin").write_bytes(b"B" * 50_000)
    anchor = install_trusted_root(tmp_path / "tuf", repo.root_bytes)
    session = make_session(tmp_path, server, anchor)
    with pytest.raises(TufVerificationError):
        session.fetch(session.target_info("m.bin"))
    assert not list((tmp_path / "partial").glob("*.partial"))
    assert not (tmp_path / "downloads" / "m.bin").exists()


def test_oversized_target_is_cut_at_signed_length(tmp_path: Path, repo: TinyRepo,
                                                  server: RepoServer) -> None:
    repo.add_target("m.bin", b"A" * 1000)
    repo.publish()
    repo.target_file("m.bin").write_bytes(b"A" * 5_000_000)  # endless-data attack
    anchor = install_trusted_root(tmp_path / "tuf", repo.root_bytes)
    session = make_session(tmp_path, server, anchor)
    with pytest.raises(TufVerificationError, match="longer than signed length"):
        session.fetch(session.target_info("m.bin"))


def test_truncated_download_resumes_after_restart_and_is_verified(
    tmp_path: Path, repo: TinyRepo, server: RepoServer
) -> None:
    data = os.urandom(1_000_000)
    repo.add_target("models/m/2.0.0/m-2.0.0.edgepkg", data)
    repo.publish()
    anchor = install_trusted_root(tmp_path / "tuf", repo.root_bytes)
    server.cut_after, server.cuts_left = 400_000, 1
    session = make_session(tmp_path, server, anchor)
    info = session.target_info("models/m/2.0.0/m-2.0.0.edgepkg")
    with pytest.raises((TufTransportError, TufVerificationError)):
        session.fetch(info)
    partials = list((tmp_path / "partial").glob("*.partial"))
    assert len(partials) == 1 and 0 < partials[0].stat().st_size <= 400_000
    kept = partials[0].stat().st_size

    # "restart": a new session (new Updater, new fetcher) continues from the partial file
    server.requests.clear()
    session = make_session(tmp_path, server, anchor)
    path = session.fetch(session.target_info("models/m/2.0.0/m-2.0.0.edgepkg"))
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()
    target_gets = [h for p, h in server.requests if "/targets/" in p]
    assert target_gets and target_gets[0].get("Range") == f"bytes={kept}-"
    assert not list((tmp_path / "partial").glob("*.partial"))


def test_corrupted_partial_file_is_refused_then_redownloaded(
    tmp_path: Path, repo: TinyRepo, server: RepoServer
) -> None:
    data = os.urandom(200_000)
    repo.add_target("m.bin", data)
    repo.publish()
    anchor = install_trusted_root(tmp_path / "tuf", repo.root_bytes)
    server.cut_after, server.cuts_left = 100_000, 1
    session = make_session(tmp_path, server, anchor)
    info = session.target_info("m.bin")
    with pytest.raises(TufTransportError):
        session.fetch(info)
    part = next((tmp_path / "partial").glob("*.partial"))
    part.write_bytes(b"\0" * part.stat().st_size)  # damaged on disk (attacker or power cut)
    with pytest.raises(TufVerificationError):
        make_session(tmp_path, server, anchor).fetch(info)
    assert make_session(tmp_path, server, anchor).fetch(info).read_bytes() == data


def test_expired_metadata_blocks_update(tmp_path: Path, repo: TinyRepo, server: RepoServer) -> None:
    anchor = install_trusted_root(tmp_path / "tuf", repo.root_bytes)
    make_session(tmp_path, server, anchor).refresh()
    repo.publish(expires_in=timedelta(seconds=-60))
    with pytest.raises(MetadataExpiredError, match="expired"):
        make_session(tmp_path, server, anchor).refresh()


def test_unknown_target_is_reported(tmp_path: Path, repo: TinyRepo, server: RepoServer) -> None:
    anchor = install_trusted_root(tmp_path / "tuf", repo.root_bytes)
    with pytest.raises(TargetNotFoundError, match="not in the signed"):
        make_session(tmp_path, server, anchor).target_info("models/x/9.9.9/x.edgepkg")


def test_unreachable_server_is_a_transport_error(tmp_path: Path, repo: TinyRepo) -> None:
    anchor = install_trusted_root(tmp_path / "tuf", repo.root_bytes)
    srv = RepoServer(repo.base)
    srv.close()
    with pytest.raises(TufTransportError):
        make_session(tmp_path, srv, anchor).refresh()


def test_fetcher_signs_every_request(tmp_path: Path, repo: TinyRepo, server: RepoServer) -> None:
    repo.add_target("a.bin", b"x")
    repo.publish()
    anchor = install_trusted_root(tmp_path / "tuf", repo.root_bytes)
    auth = DeviceAuth("d" * 64, lambda data: b"sig:" + hashlib.sha256(data).digest())
    session = make_session(tmp_path, server, anchor, auth=auth)
    session.fetch(session.target_info("a.bin"))
    assert server.requests
    nonces = {h["X-Edgepkg-Nonce"] for _, h in server.requests}
    assert len(nonces) == len(server.requests)
    assert all(h["X-Edgepkg-Device"] == "d" * 64 for _, h in server.requests)


def copy_repo(repo: TinyRepo, dest: Path) -> None:
    shutil.copytree(repo.base, dest)
