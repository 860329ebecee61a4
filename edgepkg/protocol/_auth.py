"""How a device signs its requests to the update server (the canonical string and headers).

A device signs, with the P-256 key that identifies it, the UTF-8 string::

    "EDGEPKG-DEVICE-V1\\n" + METHOD + "\\n" + path_with_query + "\\n" + timestamp + "\\n"
    + nonce + "\\n" + sha256_hex(body)

and sends the four headers below: the device id (its key id), the timestamp (unix seconds),
a nonce (32 hex) and the base64 DER ECDSA-P256-SHA256 signature. No reusable secret sits on the
device. Both wings build the string here, so they cannot drift apart.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import urlsplit

AUTH_DOMAIN = "EDGEPKG-DEVICE-V1"
HEADER_DEVICE = "X-Edgepkg-Device"
HEADER_TIMESTAMP = "X-Edgepkg-Timestamp"
HEADER_NONCE = "X-Edgepkg-Nonce"
HEADER_SIGNATURE = "X-Edgepkg-Signature"

DEVICE_ID_RE = re.compile(r"^[0-9a-f]{64}$")
NONCE_RE = re.compile(r"^[0-9a-f]{32}$")
TIMESTAMP_RE = re.compile(r"^[0-9]{1,12}$")
MAX_SIGNATURE_B64 = 200


def signing_string(
    method: str, path_with_query: str, timestamp: int | str, nonce: str, body: bytes
) -> bytes:
    """The exact bytes a device signs for one request."""
    digest = hashlib.sha256(body).hexdigest()
    text = "\n".join((AUTH_DOMAIN, method.upper(), path_with_query, str(timestamp), nonce, digest))
    return text.encode("utf-8")


def path_with_query(url: str) -> str:
    """The request target a server sees for ``url``: path plus ``?query`` when there is one."""
    parts = urlsplit(url)
    path = parts.path or "/"
    return f"{path}?{parts.query}" if parts.query else path


def key_id_from_spki(der: bytes) -> str:
    """The key id of a public key: hex SHA-256 of its DER SubjectPublicKeyInfo.

    A device id *is* the key id of the device's enrolled key; enrollment, request signing and
    bundle recipients all name keys this way.
    """
    return hashlib.sha256(der).hexdigest()
