"""The server's one door to public-key crypto: device key parsing and signature checks."""

from __future__ import annotations

import functools
import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from update_server.errors import BadRequestError, UnauthorizedError


def public_key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """Hex SHA-256 of the DER SubjectPublicKeyInfo (the edgepkg key id)."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


MAX_PEM_BYTES = 4096


def parse_device_public_key(pem: str) -> tuple[ec.EllipticCurvePublicKey, str]:
    """Parse a P-256 public key PEM; return the key and its key id. Raise BadRequestError."""
    if not isinstance(pem, str) or not pem.strip():
        raise BadRequestError("public_key_pem must be a non-empty PEM string")
    data = pem.encode("utf-8", "replace")
    if len(data) > MAX_PEM_BYTES:
        raise BadRequestError("public_key_pem is too long")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise BadRequestError(f"public_key_pem is not a valid public key PEM: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise BadRequestError("the device key must be an ECDSA P-256 (secp256r1) public key")
    return key, public_key_id(key)


@functools.lru_cache(maxsize=65536)
def _cached_key(pem: str) -> ec.EllipticCurvePublicKey:
    return parse_device_public_key(pem)[0]


def verify_device_signature(public_key_pem: str, signature: bytes, message: bytes) -> None:
    """Verify an ECDSA-P256-SHA256 DER signature by a stored device key; raise Unauthorized."""
    try:
        key = _cached_key(public_key_pem)
    except BadRequestError:
        raise UnauthorizedError("the stored device key is unusable") from None
    try:
        key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise UnauthorizedError("request signature does not verify", code="bad_signature") from None


def sign_device_message(private_key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    """ECDSA-P256-SHA256 DER signature (used by test and benchmark device clients)."""
    return private_key.sign(message, ec.ECDSA(hashes.SHA256()))


def new_device_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
