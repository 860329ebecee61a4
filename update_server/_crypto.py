"""The server's edge to device-key crypto: :mod:`edgepkg.crypto` does the work (the one door
to ``cryptography``); this module turns its errors into the server's HTTP errors."""

from __future__ import annotations

from edgepkg import crypto
from edgepkg.errors import BadSignatureError, UntrustedInputError
from update_server.errors import BadRequestError, UnauthorizedError

MAX_PEM_BYTES = crypto.MAX_DEVICE_KEY_PEM_BYTES
DevicePrivateKey = crypto.DevicePrivateKey


def parse_device_public_key(pem: str) -> str:
    """Check a P-256 public key PEM and return its key id; raise BadRequestError."""
    try:
        return crypto.device_public_key_id(pem)
    except UntrustedInputError as exc:
        raise BadRequestError(str(exc)) from None


def verify_device_signature(public_key_pem: str, signature: bytes, message: bytes) -> None:
    """Verify an ECDSA-P256-SHA256 DER signature by a stored device key; raise Unauthorized."""
    try:
        crypto.verify_device_signature(public_key_pem, signature, message)
    except BadSignatureError:
        raise UnauthorizedError("request signature does not verify", code="bad_signature") from None
    except UntrustedInputError:
        raise UnauthorizedError("the stored device key is unusable") from None


# Software device keys, for the test and benchmark clients (update_server.testing, bench/).
new_device_key = crypto.new_device_key
sign_device_message = crypto.sign_device_message
public_pem = crypto.device_public_pem


def device_key_id(key: DevicePrivateKey) -> str:
    """The device id of a software device key."""
    return crypto.device_public_key_id(crypto.device_public_pem(key))
