"""Software (PEM file) keys: for development only. Production keys live in a PKCS#11 token."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from edgepkg.crypto import public_key_id, signing_algorithm
from edgepkg.errors import KeyError_
from edgepkg.keys._types import PublicKey, SigningAlgorithm

log = logging.getLogger("edgepkg.keys")

MAX_PEM_BYTES = 64 * 1024
PASSPHRASE_ENV = "EDGEPKG_KEY_PASSPHRASE"
_warned: set[str] = set()


def public_key_pem(pub: PublicKey) -> bytes:
    return pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def algorithm_of(pub: PublicKey) -> SigningAlgorithm:
    algorithm = signing_algorithm(pub)
    if not algorithm:
        raise KeyError_(f"unsupported public key type {type(pub).__name__}: use Ed25519 or P-256")
    return algorithm  # type: ignore[return-value]


def check_public_key(pub: object, *, what: str = "key") -> PublicKey:
    if isinstance(pub, ed25519.Ed25519PublicKey):
        return pub
    if isinstance(pub, ec.EllipticCurvePublicKey):
        if not isinstance(pub.curve, ec.SECP256R1):
            raise KeyError_(f"{what} is on curve {pub.curve.name}; only P-256 is supported")
        return pub
    raise KeyError_(f"{what} is a {type(pub).__name__}; only Ed25519 and P-256 are supported")


def read_pem_file(path: str | os.PathLike[str]) -> bytes:
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = fh.read(MAX_PEM_BYTES + 1)
    except FileNotFoundError:
        raise KeyError_(f"key file {p} does not exist") from None
    except IsADirectoryError:
        raise KeyError_(f"key reference {p} is a directory, not a PEM file") from None
    except OSError as exc:
        raise KeyError_(f"cannot read key file {p}: {exc.strerror}") from None
    if len(data) > MAX_PEM_BYTES:
        raise KeyError_(f"key file {p} is larger than {MAX_PEM_BYTES} bytes: not a PEM key")
    return data


def _passphrase(explicit: str | None) -> bytes | None:
    value = explicit if explicit is not None else os.environ.get(PASSPHRASE_ENV)
    return value.encode("utf-8") if value is not None else None


def load_private_pem(data: bytes, where: str, *, passphrase: str | None = None) -> object:
    """Load a PEM private key; ``None`` when the PEM holds no private key."""
    if b"PRIVATE KEY-----" not in data:
        return None
    try:
        return serialization.load_pem_private_key(data, password=_passphrase(passphrase))
    except TypeError:
        raise KeyError_(
            f"{where} is encrypted: give its passphrase (pin=... or ${PASSPHRASE_ENV})"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyError_(f"{where} is not a usable PEM private key ({exc})") from None


def load_public_pem(data: bytes, where: str) -> PublicKey:
    if b"-----BEGIN" not in data:
        raise KeyError_(f"{where} is not a PEM file (no -----BEGIN line)")
    if b"ENCRYPTED" in data:
        raise KeyError_(f"{where} is an encrypted private key: give its public PEM instead")
    private = load_private_pem(data, where)
    if private is not None:
        return check_public_key(private.public_key(), what=where)  # type: ignore[attr-defined]
    try:
        pub = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyError_(f"{where} is not a usable PEM public key ({exc})") from None
    return check_public_key(pub, what=where)


def warn_file_key(where: str) -> None:
    if where in _warned:
        return
    _warned.add(where)
    log.warning(
        "using a private key from a file (%s): fine for development, "
        "use a PKCS#11 token (pkcs11: URI) in production",
        where,
    )


class FileSigner:
    """A signer whose private key is in memory (loaded from a PEM file)."""

    def __init__(self, key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey, where: str):
        if isinstance(key, ec.EllipticCurvePrivateKey) and not isinstance(key.curve, ec.SECP256R1):
            raise KeyError_(f"{where}: only P-256 ECDSA keys are supported")
        self._key = key
        self._pub = check_public_key(key.public_key(), what=where)
        self._id = public_key_id(self._pub)
        self.location = where

    @property
    def algorithm(self) -> SigningAlgorithm:
        return algorithm_of(self._pub)

    @property
    def key_id(self) -> str:
        return self._id

    def public_key(self) -> PublicKey:
        return self._pub

    def sign(self, data: bytes) -> bytes:
        if isinstance(self._key, ed25519.Ed25519PrivateKey):
            return self._key.sign(data)
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))

    def __repr__(self) -> str:
        return f"FileSigner({self.algorithm}, {self._id[:16]}, {self.location})"


def check_ecdh_peer(peer: object) -> None:
    """Refuse anything but a P-256 public key as the other side of an ECDH."""
    if not isinstance(peer, ec.EllipticCurvePublicKey) or not isinstance(
        peer.curve, ec.SECP256R1
    ):
        raise KeyError_("ECDH peer key must be a P-256 public key")


class FileRecipientKey:
    """A P-256 recipient key held in software."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, where: str):
        if not isinstance(key.curve, ec.SECP256R1):
            raise KeyError_(f"{where}: recipient keys must be P-256, not {key.curve.name}")
        self._key = key
        self._pub = key.public_key()
        self._id = public_key_id(self._pub)
        self.location = where

    @property
    def key_id(self) -> str:
        return self._id

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._pub

    def exchange(self, peer: ec.EllipticCurvePublicKey) -> bytes:
        check_ecdh_peer(peer)
        return self._key.exchange(ec.ECDH(), peer)

    def software_private_key(self) -> ec.EllipticCurvePrivateKey:
        return self._key

    def __repr__(self) -> str:
        return f"FileRecipientKey({self._id[:16]}, {self.location})"


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_key_name(name: str) -> str:
    if not _NAME_RE.match(name or ""):
        raise KeyError_(
            f"bad key name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def generate_private_key(
    algorithm: str,
) -> ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey:
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def private_pem(key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def ec_point_to_public_key(point: bytes) -> ec.EllipticCurvePublicKey:
    """A P-256 public key from an uncompressed point (raw, or wrapped in a DER OCTET STRING)."""
    if len(point) == 67 and point[:2] == b"\x04\x41":
        point = point[2:]
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError as exc:
        raise KeyError_(f"the token returned an invalid P-256 point ({exc})") from None


def uncompressed_point(pub: ec.EllipticCurvePublicKey) -> bytes:
    return pub.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def raw_to_der_signature(raw: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    if len(raw) != 64:
        raise KeyError_(f"the token returned a {len(raw)}-byte ECDSA signature, expected 64")
    return encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
