"""The one seam between the repository and key material (all of it through ``edgepkg.keys``).

TUF signs through ``securesystemslib.signer.Signer`` (``edgepkg.keys.tuf.TufSigner`` over an
edgepkg signer); bundles sign through ``edgepkg.keys.Signer``. Key references (a PEM path or a
``pkcs11:`` URI) are resolved here and nowhere else in the repository code, so a repository works
the same with file keys and HSM-held keys. TUF key ids follow the project convention: hex SHA-256
of the DER SubjectPublicKeyInfo. PINs: the URI's own ``pin-source``/``pin-value`` or
``$EDGEPKG_PKCS11_PIN``; never stored in the repository configuration.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from securesystemslib.signer import Key, Signer as SslibSigner

from edgepkg import keys
from edgepkg.errors import UsageError
from edgepkg.keys import tuf as keys_tuf
from edgepkg.keys._types import PublicKey, RecipientKey, Signer


def _pin(env: Mapping[str, str] | None) -> str | None:
    # None: edgepkg.keys resolves the PIN itself (URI pin-source / pin-value, $EDGEPKG_PKCS11_PIN)
    return env.get(keys.PIN_ENV) or None if env is not None else None


def public_key_from_ref(ref: str, env: Mapping[str, str] | None = None) -> PublicKey:
    """The public key of a reference: a public/private PEM file or a ``pkcs11:`` URI."""
    return keys.load_public_key(ref, pin=_pin(env))


def key_id(public_key: PublicKey) -> str:
    return keys.public_key_id(public_key)


def tuf_key(public_key: PublicKey) -> Key:
    """The TUF (securesystemslib) form of a public key, with the project key id."""
    return keys_tuf.sslib_public_key(public_key)


@dataclass(frozen=True)
class LoadedSigner:
    ref: str
    keyid: str
    signer: SslibSigner


def load_tuf_signer(ref: str, env: Mapping[str, str] | None = None) -> LoadedSigner:
    """A securesystemslib signer for TUF metadata from a key reference (file or token)."""
    signer = keys_tuf.TufSigner(keys.load_signer(ref, pin=_pin(env)))
    return LoadedSigner(ref, signer.public_key.keyid, signer)


def load_bundle_signer(ref: str, env: Mapping[str, str] | None = None) -> Signer:
    """An edgepkg signer for delta bundles (a release key)."""
    return keys.load_signer(ref, pin=_pin(env))


def load_recipient(ref: str, env: Mapping[str, str] | None = None) -> RecipientKey:
    """The release-archive recipient key (private half, file or token)."""
    return keys.load_recipient_key(ref, pin=_pin(env))


def public_pem(public_key: PublicKey) -> str:
    return keys.public_key_pem(public_key).decode()


def public_from_pem(pem: str) -> PublicKey:
    return keys.load_public_key(pem.encode())


def check_storable_ref(ref: str) -> str:
    """Refuse a reference that would put a secret into the repository configuration."""
    if keys.is_pkcs11_uri(ref) and keys.parse_pkcs11_uri(ref).pin_value is not None:
        raise UsageError(
            "this pkcs11: URI carries pin-value; the repository config stores key references, "
            "never PINs: use pin-source=env:VAR / file:PATH or $EDGEPKG_PKCS11_PIN instead"
        )
    return ref
