"""A software device client for tests, benchmarks and examples (not for production devices,
whose keys live in a hardware token): signs requests exactly as :mod:`edgepkg.protocol` says."""

from __future__ import annotations

import base64
import json
import secrets
import time
from typing import Any

from edgepkg.protocol import (
    HEADER_DEVICE,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    signing_string,
)
from update_server._crypto import device_key_id, new_device_key, public_pem, sign_device_message


class SoftwareDevice:
    """A P-256 device key in memory, able to sign device API requests."""

    def __init__(self) -> None:
        self._key = new_device_key()
        self.public_key_pem = public_pem(self._key)
        self.device_id = device_key_id(self._key)

    def signed_headers(
        self,
        method: str,
        path_with_query: str,
        body: bytes,
        *,
        timestamp: int | None = None,
        nonce: str | None = None,
        device_id: str | None = None,
    ) -> dict[str, str]:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        nonce = nonce or secrets.token_hex(16)
        message = signing_string(method, path_with_query, ts, nonce, body)
        signature = sign_device_message(self._key, message)
        return {
            HEADER_DEVICE: device_id or self.device_id,
            HEADER_TIMESTAMP: ts,
            HEADER_NONCE: nonce,
            HEADER_SIGNATURE: base64.b64encode(signature).decode(),
            "Content-Type": "application/json",
        }

    def enroll_body(self, token: str, **extra: Any) -> bytes:
        return json.dumps(
            {"enrollment_token": token, "public_key_pem": self.public_key_pem, **extra}
        ).encode()
