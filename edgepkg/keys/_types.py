"""The key interfaces every other module codes against.

A *signer* signs release manifests (and TUF metadata through an adapter); a *recipient key* is
the private half of a P-256 key a bundle's data key is wrapped to (HPKE). Either may live in a
file (development) or in a PKCS#11 token (production), where the private key never leaves it.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

from edgepkg.crypto import (
    Ed25519PublicKey,
    EllipticCurvePrivateKey,
    EllipticCurvePublicKey,
)

SigningAlgorithm = Literal["ed25519", "ecdsa-p256-sha256"]
PublicKey = Ed25519PublicKey | EllipticCurvePublicKey


@runtime_checkable
class Signer(Protocol):
    """Something that can sign bytes with a private key it may not reveal."""

    @property
    def algorithm(self) -> SigningAlgorithm: ...

    @property
    def key_id(self) -> str:
        """Hex SHA-256 of the public key's DER SubjectPublicKeyInfo (see ``public_key_id``)."""
        ...

    def public_key(self) -> PublicKey: ...

    def sign(self, data: bytes) -> bytes:
        """Ed25519: the 64-byte signature. ECDSA P-256: DER-encoded signature over SHA-256(data)."""
        ...


@runtime_checkable
class RecipientKey(Protocol):
    """The private half of a P-256 recipient key, able to do ECDH without revealing the key."""

    @property
    def key_id(self) -> str: ...

    def public_key(self) -> EllipticCurvePublicKey: ...

    def exchange(self, peer: EllipticCurvePublicKey) -> bytes:
        """Raw ECDH shared secret (the 32-byte x coordinate), computed where the key lives."""
        ...

    def software_private_key(self) -> EllipticCurvePrivateKey | None:
        """The private key object when it lives in software (a file key), else ``None``."""
        ...
