"""The shared real-world fixture of the end-to-end tests.

:func:`e2e_world` is a factory: every call gives a fresh :class:`World` (the real update server
on SQLite in a thread, a real TUF repository made with ``edgepkg.repo``, real signed+encrypted
bundles of real ONNX models, a holdout set, and one device enrolled with its key in its own
SoftHSM2 token). Scenarios drive the device through the agent's public entries.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from device_updater.agent import Agent
from device_updater.config import Config
from device_updater.enrollment import enroll_device
from device_updater.keystore import Keystore, Pkcs11Keystore, load_release_key_pem
from device_updater.status import status
from device_updater.trial import HealthReport, TrialPolicy
from device_updater.validator import HoldoutValidator
from edgepkg import keys as ekeys, repo as erepo
from edgepkg.bundle import package_model
from edgepkg.formats.build import blobs_dataset, onnx_mlp_classifier, train_mlp
from tests.edgepkg._repo_support import role_keys, write_key, write_public
from tests.fixtures.softhsm import SoftHSMToken, init_token

MODEL = "clf"
POLICY = {"metric": "top1_accuracy", "max_regression": 0.02}


def _trained(seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    x, y = blobs_dataset(600, 16, 4, seed=7)
    return train_mlp(x, y, hidden=128, epochs=150, seed=seed)


@dataclass
class World:
    tmp: Path
    repo: Path
    release_ref: str
    archive_ref: str
    device_pub: Any
    server_url: str
    app: Any
    operator: str
    keystore: Keystore
    config: Config
    holdout: Path
    models: dict[str, bytes]
    key_service_pub: Any = None  # set with make(key_service=True): bundles are packaged for it


    def bundle(self, version: str, model: bytes, *, recipients: list[Any] | None = None,
               policy: dict[str, Any] | None = None) -> Path:
        src = self.tmp / f"{MODEL}-{version}.onnx"
        src.write_bytes(model)
        out = self.tmp / f"{MODEL}-{version}.edgepkg"
        package_model(src, out, name=MODEL, version=version,
                      signer=ekeys.load_signer(self.release_ref),
                      recipients=recipients or [self.device_pub,
                                                ekeys.load_public_key(self.archive_ref)]
                      + ([self.key_service_pub] if self.key_service_pub is not None else []),
                      policy=policy)
        return out

    def publish(self, version: str, model: bytes, **kw: Any) -> None:
        erepo.publish(self.repo, [self.bundle(version, model, **kw)])

    def api(self, method: str, path: str, **kw: Any) -> Any:
        r = requests.request(method, self.server_url + path,
                             headers={"Authorization": f"Bearer {self.operator}"}, timeout=10,
                             **kw)
        return r

    def rollout(self, version: str) -> str:
        for ro in self.api("GET", "/api/v1/rollouts").json()["rollouts"]:
            if ro["status"] in ("running", "paused"):
                self.api("POST", f"/api/v1/rollouts/{ro['id']}/abort")
        r = self.api("POST", "/api/v1/rollouts", json={
            "model": MODEL, "version": version, "stages": [{"percent": 100}],
            "min_devices": 1})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def agent(self, **kw: Any) -> Agent:
        validator = HoldoutValidator(self.holdout, runtime_dir=self.config.runtime_dir,
                                     cache_path=self.config.state_dir / "vcache.json",
                                     timeout=60)
        return Agent(self.config, self.keystore, validator=validator,
                     trial_policy=TrialPolicy(window_seconds=0, max_failures=1,
                                              deadline_seconds=3600), **kw)

    def healthy(self, version: str, ok: bool = True) -> None:
        from device_updater.layout import Layout
        from device_updater.trial import HealthLog

        HealthLog(Layout(self.config.state_dir).health).append(HealthReport(
            time=time.time() + 0.001, status="healthy" if ok else "failing", model=MODEL,
            version=version, inferences=10, message=None if ok else "NaN outputs"))

    def device_events(self) -> list[dict[str, Any]]:
        did = status(self.config)["device_id"]
        r = self.api("GET", f"/api/v1/devices/{did}/events")
        assert r.status_code == 200, r.text
        body = r.json()
        return list(body.get("events", body if isinstance(body, list) else []))


def _build_world(tmp: Path, token: SoftHSMToken | None, stack: contextlib.ExitStack, *,
                 keystore: Keystore | None = None,
                 keystore_config: dict[str, Any] | None = None,
                 key_service: bool = False) -> World:
    """A fresh real world: update server (SQLite, in a thread), TUF repository, release keys,
    real ONNX models and a holdout set, and one device enrolled with its key in ``token`` (or
    in ``keystore``, configured by ``keystore_config``: the TPM variant).
    ``key_service``: the server holds a key-service key in its own SoftHSM2 token (a known
    recipient of the repository) and grants keys to devices enrolled after packaging."""
    from werkzeug.serving import make_server

    from update_server import schema
    from update_server.app import create_app
    from update_server.auth import create_enrollment_token, create_operator_token
    from update_server.config import load_config
    from update_server.db import get_db

    if keystore is None:
        assert token is not None
        keystore = Pkcs11Keystore(token.uri())
        keystore_config = {"keystore_type": "pkcs11", "token_uri": token.uri()}
    device_pub = keystore.ensure_device_key()
    keys = role_keys(tmp / "keys")
    release = write_key(tmp / "keys" / "release.pem", "ed25519")
    archive = write_key(tmp / "keys" / "archive.pem", "p256")
    dev_pub_file = tmp / "keys" / "device.pub.pem"
    dev_pub_file.write_bytes(ekeys.public_key_pem(device_pub))
    recipients, server_keys, ks_pub = [str(dev_pub_file)], {}, None
    if key_service:
        ks_token = init_token(f"keysvc-{uuid.uuid4().hex[:12]}")
        ks_pub = ekeys.generate_token_keypair(ks_token.uri(), "key-service", usage="derive")
        (tmp / "keys" / "key-service.pub.pem").write_bytes(ekeys.public_key_pem(ks_pub))
        recipients.append(str(tmp / "keys" / "key-service.pub.pem"))
        server_keys["key_service_key"] = ekeys.key_uri(ks_token.uri(), "key-service")
    repo = tmp / "repo"
    erepo.init_repo(repo, keys, release_signer=release, archive_key=archive,
                    recipients=recipients)

    # models: v1, v2 (small retrain: a delta), v3 (regressed), v4 (fine on holdout)
    x, y = blobs_dataset(400, 16, 4, seed=7)
    w1 = _trained(1)
    w2 = [(w1[0][0], w1[0][1]), (w1[1][0], w1[1][1] + np.float32(0.01))]
    rng = np.random.default_rng(3)
    w3 = [(w1[0][0], w1[0][1]), (rng.permutation(w1[1][0].T).T.copy(), w1[1][1])]
    w4 = [(w1[0][0], w1[0][1]), (w1[1][0], w1[1][1] + np.float32(0.02))]
    w5 = [(w1[0][0], w1[0][1]), (w1[1][0], w1[1][1] + np.float32(0.03))]
    models = {v: onnx_mlp_classifier(w) for v, w in
              (("1.0.0", w1), ("2.0.0", w2), ("3.0.0", w3), ("4.0.0", w4), ("5.0.0", w5))}
    holdout = tmp / "holdout"
    holdout.mkdir()
    np.save(holdout / "inputs.npy", x)
    np.save(holdout / "labels.npy", y)

    db_url = f"sqlite:///{tmp / 'server.db'}"
    schema.upgrade(db_url)
    cfg = load_config(env={}, database_url=db_url, poll_interval=60, testing=True,
                      repo_dir=str(repo), secret_key="e2e-secret", **server_keys)
    app = create_app(cfg)
    with app.app_context(), get_db(app).session() as s:
        operator = create_operator_token(s, name="e2e", role="admin")[1]
        enroll_token = create_enrollment_token(s, tags=["e2e"])[1]
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    stack.callback(lambda: get_db(app).dispose())
    stack.callback(httpd.shutdown)
    url = f"http://127.0.0.1:{httpd.server_port}"

    state = tmp / "device"
    config = Config(server_url=url, state_dir=state, runtime_dir=tmp / "run",
                    holdout_dir=holdout, poll_interval=60, tags=("cam",),
                    **(keystore_config or {}))
    w = World(tmp, repo, release, archive, device_pub, url, app, operator, keystore, config,
              holdout, models, key_service_pub=ks_pub)
    enroll_device(config, keystore, enrollment_token=enroll_token,
                  trusted_root=(repo / "metadata" / "1.root.json").read_bytes(),
                  release_keys=[load_release_key_pem(write_public(release, tmp / "rel.pub"))])
    return w


@pytest.fixture
def e2e_world(tmp_path_factory: pytest.TempPathFactory,
              softhsm_env: Path) -> Iterator[Callable[..., World]]:
    """The shared real-world factory: each call builds a fresh, independent world (its own
    server, repository and SoftHSM2 token), so e2e tests never depend on each other's order."""
    with contextlib.ExitStack() as stack:
        def make(*, key_service: bool = False) -> World:
            tmp = tmp_path_factory.mktemp("e2e")
            token = init_token(f"e2e-{uuid.uuid4().hex[:12]}")
            return _build_world(tmp, token, stack, key_service=key_service)
        yield make


