"""The key service: at check-in, a key grant for each target the server tells a device to
install, when that device is not a direct recipient of the bundle (docs/security.md, "Key grants").

Where it runs: :func:`with_grants` on the check-in path, after the rollout service proposed and
``safe_assignments`` filtered (so only releases a rollout assigned, to enabled devices, in the
current TUF targets). For each target (full and delta bundles have different data keys) it reads
the bundle *header* from the TUF targets directory the server serves, unwraps the 32-byte data
key with the key-service key (ECDH in its token for a ``pkcs11:`` key) and re-wraps it to the
device key (:func:`edgepkg.grants.make_grant`): the payload is never decrypted, so model
plaintext never touches the server's disk. Every grant issued is a ``key_grants`` row and a log
line; a check-in reuses the latest grant for (device, target digest) until it is near expiry.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from flask import Flask
from sqlalchemy import Table, bindparam, select
from sqlalchemy.orm import Session

from edgepkg import repo as erepo
from edgepkg.bundle import BundleInfo, read_bundle_info
from edgepkg.crypto import load_device_public_key
from edgepkg.errors import Error as EdgepkgError
from edgepkg.grants import make_grant
from edgepkg.keys import RecipientKey, is_pkcs11_uri, load_recipient_key
from edgepkg.protocol import Assignment
from update_server.config import ServerConfig
from update_server.devices.auth import DeviceLike
from update_server.devices.models import Device
from update_server.errors import ConfigError, ConflictError, NotFoundError
from update_server.grants.models import KeyGrantRecord
from update_server.tuf.releases import Release

log = logging.getLogger("update_server.grants")

EXTENSION_KEY = "edgepkg.key_service"
MAX_CACHED_HEADERS = 256

_grants = cast(Table, KeyGrantRecord.__table__)
_devices = cast(Table, Device.__table__)
_SELECT_CACHED = (
    select(_grants.c.grant)
    .where(
        _grants.c.device_id == bindparam("device_id"),
        _grants.c.target_sha256 == bindparam("target_sha256"),
        _grants.c.expires_at > bindparam("fresh_until"),
    )
    .order_by(_grants.c.expires_at.desc())
    .limit(1)
)
_SELECT_DEVICE_KEY = select(_devices.c.public_key_pem).where(_devices.c.id == bindparam("id"))


class KeyService:
    """The key-service key and what it needs to grant: the repository's targets directory and
    the grant lifetime. One per app; the key is used under a lock (one token session)."""

    def __init__(self, key: RecipientKey, repo_dir: Path, lifetime: dt.timedelta) -> None:
        self.key = key
        self.repo_dir = repo_dir
        self.lifetime = lifetime
        # A grant is reused until this close to its expiry, then a fresh one is issued: a
        # device that is offline for a while still gets at least this much time to install.
        self.renew_before = lifetime / 4
        self._lock = threading.Lock()
        self._headers: dict[str, BundleInfo] = {}

    @property
    def key_id(self) -> str:
        return self.key.key_id

    def bundle_info(self, release: Release) -> BundleInfo:
        """The bundle header of ``release`` (targets are hash-named, so cached by digest)."""
        with self._lock:
            hit = self._headers.get(release.sha256)
        if hit is not None:
            return hit
        path = erepo.target_file(self.repo_dir, cast(Any, release))
        info = read_bundle_info(path)
        with self._lock:
            if len(self._headers) >= MAX_CACHED_HEADERS:
                self._headers.clear()
            self._headers[release.sha256] = info
        return info

    def issue(
        self,
        session: Session,
        device_id: str,
        release: Release,
        *,
        issuer: str,
        now: dt.datetime,
    ) -> dict[str, Any]:
        """Make, record and log a fresh grant of ``release`` for ``device_id``; return its JSON.

        Raises NotFoundError (no such device), ConflictError (the bundle was not packaged for
        the key-service key, or the device is a direct recipient already).
        """
        pem = session.connection().execute(_SELECT_DEVICE_KEY, {"id": device_id}).scalar()
        if pem is None:
            raise NotFoundError(f"no device {device_id[:16]}…")
        info = self.bundle_info(release)
        if device_id in info.recipient_key_ids:
            raise ConflictError(
                f"device {device_id[:16]}… is a direct recipient of {release.target_path}: "
                "it needs no grant",
                code="direct_recipient",
            )
        if self.key.key_id not in info.recipient_key_ids:
            raise ConflictError(
                f"{release.target_path} was not packaged for the key-service key "
                f"{self.key.key_id[:16]}…: package with --key-service",
                code="not_for_key_service",
            )
        with self._lock:  # one token session; the data key lives only inside this call
            grant = make_grant(info, self.key, load_device_public_key(pem), device_id,
                               expires_at=now + self.lifetime, now=now)
        raw = grant.to_json().decode()
        session.add(
            KeyGrantRecord(
                device_id=device_id,
                model=release.name,
                version=release.version,
                target=release.target_path,
                target_sha256=release.sha256,
                release_sha256=grant.release_sha256,
                issued_at=grant.issued_at,
                expires_at=grant.expires_at,
                issuer=issuer[:120],
                key_service_key_id=grant.key_service,
                grant=raw,
            )
        )
        log.info(
            "key grant issued: device %s, %s %s (%s), release %s, expires %s, by %s",
            device_id[:16], release.name, release.version, release.kind,
            grant.release_sha256[:16], grant.expires_at.isoformat(), issuer,
            extra={"device_id": device_id, "target": release.target_path,
                   "release_sha256": grant.release_sha256, "issuer": issuer,
                   "expires_at": grant.expires_at.isoformat()},
        )
        return cast(dict[str, Any], json.loads(raw))

    def grant_for(
        self, session: Session, device_id: str, release: Release, *, issuer: str,
        now: dt.datetime,
    ) -> dict[str, Any] | None:
        """The grant a check-in sends for ``release``: None when the device is a direct
        recipient or the bundle was not packaged for the key service (the device then installs,
        or refuses with its own reason, as without grants); the cached one while fresh."""
        info = self.bundle_info(release)
        if device_id in info.recipient_key_ids or self.key.key_id not in info.recipient_key_ids:
            return None
        cached = session.connection().execute(
            _SELECT_CACHED,
            {"device_id": device_id, "target_sha256": release.sha256,
             "fresh_until": now + self.renew_before},
        ).scalar()
        if cached is not None:
            return cast(dict[str, Any], json.loads(cached))
        return self.issue(session, device_id, release, issuer=issuer, now=now)


def init_app(app: Flask, cfg: ServerConfig) -> None:
    """Load the key-service key named by the configuration (none: grants are off)."""
    if not cfg.key_service_key:
        return
    if cfg.repo_dir is None:
        raise ConfigError("key_service_key is set but repo_dir is not: grants read the bundles "
                          "of the repository the server serves")
    ref = cfg.key_service_key
    if not is_pkcs11_uri(ref):
        log.warning(
            "DEVELOPMENT ONLY: the key-service key is a PEM file (%s). Anyone who reads it can "
            "decrypt every bundle packaged for it; use a pkcs11: URI in production.", ref)
    try:
        key = load_recipient_key(ref)
    except EdgepkgError as exc:
        raise ConfigError(f"cannot load key_service_key: {exc}") from None
    service = KeyService(key, Path(cfg.repo_dir), dt.timedelta(seconds=cfg.grant_lifetime_s))
    app.extensions[EXTENSION_KEY] = service
    log.info("key service on: key %s, grants last %d s", key.key_id[:16], cfg.grant_lifetime_s)


def key_service(app: Flask) -> KeyService | None:
    found = app.extensions.get(EXTENSION_KEY)
    return found if isinstance(found, KeyService) else None


def with_grants(
    app: Flask,
    session: Session,
    device: DeviceLike,
    assignments: Sequence[Assignment],
    releases: Sequence[Release],
    now: dt.datetime,
) -> list[Assignment]:
    """``assignments`` with ``key_grants`` for every target the device cannot open itself.

    Only assignments the rollout service made (they carry the rollout id) to an enabled device
    get grants. A grant that cannot be made is logged and left out: the device then refuses the
    bundle with its own reason, and the next check-in tries again.
    """
    service = key_service(app)
    if service is None or not assignments or not device.enabled:
        return list(assignments)
    by_path = {r.target_path: r for r in releases}
    out: list[Assignment] = []
    for a in assignments:
        grants: dict[str, dict[str, Any]] = {}
        if a.rollout_id is not None:
            for name in (a.target, a.delta_target):
                release = by_path.get(name) if name else None
                if release is None:
                    continue
                try:
                    grant = service.grant_for(session, device.id, release,
                                              issuer=f"rollout:{a.rollout_id}", now=now)
                except (EdgepkgError, OSError) as exc:
                    log.error("cannot grant %s to device %s: %s", release.target_path,
                              device.id[:16], exc)
                    continue
                if grant is not None:
                    grants[release.target_path] = grant
        out.append(dataclasses.replace(a, key_grants=grants) if grants else a)
    return out
