"""PKCS#11 private keys in use: the signer (ECDSA P-256), the HPKE recipient key (ECDH),
reading public keys and generating non-extractable key pairs inside the token."""

from __future__ import annotations

import contextlib
import os
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from edgepkg.crypto import public_key_id
from edgepkg.errors import HSMError, KeyError_
from edgepkg.keys._pkcs11_objects import (
    _find_one,
    _open_private,
    _public_of,
    _take,
)
from edgepkg.keys._pkcs11_session import P256_PARAMS, module_for
from edgepkg.keys._software import (
    check_ecdh_peer,
    ec_point_to_public_key,
    raw_to_der_signature,
    sha256,
    uncompressed_point,
)
from edgepkg.keys._types import SigningAlgorithm
from edgepkg.keys._uri import Pkcs11Uri, Pkcs11UriError, resolve_pin

try:  # python-pkcs11 is the [hsm] extra
    from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass, exceptions as p11e
    from pkcs11.mechanisms import KDF
except ImportError:  # pragma: no cover - exercised only without the extra
    pass


class Pkcs11Signer:
    """ECDSA P-256 signer whose private key stays in a PKCS#11 token."""

    def __init__(self, uri: Pkcs11Uri, *, pin: str | None = None) -> None:
        self._handle, self._pub = _open_private(uri, pin, "sign")
        self._id = public_key_id(self._pub)
        self.location = str(self._handle.uri)

    @property
    def algorithm(self) -> SigningAlgorithm:
        return "ecdsa-p256-sha256"

    @property
    def key_id(self) -> str:
        return self._id

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._pub

    def sign(self, data: bytes) -> bytes:
        digest = sha256(data)
        raw = self._handle.with_private(
            lambda _s, priv: bytes(priv.sign(digest, mechanism=Mechanism.ECDSA))
        )
        der = raw_to_der_signature(raw)
        try:  # a faulty token must not hand out a bad signature
            self._pub.verify(der, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise HSMError(
                f"the token produced a signature that does not verify ({self.location})"
            ) from None
        return der

    def __repr__(self) -> str:
        return f"Pkcs11Signer({self._id[:16]}, {self.location})"


class Pkcs11RecipientKey:
    """P-256 recipient key in a token: ECDH runs inside it, the private key never leaves it."""

    def __init__(self, uri: Pkcs11Uri, *, pin: str | None = None) -> None:
        self._handle, self._pub = _open_private(uri, pin, "derive")
        self._id = public_key_id(self._pub)
        self.location = str(self._handle.uri)

    @property
    def key_id(self) -> str:
        return self._id

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._pub

    def exchange(self, peer: ec.EllipticCurvePublicKey) -> bytes:
        check_ecdh_peer(peer)
        point = uncompressed_point(peer)

        def op(_session: Any, priv: Any) -> bytes:
            template = {
                Attribute.TOKEN: False,
                Attribute.SENSITIVE: False,
                Attribute.EXTRACTABLE: True,
            }
            try:
                secret = priv.derive_key(
                    KeyType.GENERIC_SECRET,
                    256,
                    mechanism_param=(KDF.NULL, None, point),
                    template=template,
                )
            except (p11e.MechanismParamInvalid, p11e.DomainParamsInvalid, p11e.ArgumentsBad):
                # tokens older than PKCS#11 2.30 want the point DER-wrapped as an OCTET STRING
                secret = priv.derive_key(
                    KeyType.GENERIC_SECRET,
                    256,
                    mechanism_param=(KDF.NULL, None, b"\x04\x41" + point),
                    template=template,
                )
            try:
                return bytes(secret[Attribute.VALUE])
            finally:
                with contextlib.suppress(p11e.PKCS11Error):
                    secret.destroy()

        shared = self._handle.with_private(op)
        if len(shared) != 32:
            raise HSMError(f"the token returned a {len(shared)}-byte ECDH secret, expected 32")
        return shared

    def software_private_key(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"Pkcs11RecipientKey({self._id[:16]}, {self.location})"


# --- public keys, generation, data objects ---------------------------------------------------


def load_token_public_key(uri: Pkcs11Uri, *, pin: str | None = None) -> ec.EllipticCurvePublicKey:
    """The public key a URI names (type=public, or the public half of type=private)."""
    if uri.type not in (None, "public", "private"):
        raise Pkcs11UriError(f"type={uri.type} does not name a key")
    mod = module_for(uri)
    resolved = resolve_pin(uri, pin)

    def op(session: Any) -> ec.EllipticCurvePublicKey:
        try:  # key pairs made by edgepkg share label and id between the two halves
            return _public_of(session, uri, None)
        except HSMError:
            if uri.type == "public" or resolved is None:
                raise
        priv = _find_one(session, uri, ObjectClass.PRIVATE_KEY)
        return _public_of(session, uri, priv)

    return mod.run(uri, resolved, op)


def has_private_key(uri: Pkcs11Uri, pub: ec.EllipticCurvePublicKey) -> bool:
    """Whether the token holds the private half of ``pub`` under the URI's label/id."""
    try:
        signer_uri = Pkcs11Uri(**{**uri.__dict__, "type": "private"})
        _handle, found = _open_private(signer_uri, None, "any")
    except KeyError_:
        return False
    return public_key_id(found) == public_key_id(pub)


def generate_keypair(
    uri: Pkcs11Uri,
    label: str,
    *,
    pin: str | None = None,
    sign: bool,
    derive: bool,
) -> tuple[ec.EllipticCurvePublicKey, Pkcs11Uri]:
    """Generate a P-256 key pair inside the token: private half sensitive, never extractable."""
    resolved = resolve_pin(uri, pin)
    if resolved is None:
        raise KeyError_(
            f"a PIN is needed to create a key in {uri.describe_token()}: add "
            "?pin-source=FILE|env:VAR to the URI or set $EDGEPKG_PKCS11_PIN"
        )
    if not label or len(label) > 128:
        raise KeyError_("a token key needs a label of 1-128 characters")
    mod = module_for(uri)

    def op(session: Any) -> tuple[ec.EllipticCurvePublicKey, bytes]:
        if _take(session.get_objects({Attribute.LABEL: label}), 1):
            raise HSMError(
                f"token already holds an object labelled {label!r}: pick another name or delete it"
            )
        key_id = os.urandom(16)
        pub, _priv = session.generate_keypair(
            KeyType.EC,
            store=True,
            label=label,
            id=key_id,
            public_template={
                Attribute.EC_PARAMS: P256_PARAMS,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: False,
                Attribute.VERIFY: sign,
                Attribute.ENCRYPT: False,
                Attribute.WRAP: False,
                Attribute.DERIVE: False,
            },
            private_template={
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.SIGN: sign,
                Attribute.DERIVE: derive,
                Attribute.DECRYPT: False,
                Attribute.UNWRAP: False,
            },
        )
        return ec_point_to_public_key(bytes(pub[Attribute.EC_POINT])), key_id

    public, key_id = mod.run(uri, resolved, op)
    exact = Pkcs11Uri(
        token=uri.token,
        serial=uri.serial,
        object=label,
        id=key_id,
        type="private",
        module_path=uri.module_path,
        pin_source=uri.pin_source,
    )
    return public, exact


