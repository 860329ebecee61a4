"""Enrollment writes the write-once trust anchors only after the server accepted the device.

A mistyped enrollment token must not lock a root into the token, and an enrollment that died
between the server's acceptance and the anchor write must be finished by running it again.
Real server, real SoftHSM2 token (a second device next to the world's enrolled one).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from device_updater.config import Config
from device_updater.enrollment import enroll_device, read_enrollment
from device_updater.errors import EnrollmentError
from device_updater.keystore import (
    AnchorsMissingError,
    Pkcs11Keystore,
    TrustAnchors,
    device_id,
    load_release_key_pem,
)
from device_updater.layout import Layout
from tests.e2e.conftest import World
from tests.edgepkg._repo_support import write_public
from tests.fixtures.softhsm import init_token


class _PowerCut(Exception):
    """Stands for the process dying at the anchor write."""


class _DiesAtProvision(Pkcs11Keystore):
    def provision(self, anchors: TrustAnchors) -> None:
        raise _PowerCut("power cut before the anchors were written")


def _new_device(world: World) -> tuple[Config, Pkcs11Keystore, dict[str, Any]]:
    name = f"enr-{uuid.uuid4().hex[:12]}"
    token = init_token(name)
    config = Config(server_url=world.server_url, state_dir=world.tmp / f"dev-{name}",
                    runtime_dir=world.tmp / f"run-{name}", keystore_type="pkcs11",
                    token_uri=token.uri(), poll_interval=60)
    media = {
        "trusted_root": (world.repo / "metadata" / "1.root.json").read_bytes(),
        "release_keys": [load_release_key_pem(
            write_public(world.release_ref, world.tmp / f"rel-{name}.pub"))],
    }
    return config, Pkcs11Keystore(token.uri()), media


def _token(world: World) -> str:
    r = world.api("POST", "/api/v1/enrollment-tokens", json={"max_uses": 1})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def test_refused_enrollment_leaves_no_anchors_and_a_retry_with_the_right_token_works(
        e2e_world: Callable[[], World]) -> None:
    world = e2e_world()
    config, ks, media = _new_device(world)

    with pytest.raises(EnrollmentError, match="refused the enrollment"):
        enroll_device(config, ks, enrollment_token="mistyped-token", facts={}, **media)
    with pytest.raises(AnchorsMissingError):
        ks.trust_anchors()  # nothing locked in
    assert not Layout(config.state_dir).enrollment.exists()

    enr = enroll_device(config, ks, enrollment_token=_token(world), facts={}, **media)
    assert enr.device_id == device_id(ks)
    anchors = ks.trust_anchors()
    assert anchors.release_keys == media["release_keys"]
    assert read_enrollment(Layout(config.state_dir)) == enr


@pytest.mark.parametrize("same_token", [True, False], ids=["same-token", "new-token"])
def test_enrollment_cut_after_server_acceptance_is_finished_by_enrolling_again(
        e2e_world: Callable[[], World], same_token: bool) -> None:
    world = e2e_world()
    config, ks, media = _new_device(world)
    token = _token(world)

    with pytest.raises(_PowerCut):
        enroll_device(config, _DiesAtProvision(config.token_uri or ""), enrollment_token=token,
                      facts={}, **media)
    # The server registered the key, the token holds no anchors and no record was written.
    r = world.api("GET", f"/api/v1/devices/{device_id(ks)}")
    assert r.status_code == 200, r.text
    with pytest.raises(AnchorsMissingError):
        ks.trust_anchors()
    assert not Layout(config.state_dir).enrollment.exists()

    # Same token: the server's idempotent retry; another token: ``already_enrolled`` for the
    # very key this token holds. Both finish the enrollment.
    enr = enroll_device(config, ks, enrollment_token=token if same_token else _token(world),
                        facts={}, **media)
    assert enr.device_id == device_id(ks)
    assert ks.trust_anchors().release_keys == media["release_keys"]
    assert read_enrollment(Layout(config.state_dir)).device_id == enr.device_id
