"""Temporary key backend (PEM files only) until edgepkg.keys lands; replaced by edgepkg.keys."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from edgepkg.errors import KeyError_


def key_id(public_key: object) -> str:
    der = public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _read(ref: str) -> bytes:
    if ref.startswith("pkcs11:"):
        raise KeyError_("PKCS#11 keys need edgepkg.keys")
    try:
        return Path(ref).read_bytes()
    except OSError as exc:
        raise KeyError_(f"cannot read key file {ref}: {exc.strerror}") from exc


def _private(ref: str):  # type: ignore[no-untyped-def]
    return serialization.load_pem_private_key(_read(ref), password=None)


def public_key(ref: str) -> object:
    data = _read(ref)
    if b"PRIVATE KEY" in data:
        return _private(ref).public_key()
    return serialization.load_pem_public_key(data)


@dataclass
class _FileSigner:
    _key: object

    @property
    def algorithm(self) -> str:
        return "ed25519" if isinstance(self._key, ed25519.Ed25519PrivateKey) else "ecdsa-p256-sha256"

    @property
    def key_id(self) -> str:
        return key_id(self.public_key())

    def public_key(self):  # type: ignore[no-untyped-def]
        return self._key.public_key()  # type: ignore[attr-defined]

    def sign(self, data: bytes) -> bytes:
        if isinstance(self._key, ed25519.Ed25519PrivateKey):
            return self._key.sign(data)
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))  # type: ignore[attr-defined]


def signer(ref: str, pin: str | None) -> object:
    return _FileSigner(_private(ref))


def recipient(ref: str, pin: str | None) -> object:
    raise KeyError_("recipient keys need edgepkg.keys")


def pem(public_key: object) -> str:
    return public_key.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def from_pem(text: str) -> object:
    return serialization.load_pem_public_key(text.encode())
