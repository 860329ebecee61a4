"""Key grants with SoftHSM2 on both sides: a device enrolled after packaging installs a release.

The key-service key lives in one token, the device key in another; ECDH runs inside each.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import itertools
import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from edgepkg import errors
from edgepkg.bundle import BundleReader, read_bundle_info, unpack_bundle, write_bundle
from edgepkg.cli import main
from edgepkg.grants import (
    GrantError,
    GrantExpiredError,
    GrantMismatchError,
    KeyGrant,
    grant_key_source,
    make_grant,
    open_grant,
)
from edgepkg.keys import generate_token_keypair, key_uri, load_recipient_key, public_key_id
from edgepkg.keys._software import FileRecipientKey, FileSigner, public_key_pem
from tests.fixtures.softhsm import SoftHSMToken, init_token

_TOKENS = itertools.count(1)
NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)
LATER = NOW + dt.timedelta(days=7)


class Setup:
    def __init__(self, tmp: Path, service_token: SoftHSMToken, device_token: SoftHSMToken) -> None:
        self.tmp = tmp
        self.signer = FileSigner(ed25519.Ed25519PrivateKey.generate(), "release")
        generate_token_keypair(service_token.uri(), "key-service", usage="derive")
        self.service_uri = key_uri(service_token.uri(), "key-service")
        self.service = load_recipient_key(self.service_uri)
        generate_token_keypair(device_token.uri(), "device")
        self.device_uri = key_uri(device_token.uri(), "device")
        self.device = load_recipient_key(self.device_uri)
        self.device_id = self.device.key_id
        # The device that existed at packaging time; the token device enrolls later.
        self.early = FileRecipientKey(ec.generate_private_key(ec.SECP256R1()), "early")
        self.model = tmp / "model.bin"
        self.model.write_bytes(os.urandom(20_000) + b"\0" * 30_000)

    def bundle(self, version: str = "2.0.0") -> Path:
        out = self.tmp / f"m-{version}.edgepkg"
        write_bundle(self.model, out,
                     manifest_fields={"name": "det", "version": version, "format": "raw"},
                     signer=self.signer,
                     recipients=[self.early.public_key(), self.service.public_key()],
                     chunk_size=4096)
        return out

    def grant(self, bundle: Path, **kw: object) -> KeyGrant:
        args: dict[str, object] = {"expires_at": LATER, "now": NOW}
        args.update(kw)
        return make_grant(bundle, self.service, self.device.public_key(), self.device_id,
                          **args)  # type: ignore[arg-type]


@pytest.fixture()
def setup(tmp_path: Path, softhsm_env: Path) -> Setup:
    # Two fresh tokens per test: the key service's and the device's.
    tag = f"{os.getpid() % 100000}-{next(_TOKENS)}"  # token labels are at most 32 chars
    return Setup(tmp_path, init_token(f"ks-{tag}"), init_token(f"dv-{tag}"))


def test_device_enrolled_after_packaging_unpacks_through_a_grant(setup: Setup) -> None:
    bundle = setup.bundle()
    before = bundle.read_bytes()
    assert setup.device_id not in read_bundle_info(bundle).recipient_key_ids
    with pytest.raises(errors.NotARecipientError):
        unpack_bundle(bundle, setup.tmp / "x", keys=[setup.device],
                      trusted_keys=[setup.signer.public_key()])
    grant = KeyGrant.from_json(setup.grant(bundle).to_json())  # through its JSON form
    out = setup.tmp / "model.out"
    manifest = unpack_bundle(
        bundle, out, trusted_keys=[setup.signer.public_key()],
        data_key_source=grant_key_source(grant, setup.device, device_id=setup.device_id, now=NOW))
    assert out.read_bytes() == setup.model.read_bytes()
    assert manifest.version == "2.0.0"
    assert bundle.read_bytes() == before  # a grant never changes the bundle (nor its TUF hash)


def test_data_key_never_reaches_the_disk(setup: Setup) -> None:
    bundle = setup.bundle()
    grant_file = setup.tmp / "grant.json"
    grant = setup.grant(bundle)
    grant_file.write_bytes(grant.to_json())
    unpack_bundle(bundle, setup.tmp / "model.out", trusted_keys=[setup.signer.public_key()],
                  data_key_source=grant_key_source(grant, setup.device,
                                                   device_id=setup.device_id, now=NOW))
    digest = read_bundle_info(bundle)
    key = open_grant(grant, hashlib.sha256(digest.manifest_bytes).hexdigest(), setup.device_id,
                     NOW, setup.device)
    assert len(key) == 32
    forms = [key, key.hex().encode(), base64.b64encode(key), base64.urlsafe_b64encode(key)]
    for path in setup.tmp.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert not any(f in blob for f in forms), path


def test_grant_for_another_device_is_refused(setup: Setup) -> None:
    bundle = setup.bundle()
    grant = setup.grant(bundle)
    other = FileRecipientKey(ec.generate_private_key(ec.SECP256R1()), "other")
    with pytest.raises(GrantMismatchError, match="device"):
        unpack_bundle(bundle, setup.tmp / "o", trusted_keys=[setup.signer.public_key()],
                      data_key_source=grant_key_source(grant, other, device_id=other.key_id,
                                                       now=NOW))
    # Claiming the granted id with another key does not help either.
    with pytest.raises(GrantMismatchError):
        unpack_bundle(bundle, setup.tmp / "o", trusted_keys=[setup.signer.public_key()],
                      data_key_source=grant_key_source(grant, other, device_id=setup.device_id,
                                                       now=NOW))
    assert not (setup.tmp / "o").exists()


def test_grant_for_another_release_is_refused(setup: Setup) -> None:
    old, new = setup.bundle("1.0.0"), setup.bundle("2.0.0")
    grant = setup.grant(old)
    with pytest.raises(GrantMismatchError, match="another release"):
        BundleReader(new, trusted_keys=[setup.signer.public_key()],
                     data_key_source=grant_key_source(grant, setup.device,
                                                      device_id=setup.device_id, now=NOW)
                     ).chunks().__next__()


def test_expired_grant_is_refused(setup: Setup) -> None:
    bundle = setup.bundle()
    grant = setup.grant(bundle)
    with pytest.raises(GrantExpiredError):
        unpack_bundle(bundle, setup.tmp / "o", trusted_keys=[setup.signer.public_key()],
                      data_key_source=grant_key_source(grant, setup.device,
                                                       device_id=setup.device_id,
                                                       now=LATER + dt.timedelta(seconds=1)))


@pytest.mark.parametrize("change", ["expires_at", "issued_at", "model_version", "wrapped_key"])
def test_tampered_grant_is_refused(setup: Setup, change: str) -> None:
    bundle = setup.bundle()
    data = json.loads(setup.grant(bundle).to_json())
    if change == "expires_at":
        data["expires_at"] = "2031-01-01T00:00:00Z"  # extend the grant
    elif change == "issued_at":
        data["issued_at"] = "2029-12-31T00:00:00Z"
    elif change == "model_version":
        data["model_version"] = "9.9.9"
    else:
        raw = bytearray(base64.b64decode(data["wrapped_key"]))
        raw[-1] ^= 1
        data["wrapped_key"] = base64.b64encode(bytes(raw)).decode()
    grant = KeyGrant.from_json(json.dumps(data))
    with pytest.raises(errors.TamperedError, match="key grant"):
        unpack_bundle(bundle, setup.tmp / "o", trusted_keys=[setup.signer.public_key()],
                      data_key_source=grant_key_source(grant, setup.device,
                                                       device_id=setup.device_id, now=NOW))
    assert not (setup.tmp / "o").exists()


def test_bundle_not_packaged_for_the_key_service_cannot_be_granted(setup: Setup) -> None:
    out = setup.tmp / "direct.edgepkg"
    write_bundle(setup.model, out, manifest_fields={"name": "det", "version": "1.0.0",
                                                    "format": "raw"},
                 signer=setup.signer, recipients=[setup.early.public_key()])
    with pytest.raises(errors.NotARecipientError, match="key-service"):
        setup.grant(out)


def test_grant_limits_are_checked(setup: Setup) -> None:
    bundle = setup.bundle()
    with pytest.raises(errors.UsageError, match="device id"):
        make_grant(bundle, setup.service, setup.device.public_key(), "ab" * 32, LATER, NOW)
    with pytest.raises(errors.UsageError, match="future"):
        setup.grant(bundle, expires_at=NOW)
    with pytest.raises(errors.UsageError, match="at most"):
        setup.grant(bundle, expires_at=NOW + dt.timedelta(days=400))


@pytest.mark.parametrize("raw", [
    b"[]", b"{", b"x" * 5000, b'{"format":"edgepkg-key-grant"}',
])
def test_malformed_grant_json_is_refused(raw: bytes) -> None:
    with pytest.raises(GrantError):
        KeyGrant.from_json(raw)


def test_unknown_grant_field_is_refused(setup: Setup) -> None:
    data = json.loads(setup.grant(setup.bundle()).to_json())
    data["extra"] = 1
    with pytest.raises(GrantError, match="unknown"):
        KeyGrant.from_json(json.dumps(data))


def test_cli_grant_then_unpack_with_grant(setup: Setup,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    bundle = setup.bundle()
    release_pub = setup.tmp / "release.pub.pem"
    release_pub.write_bytes(public_key_pem(setup.signer.public_key()))
    device_pub = setup.tmp / "device.pub.pem"
    device_pub.write_bytes(public_key_pem(setup.device.public_key()))
    grant_file = setup.tmp / "grant.json"
    rc = main(["grant", "--bundle", str(bundle), "--key-service", setup.service_uri,
               "--device-key", str(device_pub), "--expires", "7d", "--trusted-key",
               str(release_pub), "-o", str(grant_file)])
    assert rc == 0, capsys.readouterr().err
    assert json.loads(grant_file.read_text())["device_id"] == public_key_id(
        setup.device.public_key())
    out = setup.tmp / "model.out"
    rc = main(["unpack", str(bundle), "--grant", str(grant_file), "--key",
               setup.device_uri, "--trusted-key", str(release_pub),
               "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert out.read_bytes() == setup.model.read_bytes()
