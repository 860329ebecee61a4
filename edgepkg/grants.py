"""Key grants: hand one bundle's data key to one device, after packaging, without repackaging.

Every bundle's data key is HPKE-wrapped to a **key-service key** (a P-256 recipient like any
other; ``edgepkg package --key-service PUB``, or the repository's release-archive key, which is a
recipient of every published bundle anyway). The key service re-wraps that 32-byte key to a
device's enrolled P-256 key; the model bytes are never decrypted. A grant lives *outside* the
bundle, so the bundle file (and its TUF hash) never changes when a device is granted a key.

Key-service side (the private key stays in its token: ECDH runs there)::

    grant = make_grant("model-2.0.0.edgepkg", load_recipient_key(KEY_SERVICE_URI),
                       device_public_key, device_id, expires_at=now + timedelta(days=7), now=now)
    Path("grant.json").write_bytes(grant.to_json())

Device side (the device key stays in its token too)::

    grant = KeyGrant.from_json(raw)
    source = grant_key_source(grant, device_key, device_id=my_id, now=now)
    BundleReader(bundle, trusted_keys=release_keys, data_key_source=source)  # or unpack_bundle

What binds a grant: the HPKE ``info`` is :data:`GRANT_DOMAIN` plus the canonical JSON of every
field but the wrapped key (format, version, device id, release digest = SHA-256 of the signed
manifest, issue and expiry times, key-service key id, model name and version). Changing any
field makes the wrapped key fail to open. :func:`open_grant` first checks the fields against what
the device expects (its own id, the release it is installing, its clock) so that a refusal says
why; :class:`GrantError` and its subclasses are untrusted-input errors.

A grant is not signed: anyone who knows a device's public key can wrap *some* key to it. That
gains nothing: the bundle's ciphertext is committed to by the release key's signature and every
chunk is authenticated under the real data key, so a wrong key only makes the install fail.
See docs/security.md, "Key grants".
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edgepkg.bundle import BundleInfo, DataKeySource, read_bundle_info, verify_bundle
from edgepkg.bundle._io import INFO_PREFIX
from edgepkg.crypto import (
    DATA_KEY_BYTES,
    as_p256_public_key,
    public_key_id,
    unwrap_data_key,
    wrap_data_key,
)
from edgepkg.errors import (
    GrantError,
    GrantExpiredError,
    GrantMismatchError,
    NotARecipientError,
    TamperedError,
    UsageError,
)
from edgepkg.keys._types import PublicKey, RecipientKey

GRANT_FORMAT = "edgepkg-key-grant"
GRANT_VERSION = 1
GRANT_DOMAIN = b"edgepkg/1 key-grant\x00"
MAX_GRANT_BYTES = 4096
MAX_GRANT_LIFETIME = dt.timedelta(days=366)
WRAPPED_BYTES = 65 + DATA_KEY_BYTES + 16  # HPKE enc || AES-GCM(data key)

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_VERSION = re.compile(r"^[0-9A-Za-z.+-]{1,64}$")
_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
_FIELDS = frozenset({"format", "version", "device_id", "release_sha256", "model", "model_version",
                     "issued_at", "expires_at", "key_service", "wrapped_key"})


# The errors live in edgepkg.errors so pure cores (the device's outcome table) can name them
# without loading the crypto this module needs.


@dataclass(frozen=True)
class KeyGrant:
    """One bundle's data key, HPKE-wrapped to one device key, bound to device, release, expiry.

    Times are whole seconds, UTC. ``release_sha256`` is the SHA-256 of the bundle's signed
    manifest bytes (``hashlib.sha256(BundleInfo.manifest_bytes)``).
    """

    device_id: str
    release_sha256: str
    model: str
    model_version: str
    issued_at: dt.datetime
    expires_at: dt.datetime
    key_service: str  # key id of the key-service key that unwrapped the data key (for audit)
    wrapped_key: bytes

    def bound_fields(self) -> dict[str, Any]:
        """Everything the HPKE ``info`` binds (all but the wrapped key), JSON-ready."""
        return {
            "format": GRANT_FORMAT,
            "version": GRANT_VERSION,
            "device_id": self.device_id,
            "release_sha256": self.release_sha256,
            "model": self.model,
            "model_version": self.model_version,
            "issued_at": _fmt_time(self.issued_at),
            "expires_at": _fmt_time(self.expires_at),
            "key_service": self.key_service,
        }

    def info(self) -> bytes:
        return GRANT_DOMAIN + _canonical(self.bound_fields())

    def to_json(self) -> bytes:
        data = {**self.bound_fields(), "wrapped_key": base64.b64encode(self.wrapped_key).decode()}
        return _canonical(data)

    @classmethod
    def from_json(cls, raw: bytes | str) -> KeyGrant:
        """Strict, bounded parse: exact field set, every field checked; raises GrantError."""
        if isinstance(raw, str):
            raw = raw.encode()
        if len(raw) > MAX_GRANT_BYTES:
            raise GrantError(f"key grant is {len(raw)} bytes, limit {MAX_GRANT_BYTES}")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise GrantError("key grant is not valid JSON") from None
        if not isinstance(data, dict):
            raise GrantError("key grant is not a JSON object")
        if set(data) != _FIELDS:
            missing, extra = sorted(_FIELDS - set(data)), sorted(set(data) - _FIELDS)
            raise GrantError(f"key grant fields are wrong (missing {missing}, unknown {extra})")
        if data["format"] != GRANT_FORMAT or data["version"] != GRANT_VERSION:
            raise GrantError(
                f"not an {GRANT_FORMAT} version {GRANT_VERSION} document "
                f"(format {data['format']!r}, version {data['version']!r})"
            )
        _need(data, "device_id", _HEX64)
        _need(data, "release_sha256", _HEX64)
        _need(data, "key_service", _HEX64)
        _need(data, "model", _NAME)
        _need(data, "model_version", _VERSION)
        try:
            wrapped = base64.b64decode(str(data["wrapped_key"]), validate=True)
        except (binascii.Error, ValueError):
            raise GrantError("key grant field 'wrapped_key' is not base64") from None
        if len(wrapped) != WRAPPED_BYTES:
            raise GrantError(f"key grant wrapped key is {len(wrapped)} bytes, not {WRAPPED_BYTES}")
        return cls(
            device_id=data["device_id"],
            release_sha256=data["release_sha256"],
            model=data["model"],
            model_version=data["model_version"],
            issued_at=_parse_time(data, "issued_at"),
            expires_at=_parse_time(data, "expires_at"),
            key_service=data["key_service"],
            wrapped_key=wrapped,
        )


# --- key-service side ---------------------------------------------------------------------------


def make_grant(
    bundle: str | os.PathLike[str] | BundleInfo,
    key_service: RecipientKey,
    device_public_key: PublicKey,
    device_id: str,
    expires_at: dt.datetime,
    now: dt.datetime,
    *,
    trusted_keys: Sequence[PublicKey] | None = None,
) -> KeyGrant:
    """Re-wrap ``bundle``'s data key from ``key_service`` to ``device_public_key``.

    ``bundle`` is a path (only the header is read; with ``trusted_keys`` the whole file is
    verified first, which a server should do unless the file came through TUF) or a
    :class:`BundleInfo`. The device id is the key id of the device key (edgepkg.protocol), and
    is checked against it. The data key exists only in memory, for the length of this call.
    Raises NotARecipientError when the bundle was not packaged for the key-service key.
    """
    if isinstance(bundle, BundleInfo):
        info = bundle
    elif trusted_keys is not None:
        info = verify_bundle(bundle, trusted_keys)
    else:
        info = read_bundle_info(bundle)
    device_key = as_p256_public_key(device_public_key)
    if not _HEX64.match(device_id) or device_id != public_key_id(device_key):
        raise UsageError(
            f"device id {device_id[:20]!r} is not the key id of the given device key "
            f"({public_key_id(device_key)}): a device id is its key's id"
        )
    now, expires_at = _whole_seconds(now), _whole_seconds(expires_at)
    if expires_at <= now:
        raise UsageError("a grant must expire in the future")
    if expires_at - now > MAX_GRANT_LIFETIME:
        raise UsageError(f"a grant may last at most {MAX_GRANT_LIFETIME.days} days")
    wrapped = info.wrapped_keys.get(key_service.key_id)
    if wrapped is None:
        raise NotARecipientError(
            f"{info.manifest.name} {info.manifest.version} was not packaged for the key-service "
            f"key {key_service.key_id[:16]}…: repackage with --key-service (or the archive key)"
        )
    manifest_hash = hashlib.sha256(info.manifest_bytes).digest()
    data_key = unwrap_data_key(wrapped, key_service, INFO_PREFIX + manifest_hash)
    template = KeyGrant(
        device_id=device_id,
        release_sha256=manifest_hash.hex(),
        model=info.manifest.name,
        model_version=info.manifest.version,
        issued_at=now,
        expires_at=expires_at,
        key_service=key_service.key_id,
        wrapped_key=b"",
    )
    rewrapped = wrap_data_key(data_key, device_key, template.info())
    return KeyGrant(**{**template.__dict__, "wrapped_key": rewrapped})


# --- device side --------------------------------------------------------------------------------


def open_grant(
    grant: KeyGrant,
    manifest_digest: str,
    device_id: str,
    now: dt.datetime,
    device_key: RecipientKey,
) -> bytes:
    """The 32-byte data key in ``grant``, for the release whose manifest SHA-256 (hex) is
    ``manifest_digest``; ECDH runs in ``device_key`` (a token key, or a keystore's
    ``recipient_key()``).

    Raises GrantMismatchError (other device, other release), GrantExpiredError, or
    TamperedError when a bound field or the wrapped key was changed.
    """
    if grant.device_id != device_id:
        raise GrantMismatchError(
            f"key grant is for device {grant.device_id[:16]}…, this is device {device_id[:16]}…"
        )
    if grant.release_sha256 != manifest_digest:
        raise GrantMismatchError(
            f"key grant is for another release ({grant.model} {grant.model_version}, manifest "
            f"{grant.release_sha256[:16]}…), not the bundle being installed"
        )
    if _whole_seconds(now) >= grant.expires_at:
        raise GrantExpiredError(
            f"key grant expired at {_fmt_time(grant.expires_at)}; ask the update server again"
        )
    if device_key.key_id != device_id:
        raise GrantMismatchError("the key given is not this device's key (its id differs)")
    try:
        return unwrap_data_key(grant.wrapped_key, device_key, grant.info())
    except NotARecipientError:
        raise TamperedError(
            "key grant does not open with this device key: a bound field (device, release, "
            "expiry) or the wrapped key was changed, or it was made for another key"
        ) from None


def grant_key_source(
    grant: KeyGrant, device_key: RecipientKey, *, device_id: str, now: dt.datetime
) -> DataKeySource:
    """A ``data_key_source`` for :class:`edgepkg.bundle.BundleReader` / ``unpack_bundle``: opens
    ``grant`` for the bundle being read (its manifest digest), after its signatures were checked."""

    def source(info: BundleInfo) -> bytes:
        digest = hashlib.sha256(info.manifest_bytes).hexdigest()
        return open_grant(grant, digest, device_id, now, device_key)

    return source


# --- helpers ------------------------------------------------------------------------------------


def _canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _whole_seconds(t: dt.datetime) -> dt.datetime:
    if t.tzinfo is None:
        raise UsageError("grant times must be timezone-aware (UTC)")
    return t.astimezone(dt.UTC).replace(microsecond=0)


def _fmt_time(t: dt.datetime) -> str:
    return _whole_seconds(t).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(data: dict[str, Any], name: str) -> dt.datetime:
    value = data[name]
    if not isinstance(value, str) or not _TIME.match(value):
        raise GrantError(f"key grant field {name!r} must be a UTC time like 2025-01-31T12:00:00Z")
    try:
        return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise GrantError(f"key grant field {name!r} is not a valid time") from None


def _need(data: dict[str, Any], name: str, pattern: re.Pattern[str]) -> None:
    value = data[name]
    if not isinstance(value, str) or not pattern.match(value):
        raise GrantError(f"key grant field {name!r} is malformed")
