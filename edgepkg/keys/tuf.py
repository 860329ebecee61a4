"""securesystemslib adapter: sign TUF metadata with any edgepkg :class:`Signer` (file or token).

    signer = TufSigner(load_signer("pkcs11:token=tuf;object=targets;type=private"))
    root.add_key(signer.public_key, "targets")
    metadata.sign(signer)

Key ids: by default the SSlibKey's keyid is edgepkg's key id (hex SHA-256 of the DER SPKI), so the
id `edgepkg keys show` prints is the id in root.json. Schemes: ``ed25519`` (raw 64-byte
signature) and ``ecdsa-sha2-nistp256`` (DER ECDSA over SHA-256, which is exactly what
securesystemslib verifies and what our signers produce).

``TufSigner.from_priv_key_uri`` accepts ``edgepkg:<ref>`` (ref = PEM path or pkcs11: URI) and
bare ``pkcs11:`` URIs; :func:`register_uri_scheme` makes ``Signer.from_priv_key_uri`` route
``edgepkg:`` URIs here.
"""

from __future__ import annotations

from securesystemslib.signer import (
    SIGNER_FOR_URI_SCHEME,
    Key,
    SecretsHandler,
    Signature,
    Signer as _TufSignerBase,
    SSlibKey,
)

from edgepkg.crypto import public_key_id
from edgepkg.errors import KeyError_
from edgepkg.keys._api import load_signer
from edgepkg.keys._types import PublicKey, Signer
from edgepkg.keys._uri import is_pkcs11_uri, parse_pkcs11_uri, resolve_pin

URI_SCHEME = "edgepkg"


def sslib_public_key(pub: PublicKey, *, keyid: str | None = None) -> SSlibKey:
    """The securesystemslib key for ``pub`` (scheme ed25519 or ecdsa-sha2-nistp256)."""
    try:
        return SSlibKey.from_crypto(pub, keyid=keyid or public_key_id(pub))
    except ValueError as exc:
        raise KeyError_(f"cannot use this key for TUF: {exc}") from exc


class TufSigner(_TufSignerBase):
    """A securesystemslib ``Signer`` that signs through an edgepkg :class:`Signer`."""

    def __init__(self, signer: Signer, public_key: SSlibKey | None = None) -> None:
        self._signer = signer
        self._public_key = public_key or sslib_public_key(signer.public_key())
        expected = sslib_public_key(signer.public_key(), keyid=self._public_key.keyid)
        if expected.keyval != self._public_key.keyval:
            raise KeyError_(
                f"the private key {signer.key_id[:16]}… does not match TUF key "
                f"{self._public_key.keyid[:16]}…"
            )

    @property
    def public_key(self) -> Key:
        return self._public_key

    @property
    def edgepkg_signer(self) -> Signer:
        return self._signer

    def sign(self, payload: bytes) -> Signature:
        return Signature(self._public_key.keyid, self._signer.sign(payload).hex())

    @classmethod
    def from_priv_key_uri(
        cls,
        priv_key_uri: str,
        public_key: Key,
        secrets_handler: SecretsHandler | None = None,
    ) -> TufSigner:
        ref = priv_key_uri
        if ref.startswith(URI_SCHEME + ":"):
            ref = ref[len(URI_SCHEME) + 1 :]
        pin = None
        needs_pin = is_pkcs11_uri(ref) and resolve_pin(parse_pkcs11_uri(ref)) is None
        if needs_pin and secrets_handler is not None:
            pin = secrets_handler("PIN")
        if not isinstance(public_key, SSlibKey):
            raise KeyError_(f"unsupported TUF key type {type(public_key).__name__}")
        return cls(load_signer(ref, pin=pin), public_key)


def signer_for(ref: str, *, pin: str | None = None) -> TufSigner:
    """Shorthand: a TUF signer for a key reference (PEM path or pkcs11: URI)."""
    return TufSigner(load_signer(ref, pin=pin))


def register_uri_scheme() -> None:
    """Let ``securesystemslib.signer.Signer.from_priv_key_uri("edgepkg:...")`` use this."""
    SIGNER_FOR_URI_SCHEME[URI_SCHEME] = TufSigner
