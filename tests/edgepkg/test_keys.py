"""File keys, key references, pkcs11: URI parsing, the keys CLI (no token needed)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from edgepkg.cli import main
from edgepkg.errors import BadSignatureError, KeyError_
from edgepkg.keys import (
    RecipientKey,
    Signer,
    create_key,
    load_public_key,
    load_recipient_key,
    load_signer,
    parse_pkcs11_uri,
    public_key_id,
    public_key_pem,
    verify_signature,
)
from edgepkg.keys._uri import Pkcs11UriError, resolve_pin


@pytest.mark.parametrize("algorithm", ["ed25519", "ecdsa-p256"])
def test_file_signing_key_round_trip(tmp_path: Path, algorithm: str) -> None:
    created = create_key("release", "signing", directory=tmp_path, algorithm=algorithm)
    priv = tmp_path / "release.key.pem"
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    signer = load_signer(str(priv))
    assert isinstance(signer, Signer)
    assert signer.key_id == created.key_id == public_key_id(load_public_key(created.public_path))
    sig = signer.sign(b"manifest")
    verify_signature(load_public_key(str(created.public_path)), sig, b"manifest")
    if algorithm == "ed25519":
        assert signer.algorithm == "ed25519" and len(sig) == 64
    else:
        assert signer.algorithm == "ecdsa-p256-sha256" and sig[0] == 0x30  # DER SEQUENCE
    with pytest.raises(BadSignatureError):
        verify_signature(signer.public_key(), sig, b"manifest!")


def test_key_id_is_sha256_of_der_spki() -> None:
    import hashlib

    pub = ec.generate_private_key(ec.SECP256R1()).public_key()
    der = pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert public_key_id(pub) == hashlib.sha256(der).hexdigest()


def test_verify_refuses_garbage_and_truncated_signatures(tmp_path: Path) -> None:
    signer = load_signer(
        str(create_key("s", "signing", directory=tmp_path, algorithm="ecdsa-p256").private_ref)
    )
    sig = signer.sign(b"data")
    for bad in (b"", b"\x30\x02", sig[:-1], b"\x00" * 64):
        with pytest.raises(BadSignatureError):
            verify_signature(signer.public_key(), bad, b"data")


def test_file_recipient_key_exchange_matches_sender(tmp_path: Path) -> None:
    created = create_key("fleet", "recipient", directory=tmp_path)
    assert created.algorithm == "ecdsa-p256"
    key = load_recipient_key(created.private_ref)
    assert isinstance(key, RecipientKey)
    eph = ec.generate_private_key(ec.SECP256R1())
    assert key.exchange(eph.public_key()) == eph.exchange(ec.ECDH(), key.public_key())
    assert key.software_private_key() is not None
    assert key.key_id == created.key_id


def test_recipient_key_must_be_p256(tmp_path: Path) -> None:
    with pytest.raises(KeyError_, match="P-256"):
        create_key("fleet", "recipient", directory=tmp_path, algorithm="ed25519")
    signing = create_key("ed", "signing", directory=tmp_path, algorithm="ed25519")
    with pytest.raises(KeyError_, match="P-256"):
        load_recipient_key(signing.private_ref)


def test_create_refuses_to_overwrite_and_bad_names(tmp_path: Path) -> None:
    first = create_key("k", "signing", directory=tmp_path)
    before = Path(first.private_ref).read_bytes()
    with pytest.raises(KeyError_, match="already exists"):
        create_key("k", "signing", directory=tmp_path)
    assert Path(first.private_ref).read_bytes() == before
    for bad in ("../evil", "a/b", "", ".hidden", "x" * 65):
        with pytest.raises(KeyError_, match="bad key name"):
            create_key(bad, "signing", directory=tmp_path)


def test_public_pem_cannot_sign(tmp_path: Path) -> None:
    created = create_key("k", "signing", directory=tmp_path)
    with pytest.raises(KeyError_, match="no private key"):
        load_signer(str(created.public_path))


def test_loaders_give_typed_errors_for_bad_references(tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_bytes(b"-----BEGIN PUBLIC KEY-----\nnot base64!\n")
    (tmp_path / "notpem").write_bytes(b"\x00\x01binary")
    (tmp_path / "huge.pem").write_bytes(b"-" * (70 * 1024))
    rsa_pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=1024)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    p384 = public_key_pem(ec.generate_private_key(ec.SECP384R1()).public_key())
    cases = [
        (str(tmp_path / "missing.pem"), "does not exist"),
        (str(tmp_path), "directory"),
        (str(tmp_path / "junk.pem"), "not a usable PEM"),
        (str(tmp_path / "notpem"), "not a PEM"),
        (str(tmp_path / "huge.pem"), "larger than"),
        (rsa_pem, "Ed25519 and P-256"),
        (p384, "P-256"),
        ("", "empty key reference"),
    ]
    for ref, message in cases:
        with pytest.raises(KeyError_, match=message):
            load_public_key(ref)


def test_encrypted_private_key_needs_its_passphrase(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"hunter2"),
    )
    path = tmp_path / "enc.key.pem"
    path.write_bytes(pem)
    with pytest.raises(KeyError_, match="encrypted"):
        load_signer(str(path))
    with pytest.raises(KeyError_):
        load_signer(str(path), pin="wrong")
    assert load_signer(str(path), pin="hunter2").key_id == public_key_id(key.public_key())


def test_load_public_key_accepts_pem_bytes_and_private_pem(tmp_path: Path) -> None:
    created = create_key("k", "recipient", directory=tmp_path)
    from_priv = load_public_key(Path(created.private_ref).read_bytes())
    from_pub = load_public_key(created.public_path.read_bytes())
    assert public_key_id(from_priv) == public_key_id(from_pub) == created.key_id


# --- pkcs11: URIs ---------------------------------------------------------------------------


def test_parse_rfc7512_uri_with_percent_encoded_id() -> None:
    uri = parse_pkcs11_uri(
        "pkcs11:token=My%20Token;object=release;id=%01%ff%20;type=private"
        "?module-path=/opt/lib/p11.so&pin-source=env:MYPIN"
    )
    assert uri.token == "My Token"
    assert uri.object == "release"
    assert uri.id == b"\x01\xff "
    assert uri.type == "private"
    assert uri.module() == "/opt/lib/p11.so"
    assert resolve_pin(uri, environ={"MYPIN": "1234"}) == "1234"
    again = parse_pkcs11_uri(str(uri))
    assert again == uri


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("pkcs11:token=a;token=b", "given twice"),
        ("pkcs11:bogus=1", "unknown path attribute"),
        ("pkcs11:token=a?bogus=1", "unknown query attribute"),
        ("pkcs11:token", "no '='"),
        ("pkcs11:token=a;id=%zz", "percent-encoding"),
        ("pkcs11:token=a;id=", "empty id"),
        ("pkcs11:token=a;type=secret", "type="),
        ("pkcs11:token=%ff", "UTF-8"),
        ("pkcs11:token=a?pin-value=1&pin-source=/x", "either pin-source or pin-value"),
        ("pkcs11:token=a?module-path=relative.so", "absolute"),
        ("pkcs11:slot-id=0", "not supported"),
        ("pkcs11:token=a\nb", "forbidden"),
        ("pkcs11:" + "a" * 5000, "longer than"),
        ("file:/x", "not a pkcs11: URI"),
    ],
)
def test_bad_pkcs11_uris_give_typed_errors(uri: str, message: str) -> None:
    with pytest.raises(Pkcs11UriError, match=message):
        parse_pkcs11_uri(uri)


def test_error_messages_never_echo_the_pin() -> None:
    with pytest.raises(Pkcs11UriError) as info:
        parse_pkcs11_uri("pkcs11:token=a;nope=1?pin-value=s3cret")
    assert "s3cret" not in str(info.value)


def test_pin_resolution_order(tmp_path: Path) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text("from-file\n")
    env = {"EDGEPKG_PKCS11_PIN": "from-env"}
    with_file = parse_pkcs11_uri(f"pkcs11:token=a?pin-source={pin_file}")
    assert resolve_pin(with_file, environ=env) == "from-file"
    assert resolve_pin(with_file, "explicit", environ=env) == "explicit"
    file_uri = parse_pkcs11_uri(f"pkcs11:token=a?pin-source=file:{pin_file}")
    assert resolve_pin(file_uri, environ=env) == "from-file"
    assert resolve_pin(parse_pkcs11_uri("pkcs11:token=a"), environ=env) == "from-env"
    assert resolve_pin(parse_pkcs11_uri("pkcs11:token=a"), environ={}) is None
    with pytest.raises(KeyError_, match="cannot read the PIN file"):
        resolve_pin(parse_pkcs11_uri(f"pkcs11:token=a?pin-source={tmp_path}/nope"), environ={})
    with pytest.raises(KeyError_, match="unset"):
        resolve_pin(parse_pkcs11_uri("pkcs11:token=a?pin-source=env:NOPE"), environ={})


def test_missing_pkcs11_module_is_a_clear_error() -> None:
    with pytest.raises(KeyError_, match="does not exist"):
        load_signer("pkcs11:token=a;object=b?module-path=/nonexistent/p11.so&pin-value=1")


# --- CLI --------------------------------------------------------------------------------------


def test_cli_create_and_show_file_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["keys", "create", "rel", "--kind", "signing", "--dir", str(tmp_path), "--json"]) == 0
    )
    out, err = capsys.readouterr()
    created = json.loads(out)
    assert "development" in err  # file keys warn
    assert created["algorithm"] == "ed25519"
    assert main(["keys", "show", created["public_key_path"], "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["key_id"] == created["key_id"]
    assert shown["has_private"] is False
    assert main(["keys", "show", created["private_key_ref"]]) == 0
    out = capsys.readouterr().out
    assert created["key_id"] in out and "BEGIN PUBLIC KEY" in out
    assert "PRIVATE" not in out


def test_cli_errors_are_one_line_and_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "show", str(tmp_path / "missing.pem")]) == 1
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err
    assert (
        main(
            [
                "keys",
                "create",
                "x",
                "--kind",
                "recipient",
                "--algorithm",
                "ed25519",
                "--dir",
                str(tmp_path),
            ]
        )
        == 1
    )
    with pytest.raises(SystemExit) as exc:
        main(["keys", "create", "x", "--kind", "nope"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["keys", "create", "--help"])
    assert exc.value.code == 0
    assert "--pkcs11" in capsys.readouterr().out


def test_default_directory_is_keys_dev(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    created = create_key("dev", "signing")
    assert Path(created.private_ref).resolve() == (tmp_path / "keys/dev/dev.key.pem").resolve()
    assert os.path.exists(tmp_path / "keys/dev/dev.pub.pem")
