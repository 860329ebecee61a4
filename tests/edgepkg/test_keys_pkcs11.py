"""Keys in a real SoftHSM2 token: signing, ECDH in the token, non-extractability, data objects."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from edgepkg.cli import main
from edgepkg.errors import BadSignatureError, HSMError, KeyError_
from edgepkg.keys import (
    create_key,
    generate_token_keypair,
    key_uri,
    load_public_key,
    load_recipient_key,
    load_signer,
    public_key_id,
    read_data_object,
    store_data_object,
    verify_signature,
)
from edgepkg.keys._uri import Pkcs11UriError
from tests.fixtures.softhsm import SoftHSMToken

pytestmark = pytest.mark.softhsm


def test_token_signing_key_round_trip(softhsm_token: SoftHSMToken, tmp_path: Path) -> None:
    created = create_key("release", "signing", directory=tmp_path, pkcs11_uri=softhsm_token.uri())
    assert created.location == "pkcs11" and created.algorithm == "ecdsa-p256"
    assert not (tmp_path / "release.key.pem").exists()  # nothing private on disk
    assert "pin-value" not in created.private_ref
    signer = load_signer(created.private_ref, pin=softhsm_token.pin)
    assert signer.algorithm == "ecdsa-p256-sha256"
    assert signer.key_id == created.key_id
    sig = signer.sign(b"manifest bytes")
    assert sig[0] == 0x30  # DER, as the shared contract says
    verify_signature(load_public_key(str(created.public_path)), sig, b"manifest bytes")
    with pytest.raises(BadSignatureError):
        verify_signature(signer.public_key(), sig, b"other bytes")


def test_token_ecdh_equals_software_ecdh(softhsm_token: SoftHSMToken, tmp_path: Path) -> None:
    create_key("fleet", "recipient", directory=tmp_path, pkcs11_uri=softhsm_token.uri())
    key = load_recipient_key(softhsm_token.uri("fleet", type="private"))
    assert key.software_private_key() is None
    for _ in range(3):
        eph = ec.generate_private_key(ec.SECP256R1())
        assert key.exchange(eph.public_key()) == eph.exchange(ec.ECDH(), key.public_key())
    with pytest.raises(KeyError_, match="P-256"):
        key.exchange(ec.generate_private_key(ec.SECP384R1()).public_key())  # type: ignore[arg-type]


_EXTRACT_ATTEMPT = r"""
import json, sys
import pkcs11
from pkcs11 import Attribute, ObjectClass, KeyType, Mechanism
from pkcs11 import exceptions as p11e
module, label, pin = sys.argv[1:4]
token = pkcs11.lib(module).get_token(token_label=label)
report = {}
with token.open(rw=True, user_pin=pin) as session:
    wrapping = session.generate_key(KeyType.AES, 256, template={Attribute.WRAP: True})
    for priv in session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}):
        r = report[priv[Attribute.LABEL]] = {}
        for attr in ("SENSITIVE", "EXTRACTABLE", "ALWAYS_SENSITIVE", "NEVER_EXTRACTABLE"):
            r[attr] = priv[getattr(Attribute, attr)]
        def attempt(name, fn):
            try:
                fn()
                r[name] = "SUCCEEDED"
            except p11e.PKCS11Error as exc:
                r[name] = type(exc).__name__
        attempt("read_value", lambda: priv[Attribute.VALUE])
        attempt("wrap", lambda: wrapping.wrap_key(priv, mechanism=Mechanism.AES_KEY_WRAP_PAD))
        def relax(attr, value):
            priv[attr] = value
            if priv[attr] != value:
                raise p11e.AttributeReadOnly()
        attempt("set_extractable", lambda: relax(Attribute.EXTRACTABLE, True))
        attempt("set_sensitive_false", lambda: relax(Attribute.SENSITIVE, False))
        attempt("copy_extractable", lambda: priv.copy({Attribute.EXTRACTABLE: True}))
        attempt("read_value_again", lambda: priv[Attribute.VALUE])
print(json.dumps(report))
"""


def test_private_key_cannot_be_read_out_of_the_token(
    softhsm_token: SoftHSMToken, tmp_path: Path
) -> None:
    create_key("fleet", "recipient", directory=tmp_path, pkcs11_uri=softhsm_token.uri())
    create_key("release", "signing", directory=tmp_path, pkcs11_uri=softhsm_token.uri())
    generate_token_keypair(softhsm_token.uri(), "device")
    # an attacker who has the PIN, in a process of their own, tries every way out
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _EXTRACT_ATTEMPT,
            softhsm_token.module,
            softhsm_token.token_label,
            softhsm_token.pin,
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert set(report) == {"fleet", "release", "device"}
    for label, r in report.items():
        assert r["SENSITIVE"] is True and r["ALWAYS_SENSITIVE"] is True, label
        assert r["EXTRACTABLE"] is False and r["NEVER_EXTRACTABLE"] is True, label
        assert r["read_value"] == "AttributeSensitive", label
        for attempt in (
            "wrap",
            "set_extractable",
            "set_sensitive_false",
            "copy_extractable",
            "read_value_again",
        ):
            assert r[attempt] != "SUCCEEDED", (label, attempt, r)


def test_wrong_pin_is_a_typed_error(softhsm_token: SoftHSMToken, tmp_path: Path) -> None:
    created = create_key("k", "signing", directory=tmp_path, pkcs11_uri=softhsm_token.uri())
    with pytest.raises(HSMError, match="wrong PIN"):
        load_signer(created.private_ref, pin="not-the-pin")
    # a correct PIN still works afterwards
    load_signer(created.private_ref, pin=softhsm_token.pin).sign(b"x")


def test_missing_pin_token_object_and_wrong_type_are_typed_errors(
    softhsm_token: SoftHSMToken, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDGEPKG_PKCS11_PIN", raising=False)
    create_key("signing", "signing", directory=tmp_path, pkcs11_uri=softhsm_token.uri())
    create_key("recip", "recipient", directory=tmp_path, pkcs11_uri=softhsm_token.uri())
    with pytest.raises(KeyError_, match="PIN is needed"):
        load_signer(softhsm_token.uri("signing", with_pin=False))
    with pytest.raises(HSMError, match="no PKCS#11 token"):
        load_signer(softhsm_token.uri("signing").replace(softhsm_token.token_label, "nope"))
    with pytest.raises(HSMError, match="no private key with label 'missing'"):
        load_signer(softhsm_token.uri("missing"))
    with pytest.raises(HSMError, match="not allowed for signing"):
        load_signer(softhsm_token.uri("recip"))
    with pytest.raises(HSMError, match="not allowed for key agreement"):
        load_recipient_key(softhsm_token.uri("signing"))
    with pytest.raises(Pkcs11UriError, match="type=public"):
        load_signer(softhsm_token.uri("signing", type="public"))
    with pytest.raises(Pkcs11UriError, match="names no object"):
        load_signer(softhsm_token.uri())
    store_data_object(softhsm_token.uri(), "blob", b"data")
    with pytest.raises(HSMError, match="data object, not a private key"):
        load_signer(softhsm_token.uri("blob"))


def test_pin_from_pin_source_file_and_env(
    softhsm_token: SoftHSMToken, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_key("k", "signing", directory=tmp_path, pkcs11_uri=softhsm_token.uri())
    pin_file = tmp_path / "pin"
    pin_file.write_text(softhsm_token.pin + "\n")
    load_signer(softhsm_token.uri("k", pin_source=str(pin_file))).sign(b"a")
    monkeypatch.setenv("RELEASE_PIN", softhsm_token.pin)
    load_signer(softhsm_token.uri("k", pin_source="env:RELEASE_PIN")).sign(b"a")
    monkeypatch.setenv("EDGEPKG_PKCS11_PIN", softhsm_token.pin)
    load_signer(softhsm_token.uri("k", with_pin=False)).sign(b"a")


def test_public_key_by_uri_needs_no_pin(softhsm_token: SoftHSMToken, tmp_path: Path) -> None:
    created = create_key("k", "recipient", directory=tmp_path, pkcs11_uri=softhsm_token.uri())
    pub = load_public_key(softhsm_token.uri("k", with_pin=False, type="public"))
    assert public_key_id(pub) == created.key_id


def test_token_key_label_cannot_be_reused(softhsm_token: SoftHSMToken, tmp_path: Path) -> None:
    create_key("k", "signing", directory=tmp_path, pkcs11_uri=softhsm_token.uri())
    with pytest.raises(HSMError, match="already holds"):
        create_key("k", "signing", directory=tmp_path / "other", pkcs11_uri=softhsm_token.uri())


def test_data_objects_round_trip_replace_and_survive_reopen(softhsm_token: SoftHSMToken) -> None:
    uri = softhsm_token.uri()
    store_data_object(uri, "tuf-root-sha256", b"a" * 32)
    store_data_object(uri, "tuf-root-sha256", b"b" * 32)
    store_data_object(uri, "release-keys", b"-----BEGIN PUBLIC KEY-----\n...")
    assert read_data_object(uri, "tuf-root-sha256") == b"b" * 32
    with pytest.raises(HSMError, match="no data object"):
        read_data_object(uri, "absent")
    # a fresh process (new library load, new session) reads the same values
    code = (
        "from edgepkg.keys import read_data_object; import sys;"
        f"sys.stdout.write(read_data_object({uri!r}, 'tuf-root-sha256').decode())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out == "b" * 32
    # one object per label is left after the replace, and they are private (need a login)
    count = (
        "import sys, pkcs11; from pkcs11 import Attribute, ObjectClass;"
        "t = pkcs11.lib(sys.argv[1]).get_token(token_label=sys.argv[2]);"
        "s = t.open(user_pin=sys.argv[3] or None);"
        "print(sorted(o[Attribute.LABEL]"
        " for o in s.get_objects({Attribute.CLASS: ObjectClass.DATA})))"
    )
    for pin, expected in (("", "[]"), (softhsm_token.pin, "['release-keys', 'tuf-root-sha256']")):
        out = subprocess.run(
            [sys.executable, "-c", count, softhsm_token.module, softhsm_token.token_label, pin],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        assert out.strip() == expected


def test_data_objects_need_the_pin(
    softhsm_token: SoftHSMToken, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDGEPKG_PKCS11_PIN", raising=False)
    with pytest.raises(KeyError_, match="PIN"):
        store_data_object(softhsm_token.uri(with_pin=False), "x", b"1")
    with pytest.raises(HSMError, match="wrong PIN"):
        read_data_object(softhsm_token.uri(with_pin=False), "x", pin="bad-pin")


def test_device_keypair_signs_and_decrypts(softhsm_token: SoftHSMToken) -> None:
    pub = generate_token_keypair(softhsm_token.uri(), "device")
    ref = key_uri(softhsm_token.uri(), "device")
    signer = load_signer(ref)
    recipient = load_recipient_key(ref)
    assert signer.key_id == recipient.key_id == public_key_id(pub)
    verify_signature(pub, signer.sign(b"request"), b"request")
    eph = ec.generate_private_key(ec.SECP256R1())
    assert recipient.exchange(eph.public_key()) == eph.exchange(ec.ECDH(), pub)


def test_concurrent_use_from_threads(softhsm_token: SoftHSMToken) -> None:
    generate_token_keypair(softhsm_token.uri(), "device")
    ref = key_uri(softhsm_token.uri(), "device")
    signer = load_signer(ref)
    recipient = load_recipient_key(ref)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                verify_signature(signer.public_key(), signer.sign(b"m"), b"m")
                eph = ec.generate_private_key(ec.SECP256R1())
                assert recipient.exchange(eph.public_key()) == eph.exchange(
                    ec.ECDH(), recipient.public_key()
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_keys_keep_working_after_a_new_token_appears(
    softhsm_token: SoftHSMToken, tmp_path: Path
) -> None:
    from tests.fixtures.softhsm import init_token

    created = create_key("k", "signing", directory=tmp_path, pkcs11_uri=softhsm_token.uri())
    signer = load_signer(created.private_ref, pin=softhsm_token.pin)
    signer.sign(b"before")
    other = init_token(f"late-{os.getpid() % 1000}")  # forces the library to re-initialise
    generate_token_keypair(other.uri(), "dev")
    verify_signature(signer.public_key(), signer.sign(b"after"), b"after")


def test_cli_create_and_show_token_key(
    softhsm_token: SoftHSMToken, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        [
            "keys",
            "create",
            "fleet",
            "--kind",
            "recipient",
            "--dir",
            str(tmp_path),
            "--pkcs11",
            softhsm_token.uri(),
            "--json",
        ]
    )
    assert rc == 0
    out, err = capsys.readouterr()
    created = json.loads(out)
    assert created["location"] == "pkcs11" and "development" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fleet.pub.pem"]
    assert main(["keys", "show", softhsm_token.uri("fleet", type="private"), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["key_id"] == created["key_id"]
    assert shown["has_private"] is True
    assert shown["location"] == "pkcs11"
    assert (
        main(["keys", "show", softhsm_token.uri("fleet").replace("pin-value=", "pin-value=x")]) == 1
    )
    assert "wrong PIN" in capsys.readouterr().err
