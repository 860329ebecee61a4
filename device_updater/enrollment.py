"""Enrollment: create the device key, provision the token-held trust anchors, register.

The record of a finished enrollment (``enrollment.json``: device id, server, poll interval) is
what every later agent start reads first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import requests

from device_updater.config import Config
from device_updater.errors import EnrollmentError
from device_updater.facts import device_facts
from device_updater.http import enroll
from device_updater.keystore import Keystore, TrustAnchors, device_id, device_public_key_pem
from device_updater.layout import Layout
from device_updater.tuf_client import check_root_bytes, install_trusted_root
from edgepkg._atomic import atomic_write_bytes


@dataclass(frozen=True)
class Enrollment:
    device_id: str
    server_url: str
    poll_interval: int


def read_enrollment(layout: Layout) -> Enrollment:
    try:
        doc = json.loads(layout.enrollment.read_bytes()[:65536])
        return Enrollment(str(doc["device_id"]), str(doc["server_url"]), int(doc["poll_interval"]))
    except FileNotFoundError:
        raise EnrollmentError(
            f"this device is not enrolled ({layout.enrollment} missing): run "
            "'edge-updater enroll' first") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise EnrollmentError(f"{layout.enrollment} is damaged ({exc}); enroll again") from None


def enroll_device(
    config: Config,
    keystore: Keystore,
    *,
    enrollment_token: str,
    trusted_root: bytes,
    release_keys: list[bytes],
    session: requests.Session | None = None,
    facts: dict[str, Any] | None = None,
) -> Enrollment:
    """Create the device key in the keystore, provision the trust anchors, register with the server.

    The trusted root and release keys come from provisioning media (never from the server):
    their SHA-256 / public keys become the token-held anchors every later cycle checks.
    """
    layout = Layout(config.state_dir)
    if layout.enrollment.exists():
        raise EnrollmentError(
            f"this device is already enrolled ({layout.enrollment}); its trust anchors are not "
            "replaced. To re-enroll, wipe the state directory and the token first.")
    layout.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    check_root_bytes(trusted_root)
    keystore.ensure_device_key()
    anchor = install_trusted_root(layout.tuf_dir, trusted_root)
    keystore.provision(TrustAnchors(anchor, list(release_keys)))
    result = enroll(
        config.server_url, enrollment_token, device_public_key_pem(keystore),
        facts if facts is not None else device_facts(config.facts), list(config.tags),
        session=session, timeout=(config.connect_timeout, config.read_timeout),
    )
    mine = device_id(keystore)
    if result.device_id != mine:
        raise EnrollmentError(
            f"the server registered device id {result.device_id}, but this device's key id is "
            f"{mine}: refusing a server that does not derive ids from the device key")
    enr = Enrollment(mine, config.server_url, result.poll_interval)
    atomic_write_bytes(layout.enrollment, json.dumps(enr.__dict__, indent=1).encode(), 0o600)
    return enr

