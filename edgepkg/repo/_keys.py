"""The one seam between the repository and key material.

TUF signs through ``securesystemslib.signer.Signer``; the rest of edgepkg signs through
``edgepkg.keys.Signer``. Key references (a PEM path or a ``pkcs11:`` URI) are resolved here and
nowhere else, so a repository works the same with file keys and HSM-held keys.

TUF key ids follow the project-wide convention: hex SHA-256 of the DER SubjectPublicKeyInfo.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from securesystemslib.signer import Key, Signature, SSlibKey
from securesystemslib.signer import Signer as SslibSigner

from edgepkg.errors import KeyError_

PIN_ENV = "EDGEPKG_PKCS11_PIN"


def _pin(env: Mapping[str, str] | None) -> str | None:
    return (env if env is not None else os.environ).get(PIN_ENV) or None


def public_key_from_ref(ref: str) -> object:
    """The public key of a reference: a public/private PEM file or a ``pkcs11:`` URI."""
    return _backend().public_key(ref)


def key_id(public_key: object) -> str:
    return _backend().key_id(public_key)


def tuf_key(public_key: object) -> Key:
    """The TUF (securesystemslib) form of a public key, with the project key id."""
    try:
        return SSlibKey.from_crypto(public_key, keyid=key_id(public_key))  # type: ignore[arg-type]
    except ValueError as exc:
        raise KeyError_(f"unsupported key type for TUF metadata: {exc}") from exc


class _Adapter(SslibSigner):
    """A securesystemslib signer over an ``edgepkg.keys`` signer (file or PKCS#11)."""

    def __init__(self, signer: object) -> None:
        self._signer = signer
        self._public = tuf_key(signer.public_key())  # type: ignore[attr-defined]

    @classmethod
    def from_priv_key_uri(cls, priv_key_uri, public_key, secrets_handler=None):  # type: ignore[no-untyped-def,override]
        raise NotImplementedError("load signers with edgepkg.repo._keys.load_tuf_signer")

    @property
    def public_key(self) -> Key:  # type: ignore[override]
        return self._public

    def sign(self, payload: bytes) -> Signature:
        sig = self._signer.sign(payload)  # type: ignore[attr-defined]
        return Signature(self._public.keyid, sig.hex())


@dataclass(frozen=True)
class LoadedSigner:
    ref: str
    keyid: str
    signer: SslibSigner


def load_tuf_signer(ref: str, env: Mapping[str, str] | None = None) -> LoadedSigner:
    """Load a signing key reference for TUF metadata. PINs come from ``$EDGEPKG_PKCS11_PIN``
    (or the URI's own ``pin-source``), never from the repository configuration."""
    adapter = _Adapter(_backend().signer(ref, _pin(env)))
    return LoadedSigner(ref, adapter.public_key.keyid, adapter)


def load_bundle_signer(ref: str, env: Mapping[str, str] | None = None) -> object:
    """An ``edgepkg.keys.Signer`` for signing delta bundles (a release key)."""
    return _backend().signer(ref, _pin(env))


def load_recipient(ref: str, env: Mapping[str, str] | None = None) -> object:
    """The release-archive recipient key (private half, file or token)."""
    return _backend().recipient(ref, _pin(env))


def public_pem(public_key: object) -> str:
    return _backend().pem(public_key)


def public_from_pem(pem: str) -> object:
    return _backend().from_pem(pem)


def _backend():  # type: ignore[no-untyped-def]
    from edgepkg.repo import _keys_backend

    return _keys_backend
