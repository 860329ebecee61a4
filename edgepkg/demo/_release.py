"""The release side of the demo: keys, TUF repository, training, packaging, publishing.

Everything goes through edgepkg's public API, exactly as a release pipeline would use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepkg import keys as ekeys
from edgepkg.bundle import Manifest, package_model
from edgepkg.demo import _hsm, _models
from edgepkg.demo._workspace import Workspace
from edgepkg.repo import PublishResult, init_repo, publish

MODEL_NAME = "demo-classifier"
TUF_ROLES = ("root", "targets", "snapshot", "timestamp")
KEY_SERVICE = "key-service"

# v1 is the bootstrap model (a lenient floor); v2/v3 must beat a real floor and not regress.
# The latency ratio is generous: a demo fleet shares two busy cores, so timings are noisy.
POLICY_BOOTSTRAP = {"metric": "top1_accuracy", "min": 0.3, "max_latency_ratio": 50.0}
POLICY_RELEASE = {
    "metric": "top1_accuracy",
    "min": 0.6,
    "max_regression": 0.05,
    "max_latency_ratio": 50.0,
}


@dataclass
class ReleaseKeys:
    custody: str  # "softhsm2" or "files"
    refs: dict[str, str]  # role -> private key reference (pkcs11: URI or PEM path)
    publics: dict[str, Path]  # role -> public PEM path
    token: _hsm.Token | None = None

    @property
    def release_public_pem(self) -> bytes:
        return self.publics["release"].read_bytes()


RECIPIENT_KEYS = ("archive", KEY_SERVICE)


def create_keys(ws: Workspace, *, use_hsm: bool) -> ReleaseKeys:
    """TUF role keys, the release (bundle-signing) key, the release-archive recipient key and
    the key-service key (a recipient of every bundle; the update server grants devices enrolled
    later the data key with it). In the demo the key service's key sits in the release token;
    docs/security.md ("Separation") says why production gives the server its own token."""
    module = _hsm.softhsm_module() if use_hsm else None
    names = [*TUF_ROLES, "release", *RECIPIENT_KEYS]
    refs: dict[str, str] = {}
    publics: dict[str, Path] = {}
    token = None
    if module is not None:
        token = _hsm.init_token(ws.hsm, module, "edgepkg-release")
        for name in names:
            kind: ekeys.KeyKind = "recipient" if name in RECIPIENT_KEYS else "signing"
            created = ekeys.create_key(name, kind, directory=ws.keys, pkcs11_uri=token.uri(name))
            refs[name], publics[name] = created.private_ref, created.public_path
        return ReleaseKeys("softhsm2", refs, publics, token)
    for name in names:
        kind_: ekeys.KeyKind = "recipient" if name in RECIPIENT_KEYS else "signing"
        created = ekeys.create_key(name, kind_, directory=ws.keys)
        refs[name], publics[name] = created.private_ref, created.public_path
    return ReleaseKeys("files", refs, publics)


def init_repository(ws: Workspace, keys: ReleaseKeys) -> Path:
    init_repo(
        ws.repo,
        {role: [keys.refs[role]] for role in TUF_ROLES},
        release_keys=[str(keys.publics["release"])],
        release_signer=keys.refs["release"],
        archive_key=keys.refs["archive"],
    )
    return ws.repo / "metadata" / "1.root.json"


@dataclass
class TrainedModels:
    data: _models.DemoData
    paths: dict[str, Path]  # version -> ONNX file
    accuracy: dict[str, float]  # version -> accuracy on the pooled holdout
    sizes: dict[str, int] = field(default_factory=dict)


def demo_data(*, quick: bool) -> _models.DemoData:
    return _models.make_data(n_train=2400 if quick else 4000, n_holdout=4000)


def train_models(ws: Workspace, data: _models.DemoData) -> TrainedModels:
    """Train v1/v2/v3 with numpy and export each to ONNX (CPU-bound: run it beside I/O)."""
    weights = _models.train_versions(data)
    paths, acc = {}, {}
    for version, w in weights.items():
        path = ws.models / f"{MODEL_NAME}-{version}.onnx"
        path.write_bytes(_models.export_onnx(w))
        paths[version] = path
        acc[version] = _models.accuracy(w, data.x_holdout, data.y_holdout)
    return TrainedModels(data, paths, acc, {v: p.stat().st_size for v, p in paths.items()})


def package_and_publish(
    ws: Workspace,
    keys: ReleaseKeys,
    models: TrainedModels,
    version: str,
    device_keys: Sequence[Path],
) -> tuple[Manifest, PublishResult]:
    """Package ``version`` for the enrolled devices, the archive key and the key service
    (``edgepkg package --key-service``), and publish it (deltas for the same recipients)."""
    policy: dict[str, Any] = POLICY_BOOTSTRAP if version == "1.0.0" else POLICY_RELEASE
    key_service = keys.publics[KEY_SERVICE]
    recipients = [ekeys.load_public_key(p)
                  for p in [*device_keys, keys.publics["archive"], key_service]]
    out = ws.bundles / f"{MODEL_NAME}-{version}.edgepkg"
    manifest = package_model(
        models.paths[version],
        out,
        name=MODEL_NAME,
        version=version,
        signer=ekeys.load_signer(keys.refs["release"]),
        recipients=recipients,
        format="onnx",
        policy=policy,
    )
    result = publish(ws.repo, [out], recipients=[str(p) for p in [*device_keys, key_service]])
    return manifest, result
