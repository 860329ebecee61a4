"""Enrollment: create the device key, register it, then provision the token-held trust anchors.

The record of a finished enrollment (``enrollment.json``: device id, server, poll interval) is
what every later agent start reads first.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import requests

from device_updater.config import Config
from device_updater.errors import EnrollmentError
from device_updater.facts import device_facts
from device_updater.http import ServerRefusedError, enroll
from device_updater.keystore import Keystore, TrustAnchors, device_id, device_public_key_pem
from device_updater.layout import Layout
from device_updater.tuf_client import check_root_bytes, install_trusted_root, root_sha256
from edgepkg._atomic import atomic_write_bytes

log = logging.getLogger("edge_updater")


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
    """Create (or find) the device key, register it with the server, and only then write the
    token-held trust anchors and the enrollment record.

    The trusted root and release keys come from provisioning media (never from the server):
    their SHA-256 / public keys become the token-held anchors every later cycle checks. The
    anchors are write-once, so they are written only after the server accepted the enrollment:
    a refused enrollment (a mistyped token) leaves the token without anchors and a retry with
    the right token works. If the process dies after the server accepted but before the anchors
    were written, running enroll again finishes the job: the server answers a retry with the
    same token as a success, and ``already_enrolled`` for this very key (another token) is
    treated as the success it is, since only this token holds that key.
    """
    layout = Layout(config.state_dir)
    if layout.enrollment.exists():
        raise EnrollmentError(
            f"this device is already enrolled ({layout.enrollment}); its trust anchors are not "
            "replaced. To re-enroll, wipe the state directory and the token first.")
    # Check the provisioning media before anything is sent, so that a bad root or release key
    # is refused before the server counts a use of the enrollment token.
    check_root_bytes(trusted_root)
    anchors = TrustAnchors(root_sha256(trusted_root), list(release_keys))
    keystore.ensure_device_key()
    mine = device_id(keystore)
    poll_interval = _register(config, keystore, mine, enrollment_token, session, facts)
    layout.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    install_trusted_root(layout.tuf_dir, trusted_root)
    keystore.provision(anchors)
    enr = Enrollment(mine, config.server_url, poll_interval)
    atomic_write_bytes(layout.enrollment, json.dumps(enr.__dict__, indent=1).encode(), 0o600)
    return enr


def _register(config: Config, keystore: Keystore, mine: str, enrollment_token: str,
              session: requests.Session | None, facts: dict[str, Any] | None) -> int:
    """Register the device key at the server; return the poll interval it asks for."""
    try:
        result = enroll(
            config.server_url, enrollment_token, device_public_key_pem(keystore),
            facts if facts is not None else device_facts(config.facts), list(config.tags),
            session=session, timeout=(config.connect_timeout, config.read_timeout),
        )
    except ServerRefusedError as exc:
        if exc.code != "already_enrolled":
            raise EnrollmentError(
                f"the server refused the enrollment ({exc}); no trust anchors were written, so "
                "you can run 'edge-updater enroll' again with a valid enrollment token") from exc
        # The device id is derived from the key and the key never leaves this token: the
        # device registered earlier is this one (an enrollment interrupted after the server
        # accepted it). Finish it; the server sends the poll interval on the next check-in.
        log.warning("the server already knows this device key (%s): finishing an earlier "
                    "enrollment", mine)
        return config.poll_interval
    if result.device_id != mine:
        raise EnrollmentError(
            f"the server registered device id {result.device_id}, but this device's key id is "
            f"{mine}: refusing a server that does not derive ids from the device key")
    return result.poll_interval
