"""Security review: the token-held trust anchors (SoftHSM2).

``xfail(strict=True)`` = an open vulnerability demonstrated here; remove the marker once fixed.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from tuf.api.metadata import Metadata, Root

from device_updater.agent import Agent
from device_updater.config import Config
from device_updater.enrollment import enroll_device
from device_updater.keystore import (
    ANCHORS_LABEL,
    AnchorsAlreadyProvisionedError,
    AnchorsTamperedError,
    Pkcs11Keystore,
    TrustAnchors,
    device_id,
)
from device_updater.state import Phase
from device_updater.tuf_client import (
    TrustAnchorMismatchError,
    install_trusted_root,
    load_anchored_root,
)
from edgepkg.keys import create_key, public_key_pem


def _release_pem(tmp_path: Path, name: str) -> bytes:
    return public_key_pem(create_key(name, "signing", directory=tmp_path / name).public_key)


def _root(version: int) -> bytes:
    md = Metadata(Root(version=version))
    return md.to_bytes()


def test_swapped_trusted_root_file_is_refused(tmp_path: Path) -> None:
    """Pinned property: the bootstrap root on disk must hash to the token-held anchor; a
    replaced file (even a valid root, even via a symlink) is refused."""
    anchor = install_trusted_root(tmp_path / "tuf", _root(1))
    assert load_anchored_root(tmp_path / "tuf", anchor) == _root(1)
    other = tmp_path / "other-root.json"
    other.write_bytes(_root(2))
    target = tmp_path / "tuf" / "trusted-root.json"
    target.unlink()
    target.symlink_to(other)
    with pytest.raises(TrustAnchorMismatchError):
        load_anchored_root(tmp_path / "tuf", anchor)


def test_trust_anchors_cannot_be_replaced_with_the_user_pin(softhsm_token, tmp_path: Path) -> None:
    ks = Pkcs11Keystore(softhsm_token.uri())
    ks.ensure_device_key()
    genuine = TrustAnchors(hashlib.sha256(b"genuine root").hexdigest(),
                           [_release_pem(tmp_path, "release")])
    ks.provision(genuine)

    # attacker with the user PIN only (no SO PIN), e.g. read from the daemon's pin-source
    evil = TrustAnchors(hashlib.sha256(b"attacker root").hexdigest(),
                        [_release_pem(tmp_path, "attacker")])
    with pytest.raises(Exception):
        Pkcs11Keystore(softhsm_token.uri()).provision(evil)
    assert Pkcs11Keystore(softhsm_token.uri()).trust_anchors() == genuine


# --- write-once anchors: what an attacker holding only the user PIN can and cannot do ---------


_ATTACKER = """
import json, sys
import pkcs11
from pkcs11 import Attribute, ObjectClass
from pkcs11.exceptions import PKCS11Error

module, token_label, pin, label, evil = sys.argv[1:6]
out = {}
with pkcs11.lib(module).get_token(token_label=token_label).open(rw=True, user_pin=pin) as s:
    objs = list(s.get_objects({Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: label}))
    out["found"] = len(objs)
    obj = objs[0]
    out["modifiable"] = bool(obj[Attribute.MODIFIABLE])
    out["destroyable"] = bool(obj[Attribute.DESTROYABLE])
    for what, attempt in (
        ("modify", lambda: obj.__setitem__(Attribute.VALUE, evil.encode())),
        ("relabel", lambda: obj.__setitem__(Attribute.LABEL, "renamed-away")),
        ("unlock", lambda: obj.__setitem__(Attribute.DESTROYABLE, True)),
        ("destroy", obj.destroy),
    ):
        try:
            attempt()
            out[what] = "done"
        except PKCS11Error as exc:
            out[what] = "refused: " + type(exc).__name__
    s.create_object({Attribute.CLASS: ObjectClass.DATA, Attribute.TOKEN: True,
                     Attribute.PRIVATE: True, Attribute.LABEL: label,
                     Attribute.APPLICATION: "edgepkg:99", Attribute.VALUE: evil.encode()})
print(json.dumps(out))
"""


def _attack_with_user_pin(token, evil: TrustAnchors) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """What an attacker holding only the USER PIN does, in its own process through
    python-pkcs11 directly: try to modify, relabel, unlock and destroy the anchors object, then
    add a second anchors object of their own."""
    done = subprocess.run(
        [sys.executable, "-c", _ATTACKER, token.module, token.token_label, token.pin,
         ANCHORS_LABEL, evil.to_bytes().decode()],
        capture_output=True, text=True, timeout=60, check=True)
    return dict(json.loads(done.stdout))


def test_second_provision_with_other_anchors_is_refused_with_the_factory_path(
        softhsm_token, tmp_path: Path) -> None:
    ks = Pkcs11Keystore(softhsm_token.uri())
    genuine = TrustAnchors(hashlib.sha256(b"genuine root").hexdigest(),
                           [_release_pem(tmp_path, "release")])
    ks.provision(genuine)
    ks.provision(genuine)  # a retried enrollment: same anchors, nothing written
    other = TrustAnchors(hashlib.sha256(b"other root").hexdigest(), genuine.release_keys)
    with pytest.raises(AnchorsAlreadyProvisionedError, match="SO PIN"):
        ks.provision(other)
    assert Pkcs11Keystore(softhsm_token.uri()).trust_anchors() == genuine


def test_user_pin_can_neither_change_nor_destroy_anchors_and_a_second_object_is_refused(
        softhsm_token, tmp_path: Path) -> None:
    ks = Pkcs11Keystore(softhsm_token.uri())
    genuine = TrustAnchors(hashlib.sha256(b"genuine root").hexdigest(),
                           [_release_pem(tmp_path, "release")])
    ks.provision(genuine)
    evil = TrustAnchors(hashlib.sha256(b"attacker root").hexdigest(),
                        [_release_pem(tmp_path, "attacker")])
    seen = _attack_with_user_pin(softhsm_token, evil)
    assert seen["found"] == 1 and not seen["modifiable"] and not seen["destroyable"], seen
    for what in ("modify", "relabel", "unlock", "destroy"):
        assert seen[what].startswith("refused"), seen
    # all the user PIN could do is add a second object: reading anchors now fails, typed
    with pytest.raises(AnchorsTamperedError, match="tampered"):
        Pkcs11Keystore(softhsm_token.uri()).trust_anchors()
    with pytest.raises(AnchorsTamperedError):
        Pkcs11Keystore(softhsm_token.uri()).provision(genuine)


class _ScriptedServer(requests.Session):
    """The update server's device API as a small fake ``requests.Session`` (the collaborator the
    Agent takes): enrollment, one check-in answer, and it records the events it is sent."""

    def __init__(self, device_id: str, assignments: list[dict[str, Any]]) -> None:
        super().__init__()
        self.device_id = device_id
        self.assignments = assignments
        self.events: list[dict[str, Any]] = []
        self.paths: list[str] = []

    def request(self, method, url, data=None, **kw):  # type: ignore[no-untyped-def,override]
        path = url.split("://", 1)[1].split("/", 1)[1]
        self.paths.append(f"{method} /{path}")
        body: dict[str, Any]
        if path == "api/v1/enroll":
            body, code = {"device_id": self.device_id, "poll_interval": 60}, 201
        elif path.endswith("/checkin"):
            body, code = {"poll_interval": 60, "assignments": self.assignments}, 200
        elif path.endswith("/events"):
            sent = json.loads(data)["events"]
            self.events.extend(sent)
            body, code = {"accepted": len(sent), "duplicates": 0}, 200
        else:
            body, code = {"error": {"code": "not_found", "message": path}}, 404
        resp = requests.Response()
        resp.status_code = code
        resp.url = url
        resp.headers["Content-Type"] = "application/json"
        resp.raw = io.BytesIO(json.dumps(body).encode())
        return resp


def _refuse_validation(*_a: Any, **_k: Any) -> Any:
    raise AssertionError("nothing may reach validation with tampered anchors")


def test_updater_installs_nothing_when_anchors_were_injected(softhsm_token, tmp_path: Path) -> None:
    ks = Pkcs11Keystore(softhsm_token.uri())
    ks.ensure_device_key()
    config = Config(server_url="http://updates.invalid", state_dir=tmp_path / "device",
                    runtime_dir=tmp_path / "run", keystore_type="pkcs11",
                    token_uri=softhsm_token.uri())
    server = _ScriptedServer(device_id(ks), [{
        "action": "install", "model": "det", "version": "2.0.0",
        "target": "models/det/2.0.0/det-2.0.0.edgepkg", "delta_target": None,
        "rollout_id": "r1", "allow_downgrade": False}])
    enroll_device(config, ks, enrollment_token="tok", trusted_root=_root(1),
                  release_keys=[_release_pem(tmp_path, "release")], session=server, facts={})
    _attack_with_user_pin(softhsm_token, TrustAnchors(
        hashlib.sha256(b"attacker root").hexdigest(), [_release_pem(tmp_path, "attacker")]))

    agent = Agent(config, Pkcs11Keystore(softhsm_token.uri()), session=server,
                  validator=_refuse_validation, facts={})
    agent.run_cycle()

    st = agent.store("det").load()
    assert st.phase is Phase.REJECTED and "tampered" in (st.reason or ""), st
    assert agent.slots("det").active() is None  # nothing installed
    assert not any("/tuf/" in p for p in server.paths), server.paths  # not even TUF was asked
    rejected = [e for e in server.events if e["type"] == "rejected"]
    assert rejected and "tampered" in rejected[0]["details"]["reason"], server.events
    agent.run_cycle()  # later cycles keep refusing the same assignment, no crash
    assert agent.store("det").load().phase is Phase.REJECTED
