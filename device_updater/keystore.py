"""The device keystore: device identity, HPKE recipient key and trust anchors.

The only ``device_updater`` module that touches ``cryptography.hazmat`` (through type hints and
``edgepkg.keys``).

* :class:`Pkcs11Keystore` (production): the device's P-256 key pair is generated **inside** the
  token, sensitive and non-extractable; it signs server requests (ECDSA) and is the HPKE
  recipient for bundles (ECDH in the token). The trust anchors (SHA-256 of the initial TUF root and
  the release signing public keys) are a private data object in the token, written once at
  enrollment (CKA_MODIFIABLE/CKA_DESTROYABLE false: the user PIN, which must sit on the device,
  can neither change nor delete it) and read back at every cycle, never from a writable file. A
  second anchors object (all the user PIN can add) makes every read fail: nothing is installed.
* :class:`FileKeystore` (development only, warns): the same in a directory.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography.hazmat.primitives.asymmetric import ec

from device_updater.errors import KeystoreError, UntrustedDeviceInputError
from edgepkg import keys as ekeys
from edgepkg._atomic import atomic_write_bytes
from edgepkg.errors import Error as EdgepkgError
from edgepkg.keys import PublicKey, RecipientKey, Signer

log = logging.getLogger(__name__)

ANCHORS_LABEL = "edge-updater-trust-anchors"
DEVICE_KEY_LABEL = "edge-updater-device"
MAX_RELEASE_KEYS = 16
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class AnchorsMissingError(KeystoreError):
    """The token holds no trust anchors: the device was never enrolled (run ``enroll``)."""


class BadAnchorsError(KeystoreError, UntrustedDeviceInputError):
    """The stored trust anchors are malformed."""


class AnchorsTamperedError(KeystoreError, UntrustedDeviceInputError):
    """The token holds more than one trust-anchors object: someone with the user PIN added one.

    An untrusted-input error, so an update in progress is rejected with this reason (reported to
    the server) while the running model keeps serving; nothing is installed until the device is
    re-provisioned.
    """


class AnchorsAlreadyProvisionedError(KeystoreError):
    """The token already holds different trust anchors; they are write-once."""


@dataclass(frozen=True)
class TrustAnchors:
    """What the device trusts, provisioned at enrollment: the initial TUF root's SHA-256 and the
    release signing public keys (PEM) that bundles must be signed with."""

    root_sha256: str
    release_keys: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not _HEX64.match(self.root_sha256):
            raise BadAnchorsError("root_sha256 must be 64 lowercase hex characters")
        if not 1 <= len(self.release_keys) <= MAX_RELEASE_KEYS:
            raise BadAnchorsError(f"between 1 and {MAX_RELEASE_KEYS} release keys are needed")
        for pem in self.release_keys:
            try:
                ekeys.load_public_key(bytes(pem))
            except EdgepkgError as exc:
                raise BadAnchorsError(f"a release key is not a usable public key: {exc}") from exc

    def public_keys(self) -> list[PublicKey]:
        return [ekeys.load_public_key(bytes(pem)) for pem in self.release_keys]

    def key_ids(self) -> list[str]:
        return [ekeys.public_key_id(k) for k in self.public_keys()]

    def to_bytes(self) -> bytes:
        doc = {"version": 1, "root_sha256": self.root_sha256,
               "release_keys": [bytes(p).decode("ascii") for p in self.release_keys]}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> TrustAnchors:
        if len(data) > 64 * 1024:
            raise BadAnchorsError("trust anchors larger than 64 KiB")
        try:
            doc = json.loads(data)
            if doc.get("version") != 1:
                raise BadAnchorsError("unknown trust anchor format version")
            return cls(str(doc["root_sha256"]),
                       [str(p).encode("ascii") for p in doc["release_keys"]])
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeEncodeError) as exc:
            raise BadAnchorsError(f"trust anchors are malformed: {exc}") from exc


@runtime_checkable
class Keystore(Protocol):
    """Where the device key lives and the trust anchors are kept."""

    def ensure_device_key(self) -> ec.EllipticCurvePublicKey:
        """The device public key, generating the key pair first if there is none."""
        ...

    def device_public_key(self) -> ec.EllipticCurvePublicKey: ...

    def recipient_key(self) -> RecipientKey: ...

    def sign(self, data: bytes) -> bytes:
        """DER ECDSA P-256 signature over SHA-256(data), made where the key lives."""
        ...

    def trust_anchors(self) -> TrustAnchors: ...

    def provision(self, anchors: TrustAnchors) -> None: ...


def device_id(keystore: Keystore) -> str:
    """The device id: hex SHA-256 of the device public key's DER SubjectPublicKeyInfo."""
    return ekeys.public_key_id(keystore.device_public_key())


def device_public_key_pem(keystore: Keystore) -> str:
    return ekeys.public_key_pem(keystore.device_public_key()).decode("ascii")


def load_release_key_pem(path: str | os.PathLike[str]) -> bytes:
    """Read a release public key file and return it as normalised PEM bytes."""
    try:
        return ekeys.public_key_pem(ekeys.load_public_key(os.fspath(path)))
    except EdgepkgError as exc:
        raise KeystoreError(f"release key {path}: {exc}") from exc


def _wrap(what: str, exc: Exception) -> KeystoreError:
    return KeystoreError(f"{what}: {exc}")


class Pkcs11Keystore:
    """Device key and trust anchors in a PKCS#11 token (SoftHSM2, tpm2-pkcs11, an HSM)."""

    def __init__(self, token_uri: str, *, key_label: str = DEVICE_KEY_LABEL,
                 pin: str | None = None) -> None:
        if not ekeys.is_pkcs11_uri(token_uri):
            raise KeystoreError("the keystore token must be a pkcs11: URI")
        self._token_uri = token_uri
        self._label = key_label
        self._pin = pin
        self._signer: Signer | None = None
        self._recipient: RecipientKey | None = None

    def _key_uri(self) -> str:
        return ekeys.key_uri(self._token_uri, self._label)

    def _load(self) -> Signer:
        if self._signer is None:
            try:
                self._signer = ekeys.load_signer(self._key_uri(), pin=self._pin)
            except EdgepkgError as exc:
                raise _wrap(f"device key {self._label!r} not usable in the token", exc) from exc
        return self._signer

    def ensure_device_key(self) -> ec.EllipticCurvePublicKey:
        try:
            pub = self._load().public_key()
        except KeystoreError:
            try:
                ekeys.generate_token_keypair(self._token_uri, self._label, pin=self._pin,
                                             usage="both")
            except EdgepkgError as exc:
                raise _wrap("cannot create the device key in the token", exc) from exc
            log.info("generated the device key inside the token", extra={"label": self._label})
            pub = self._load().public_key()
        if not isinstance(pub, ec.EllipticCurvePublicKey):
            raise KeystoreError("the device key in the token is not P-256")
        return pub

    def device_public_key(self) -> ec.EllipticCurvePublicKey:
        pub = self._load().public_key()
        if not isinstance(pub, ec.EllipticCurvePublicKey):
            raise KeystoreError("the device key in the token is not P-256")
        return pub

    def recipient_key(self) -> RecipientKey:
        if self._recipient is None:
            try:
                self._recipient = ekeys.load_recipient_key(self._key_uri(), pin=self._pin)
            except EdgepkgError as exc:
                raise _wrap("device recipient key not usable", exc) from exc
        return self._recipient

    def sign(self, data: bytes) -> bytes:
        try:
            return self._load().sign(data)
        except EdgepkgError as exc:
            raise _wrap("the token refused to sign", exc) from exc

    def trust_anchors(self) -> TrustAnchors:
        """The anchors provisioned at enrollment. Refuses (:class:`AnchorsTamperedError`) when
        the token holds more than one anchors object: never picks one."""
        try:
            raw = ekeys.read_unique_data_object(self._token_uri, ANCHORS_LABEL, pin=self._pin)
        except ekeys.DataObjectMissingError as exc:
            raise AnchorsMissingError(
                f"no trust anchors in the token ({exc}); enroll the device first") from exc
        except ekeys.DataObjectConflictError as exc:
            raise AnchorsTamperedError(
                f"trust anchors tampered with: {exc}. No update is installed until the device "
                "is re-provisioned through the factory path (token re-initialised under the SO "
                "PIN, then enroll again)") from exc
        except EdgepkgError as exc:
            raise _wrap("cannot read the trust anchors from the token", exc) from exc
        return TrustAnchors.from_bytes(raw)

    def provision(self, anchors: TrustAnchors) -> None:
        """Write the anchors once (not modifiable, not destroyable with the user PIN).

        Provisioning the very same anchors again is a no-op (a retried enrollment); different
        anchors are refused with :class:`AnchorsAlreadyProvisionedError`.
        """
        try:
            created = ekeys.create_data_object_once(self._token_uri, ANCHORS_LABEL,
                                                    anchors.to_bytes(), pin=self._pin)
        except ekeys.DataObjectExistsError as exc:
            raise AnchorsAlreadyProvisionedError(
                "the token already holds other trust anchors; they are write-once and cannot be "
                "replaced with the user PIN. To re-provision, use the SO/factory path: "
                "re-initialise the token with the SO PIN (softhsm2-util --init-token, "
                "tpm2_ptool, or the HSM's SO tools; this also replaces the device key), wipe the "
                "state directory, then run 'edge-updater enroll' again") from exc
        except ekeys.DataObjectConflictError as exc:
            raise AnchorsTamperedError(f"trust anchors tampered with: {exc}") from exc
        except EdgepkgError as exc:
            raise _wrap("cannot store the trust anchors in the token", exc) from exc
        if not created:
            log.info("the token already holds these trust anchors; nothing written")


class FileKeystore:
    """Development keystore in a directory (``device.key.pem`` 0600, ``anchors.json``).

    Offers none of the token's guarantees: anyone who can write the directory can replace the
    anchors or read the key. Logs a warning when used.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self._signer: Signer | None = None
        self._recipient: RecipientKey | None = None
        log.warning("using a FILE keystore (%s): development only, use a PKCS#11 token in "
                    "production", self.dir)

    @property
    def _key_path(self) -> Path:
        return self.dir / "device.key.pem"

    def _load(self) -> Signer:
        if self._signer is None:
            if not self._key_path.exists():
                raise KeystoreError(f"no device key at {self._key_path}; enroll first")
            try:
                self._signer = ekeys.load_signer(os.fspath(self._key_path))
            except EdgepkgError as exc:
                raise _wrap("device key file not usable", exc) from exc
        return self._signer

    def ensure_device_key(self) -> ec.EllipticCurvePublicKey:
        if not self._key_path.exists():
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                ekeys.create_key("device", "recipient", directory=self.dir)
            except EdgepkgError as exc:
                raise _wrap("cannot create the device key", exc) from exc
        return self.device_public_key()

    def device_public_key(self) -> ec.EllipticCurvePublicKey:
        pub = self._load().public_key()
        if not isinstance(pub, ec.EllipticCurvePublicKey):
            raise KeystoreError("the device key file is not P-256")
        return pub

    def recipient_key(self) -> RecipientKey:
        if self._recipient is None:
            try:
                self._recipient = ekeys.load_recipient_key(os.fspath(self._key_path))
            except EdgepkgError as exc:
                raise _wrap("device key file not usable", exc) from exc
        return self._recipient

    def sign(self, data: bytes) -> bytes:
        return self._load().sign(data)

    def trust_anchors(self) -> TrustAnchors:
        path = self.dir / "anchors.json"
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise AnchorsMissingError(f"no trust anchors at {path}; enroll first") from None
        return TrustAnchors.from_bytes(raw)

    def provision(self, anchors: TrustAnchors) -> None:
        """Same contract as the token (write-once, same anchors again is a no-op), though a file
        protects nothing against someone who can write the directory."""
        path = self.dir / "anchors.json"
        if path.exists():
            if self.trust_anchors() == anchors:
                return
            raise AnchorsAlreadyProvisionedError(
                f"{path} already holds other trust anchors; they are write-once. To re-provision "
                "a development device, delete the keystore and state directories and enroll again")
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write_bytes(path, anchors.to_bytes(), 0o600)
