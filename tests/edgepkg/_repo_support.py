"""Helpers for the repository tests (no tests here): test keys, a directory fetcher for
python-tuf's ngclient, and a client factory bootstrapped on a given root version."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from tuf.api.exceptions import DownloadHTTPError
from tuf.ngclient import Updater
from tuf.ngclient.fetcher import FetcherInterface

BASE = "http://repo.test"


def write_key(path: Path, kind: str = "ed25519") -> str:
    """A fresh TEST key as an unencrypted PKCS#8 PEM file; returns its path as a reference."""
    key = (
        ed25519.Ed25519PrivateKey.generate()
        if kind == "ed25519"
        else ec.generate_private_key(ec.SECP256R1())
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption())
    )
    os.chmod(path, 0o600)
    return str(path)


def write_public(private_ref: str, path: Path) -> str:
    key = serialization.load_pem_private_key(Path(private_ref).read_bytes(), None)
    path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return str(path)


class DirFetcher(FetcherInterface):
    """Serves ``BASE/<path>`` from a directory, with 404 for missing files (as a web server)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.fetched: list[str] = []

    def _fetch(self, url: str) -> Iterator[bytes]:
        path = urlparse(url).path.lstrip("/")
        full = (self.root / path).resolve()
        if not full.is_relative_to(self.root) or not full.is_file():
            raise DownloadHTTPError(f"not found: {path}", 404)
        self.fetched.append(path)
        return iter([full.read_bytes()])


def make_client(repo: Path, client_dir: Path, root_version: int = 1) -> Updater:
    """An ngclient Updater whose trust anchor is ``root_version`` of the repository's root."""
    client_dir.mkdir(parents=True, exist_ok=True)
    (client_dir / "targets").mkdir(exist_ok=True)
    bootstrap = (repo / "metadata" / f"{root_version}.root.json").read_bytes()
    return Updater(
        metadata_dir=str(client_dir),
        metadata_base_url=f"{BASE}/metadata/",
        target_dir=str(client_dir / "targets"),
        target_base_url=f"{BASE}/targets/",
        fetcher=DirFetcher(repo),
        bootstrap=bootstrap,
    )


def role_keys(
    tmp: Path, roles=("root", "targets", "snapshot", "timestamp"), kind: str = "ed25519"
) -> dict[str, list[str]]:
    tmp.mkdir(parents=True, exist_ok=True)
    return {r: [write_key(tmp / f"{r}.pem", kind)] for r in roles}
