"""Key references -> keys: a PEM file path, PEM bytes, or an RFC 7512 ``pkcs11:`` URI."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from edgepkg._atomic import atomic_write_bytes
from edgepkg.crypto import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
    EllipticCurvePrivateKey,
    EllipticCurvePublicKey,
    public_key_id,
)
from edgepkg.errors import KeyError_
from edgepkg.keys import _pkcs11, _software
from edgepkg.keys._software import public_key_pem
from edgepkg.keys._types import PublicKey, RecipientKey, Signer
from edgepkg.keys._uri import Pkcs11Uri, is_pkcs11_uri, parse_pkcs11_uri, resolve_pin

KeyRef = str | bytes | os.PathLike[str]
KeyKind = Literal["signing", "recipient"]
DEFAULT_KEY_DIR = "keys/dev"


def _describe(ref: KeyRef) -> str:
    if isinstance(ref, bytes):
        return "PEM data"
    return os.fspath(ref)


def _pem_of(ref: KeyRef) -> tuple[bytes, str]:
    if isinstance(ref, bytes):
        return ref, "the PEM data given"
    path = os.fspath(ref)
    if not path:
        raise KeyError_("empty key reference: give a PEM file path or a pkcs11: URI")
    return _software.read_pem_file(path), path


def load_public_key(ref: KeyRef | PublicKey, *, pin: str | None = None) -> PublicKey:
    """A public key from a PEM path / PEM bytes (public or private PEM) or a ``pkcs11:`` URI."""
    if isinstance(ref, Ed25519PublicKey | EllipticCurvePublicKey):
        return _software.check_public_key(ref)
    if isinstance(ref, str) and is_pkcs11_uri(ref):
        return _pkcs11.load_token_public_key(parse_pkcs11_uri(ref), pin=pin)
    data, where = _pem_of(ref)
    return _software.load_public_pem(data, where)


def _load_private(ref: KeyRef, pin: str | None) -> tuple[object, str]:
    data, where = _pem_of(ref)
    key = _software.load_private_pem(data, where, passphrase=pin)
    if key is None:
        raise KeyError_(
            f"{where} holds no private key (a public key cannot sign or decrypt): give the "
            "private PEM or a pkcs11: URI"
        )
    _software.warn_file_key(where)
    return key, where


def load_signer(ref: KeyRef | Signer, *, pin: str | None = None) -> Signer:
    """A :class:`Signer` from a private PEM (Ed25519 / P-256) or a ``pkcs11:`` URI (P-256)."""
    if isinstance(ref, Signer) and not isinstance(ref, str | bytes | os.PathLike):
        return ref
    if isinstance(ref, str) and is_pkcs11_uri(ref):
        return _pkcs11.Pkcs11Signer(parse_pkcs11_uri(ref), pin=pin)
    key, where = _load_private(ref, pin)
    if not isinstance(key, Ed25519PrivateKey | EllipticCurvePrivateKey):
        raise KeyError_(f"{where} is a {type(key).__name__}: signing keys are Ed25519 or P-256")
    return _software.FileSigner(key, where)


def load_recipient_key(ref: KeyRef | RecipientKey, *, pin: str | None = None) -> RecipientKey:
    """A :class:`RecipientKey` (P-256) from a private PEM or a ``pkcs11:`` URI."""
    if isinstance(ref, RecipientKey) and not isinstance(ref, str | bytes | os.PathLike):
        return ref
    if isinstance(ref, str) and is_pkcs11_uri(ref):
        return _pkcs11.Pkcs11RecipientKey(parse_pkcs11_uri(ref), pin=pin)
    key, where = _load_private(ref, pin)
    if not isinstance(key, EllipticCurvePrivateKey):
        raise KeyError_(
            f"{where} is a {type(key).__name__}: recipient keys must be P-256 (ECDH for HPKE)"
        )
    return _software.FileRecipientKey(key, where)


def describe_key(ref: KeyRef) -> dict[str, Any]:
    """For ``keys show``: the public key, where the key lives, whether its private half is there
    (``None`` when that cannot be told without a PIN)."""
    if isinstance(ref, str) and is_pkcs11_uri(ref):
        uri = parse_pkcs11_uri(ref)
        pub = _pkcs11.load_token_public_key(uri)
        has_private = _pkcs11.has_private_key(uri, pub) if resolve_pin(uri) is not None else None
        return {"_public_key": pub, "where": str(uri), "has_private": has_private}
    data, where = _pem_of(ref)
    return {
        "_public_key": _software.load_public_pem(data, where),
        "where": where,
        "has_private": b"PRIVATE KEY-----" in data,
    }


@dataclass(frozen=True)
class CreatedKey:
    name: str
    kind: KeyKind
    algorithm: str  # "ed25519" | "ecdsa-p256"
    key_id: str
    public_key: PublicKey
    public_path: Path
    private_ref: str  # a file path, or a pkcs11: URI (never with the PIN in it)
    location: Literal["file", "pkcs11"]

    def to_json(self) -> dict[str, str]:
        return {
            "name": self.name,
            "kind": self.kind,
            "algorithm": self.algorithm,
            "key_id": self.key_id,
            "public_key_path": str(self.public_path),
            "private_key_ref": self.private_ref,
            "location": self.location,
            "public_key_pem": public_key_pem(self.public_key).decode("ascii"),
        }


_ALGORITHMS = {
    "ed25519": "ed25519",
    "ecdsa-p256": "ecdsa-p256",
    "p256": "ecdsa-p256",
    "ecdsa-p256-sha256": "ecdsa-p256",
}


def create_key(
    name: str,
    kind: KeyKind,
    *,
    directory: str | os.PathLike[str] = DEFAULT_KEY_DIR,
    algorithm: str | None = None,
    pkcs11_uri: str | None = None,
    pin: str | None = None,
) -> CreatedKey:
    """Create a key pair; write ``NAME.pub.pem`` (and, for a file key, ``NAME.key.pem``, 0600).

    With ``pkcs11_uri`` the pair is generated inside the token (label = NAME unless the URI has
    ``object=``), private half sensitive and non-extractable; only the public PEM is written.
    Algorithm defaults: signing -> Ed25519 (file) / ECDSA P-256 (token); recipient -> P-256.
    """
    _software.check_key_name(name)
    if kind not in ("signing", "recipient"):
        raise KeyError_(f"key kind must be 'signing' or 'recipient', not {kind!r}")
    if algorithm is None:
        alg = "ed25519" if kind == "signing" and pkcs11_uri is None else "ecdsa-p256"
    else:
        if algorithm not in _ALGORITHMS:
            raise KeyError_(f"unknown algorithm {algorithm!r}: use ed25519 or ecdsa-p256")
        alg = _ALGORITHMS[algorithm]
    if kind == "recipient" and alg != "ecdsa-p256":
        raise KeyError_(
            "recipient keys must be P-256 (so a TPM/HSM can hold them): drop --algorithm"
        )
    if pkcs11_uri is not None and alg != "ecdsa-p256":
        raise KeyError_("keys in a PKCS#11 token are P-256: use --algorithm ecdsa-p256")

    out = Path(directory)
    pub_path = out / f"{name}.pub.pem"
    priv_path = out / f"{name}.key.pem"
    for p in (pub_path, priv_path) if pkcs11_uri is None else (pub_path,):
        if p.exists():
            raise KeyError_(f"{p} already exists: pick another name or remove it first")
    out.mkdir(parents=True, exist_ok=True)

    if pkcs11_uri is not None:
        uri = parse_pkcs11_uri(pkcs11_uri)
        label = uri.object or name
        pub, exact = _pkcs11.generate_keypair(
            uri, label, pin=pin, sign=kind == "signing", derive=kind == "recipient"
        )
        atomic_write_bytes(pub_path, public_key_pem(pub), mode=0o644)
        return CreatedKey(name, kind, alg, public_key_id(pub), pub, pub_path, str(exact), "pkcs11")

    private = _software.generate_private_key(alg)
    atomic_write_bytes(priv_path, _software.private_pem(private), mode=0o600)
    public = private.public_key()
    atomic_write_bytes(pub_path, public_key_pem(public), mode=0o644)
    _software.warn_file_key(str(priv_path))
    return CreatedKey(
        name, kind, alg, public_key_id(public), public, pub_path, str(priv_path), "file"
    )


# --- token data objects and device keys -----------------------------------------------------


def _token_uri(token_uri: str | Pkcs11Uri) -> Pkcs11Uri:
    return token_uri if isinstance(token_uri, Pkcs11Uri) else parse_pkcs11_uri(token_uri)


def store_data_object(
    token_uri: str | Pkcs11Uri, label: str, value: bytes, *, pin: str | None = None
) -> None:
    """Store ``value`` in the token as a private CKO_DATA object ``label`` (replacing it)."""
    _pkcs11.store_data_object(_token_uri(token_uri), label, value, pin=pin)


def read_data_object(token_uri: str | Pkcs11Uri, label: str, *, pin: str | None = None) -> bytes:
    """The value of the private CKO_DATA object ``label``; :class:`DataObjectMissingError` (an
    :class:`HSMError`) when absent."""
    return _pkcs11.read_data_object(_token_uri(token_uri), label, pin=pin)


def create_data_object_once(
    token_uri: str | Pkcs11Uri, label: str, value: bytes, *, pin: str | None = None
) -> bool:
    """Create the write-once private CKO_DATA object ``label`` (not modifiable, not destroyable,
    not copyable); True when created, False when exactly one object already holds ``value``.

    :class:`DataObjectExistsError` when it holds another value, :class:`DataObjectConflictError`
    when several objects carry the label. For values the user PIN must not be able to change
    (device trust anchors); read them back with :func:`read_unique_data_object`.
    """
    return _pkcs11.create_data_object_once(_token_uri(token_uri), label, value, pin=pin)


def read_unique_data_object(
    token_uri: str | Pkcs11Uri, label: str, *, pin: str | None = None
) -> bytes:
    """The value of the write-once data object ``label``; :class:`DataObjectMissingError` when
    absent, :class:`DataObjectConflictError` when more than one object carries the label."""
    return _pkcs11.read_unique_data_object(_token_uri(token_uri), label, pin=pin)


def delete_data_object(token_uri: str | Pkcs11Uri, label: str, *, pin: str | None = None) -> int:
    """Remove every CKO_DATA object ``label``; returns how many were removed."""
    return _pkcs11.delete_data_object(_token_uri(token_uri), label, pin=pin)


def generate_token_keypair(
    token_uri: str | Pkcs11Uri,
    label: str,
    *,
    pin: str | None = None,
    key_type: str = "ec-p256",
    usage: Literal["sign", "derive", "both"] = "both",
) -> EllipticCurvePublicKey:
    """Generate a non-extractable P-256 key pair labelled ``label`` inside the token.

    ``usage="both"`` (default) suits a device key: it signs requests (ECDSA) and is the HPKE
    recipient (ECDH). Load it with ``load_signer`` / ``load_recipient_key`` using
    ``key_uri(token_uri, label)``.
    """
    if key_type not in ("ec-p256", "ecdsa-p256", "p256"):
        raise KeyError_(f"unsupported token key type {key_type!r}: only ec-p256")
    pub, _exact = _pkcs11.generate_keypair(
        _token_uri(token_uri),
        label,
        pin=pin,
        sign=usage in ("sign", "both"),
        derive=usage in ("derive", "both"),
    )
    return pub


def key_uri(token_uri: str | Pkcs11Uri, label: str, *, include_pin: bool = True) -> str:
    """``token_uri`` with ``object=label;type=private`` (keeps module-path and pin-source)."""
    uri = _token_uri(token_uri).with_object(label, type_="private")
    return uri.to_string(include_pin=include_pin)
