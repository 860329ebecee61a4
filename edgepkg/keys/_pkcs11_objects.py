"""Finding key objects in a PKCS#11 token and opening a private key for use: the lookups
the signer, the recipient key and key generation share."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from edgepkg.errors import HSMError, KeyError_
from edgepkg.keys._pkcs11_session import P256_PARAMS, T, _Module, module_for
from edgepkg.keys._software import (
    ec_point_to_public_key,
)
from edgepkg.keys._uri import Pkcs11Uri, Pkcs11UriError, resolve_pin

try:  # python-pkcs11 is the [hsm] extra
    from pkcs11 import Attribute, KeyType, ObjectClass, exceptions as p11e
except ImportError:  # pragma: no cover - exercised only without the extra
    pass

# --- objects -----------------------------------------------------------------------------------

_CLASS_NAMES = {
    "private": "private key",
    "public": "public key",
    "secret-key": "secret key",
    "data": "data object",
    "cert": "certificate",
}


def _class_name(cls: Any) -> str:
    return {
        ObjectClass.PRIVATE_KEY: "private key",
        ObjectClass.PUBLIC_KEY: "public key",
        ObjectClass.SECRET_KEY: "secret key",
        ObjectClass.DATA: "data object",
        ObjectClass.CERTIFICATE: "certificate",
    }.get(cls, str(cls))


def _selector(uri: Pkcs11Uri) -> dict[Any, Any]:
    attrs: dict[Any, Any] = {}
    if uri.object is not None:
        attrs[Attribute.LABEL] = uri.object
    if uri.id is not None:
        attrs[Attribute.ID] = uri.id
    if not attrs:
        raise Pkcs11UriError(
            f"the pkcs11: URI names no object: add object=LABEL or id=%xx... ({uri})"
        )
    return attrs


def _find_one(session: Any, uri: Pkcs11Uri, cls: Any, *, limit: int = 8) -> Any:
    attrs = _selector(uri)
    found = _take(session.get_objects({Attribute.CLASS: cls, **attrs}), limit)
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise HSMError(
            f"{len(found)} {_class_name(cls)}s match {uri.describe_object()}: add id= to the URI"
        )
    others = _take(session.get_objects(attrs), limit)
    if others:
        kinds = sorted({_class_name(o[Attribute.CLASS]) for o in others})
        raise HSMError(
            f"the {uri.describe_object()} is a {' / '.join(kinds)}, not a {_class_name(cls)}"
        )
    raise HSMError(
        f"no {_class_name(cls)} with {uri.describe_object()[12:]} in token {uri.token!r} "
        "(or it is private and no PIN was given)"
    )


def _take(it: Iterator[Any], limit: int) -> list[Any]:
    out = []
    for obj in it:
        out.append(obj)
        if len(out) >= limit:
            break
    return out


def _check_type(uri: Pkcs11Uri, wanted: str) -> None:
    if uri.type is not None and uri.type != wanted:
        raise Pkcs11UriError(
            f"the URI says type={uri.type} but a {_CLASS_NAMES[wanted]} is needed here"
        )


def _check_ec_p256(obj: Any, what: str) -> None:
    if obj[Attribute.KEY_TYPE] != KeyType.EC:
        raise HSMError(
            f"{what} is a {obj[Attribute.KEY_TYPE].name} key; only EC P-256 is supported"
        )
    with contextlib.suppress(p11e.AttributeTypeInvalid):
        params = bytes(obj[Attribute.EC_PARAMS])
        if params != P256_PARAMS:
            raise HSMError(f"{what} is not on curve P-256 (EC_PARAMS {params.hex()})")


def _public_of(session: Any, uri: Pkcs11Uri, private: Any | None) -> ec.EllipticCurvePublicKey:
    """The public half: the public object with the private key's CKA_ID (else its label)."""
    if private is not None:
        key_id = bytes(private[Attribute.ID])
        label = private[Attribute.LABEL]
        candidates = _take(
            session.get_objects(
                {
                    Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                    **({Attribute.ID: key_id} if key_id else {Attribute.LABEL: label}),
                }
            ),
            4,
        )
        if len(candidates) != 1:
            raise HSMError(
                f"the token holds {len(candidates)} public keys for private key {label!r}: "
                "generate key pairs with edgepkg so both halves share a CKA_ID"
            )
        pub = candidates[0]
    else:
        pub = _find_one(session, uri, ObjectClass.PUBLIC_KEY)
    _check_ec_p256(pub, f"public key {uri.describe_object()}")
    return ec_point_to_public_key(bytes(pub[Attribute.EC_POINT]))


@dataclass(frozen=True)
class _KeyHandle:
    module: _Module
    uri: Pkcs11Uri  # with object label and id filled in from the found key
    pin: str

    def with_private(self, fn: Callable[[Any, Any], T]) -> T:
        def op(session: Any) -> T:
            return fn(session, _find_one(session, self.uri, ObjectClass.PRIVATE_KEY))

        return self.module.run(self.uri, self.pin, op)


def _open_private(
    uri: Pkcs11Uri, pin: str | None, purpose: str
) -> tuple[_KeyHandle, ec.EllipticCurvePublicKey]:
    _check_type(uri, "private")
    resolved = resolve_pin(uri, pin)
    if resolved is None:
        raise KeyError_(
            f"a PIN is needed to use the private key in {uri.describe_token()}: add "
            "?pin-source=FILE|env:VAR to the URI or set $EDGEPKG_PKCS11_PIN"
        )
    mod = module_for(uri)
    capability = {"sign": Attribute.SIGN, "derive": Attribute.DERIVE}.get(purpose)

    def op(session: Any) -> tuple[Pkcs11Uri, ec.EllipticCurvePublicKey]:
        priv = _find_one(session, uri, ObjectClass.PRIVATE_KEY)
        _check_ec_p256(priv, f"private key {uri.describe_object()}")
        if capability is not None and not priv[capability]:
            what = "signing (CKA_SIGN)" if purpose == "sign" else "key agreement (CKA_DERIVE)"
            raise HSMError(f"private key {uri.describe_object()} is not allowed for {what}")
        pub = _public_of(session, uri, priv)
        exact = Pkcs11Uri(
            token=uri.token,
            serial=uri.serial,
            manufacturer=uri.manufacturer,
            model=uri.model,
            object=priv[Attribute.LABEL] or None,
            id=bytes(priv[Attribute.ID]) or None,
            type="private",
            module_path=uri.module_path,
            pin_source=uri.pin_source,
        )
        return exact, pub

    exact, pub = mod.run(uri, resolved, op)
    return _KeyHandle(mod, exact, resolved), pub

