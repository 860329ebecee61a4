"""PKCS#11 keys (python-pkcs11): signers, recipient keys, key generation and data objects.

Private keys are generated inside the token with CKA_SENSITIVE=true and CKA_EXTRACTABLE=false and
are only ever *used* there: ECDSA signing (CKM_ECDSA over a SHA-256 digest computed here) and
ECDH (CKM_ECDH1_DERIVE into a short-lived session secret whose value is the shared secret).

Library and session lifetime: one loaded library per module path per process, one cached,
logged-in read/write session per token, every operation under the module's lock (PKCS#11
sessions are not meant to be used by two threads at once, and closing any session logs the whole
application out). A token initialised after the library was loaded, a closed session or a fork
are handled by re-initialising the library once and retrying.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from edgepkg.errors import HSMError, KeyError_
from edgepkg.keys._software import (
    check_ecdh_peer,
    ec_point_to_public_key,
    public_key_id,
    raw_to_der_signature,
    sha256,
    uncompressed_point,
)
from edgepkg.keys._types import SigningAlgorithm
from edgepkg.keys._uri import Pkcs11Uri, Pkcs11UriError, resolve_pin

try:  # python-pkcs11 is the [hsm] extra
    import pkcs11
    from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
    from pkcs11 import exceptions as p11e
    from pkcs11.mechanisms import KDF
except ImportError:  # pragma: no cover - exercised only without the extra
    pkcs11 = None  # type: ignore[assignment]

T = TypeVar("T")

# DER of the OID prime256v1 / secp256r1 (ECParameters namedCurve)
P256_PARAMS = bytes.fromhex("06082a8648ce3d030107")
DATA_APPLICATION = "edgepkg"
MAX_DATA_OBJECT = 64 * 1024
_log = logging.getLogger("edgepkg.keys")


class DataObjectMissingError(HSMError):
    """The token holds no data object with the label asked for."""


class DataObjectExistsError(HSMError):
    """A write-once data object already exists with another value (it is never replaced)."""


class DataObjectConflictError(HSMError):
    """Several data objects carry a label that must be unique (tampering with the user PIN)."""


def _need_pkcs11() -> None:
    if pkcs11 is None:
        raise HSMError("PKCS#11 support needs python-pkcs11: pip install 'edgepkg[hsm]'")


# --- library and sessions --------------------------------------------------------------------


@dataclass
class _Cached:
    session: Any
    pin: str | None


class _Module:
    """One loaded PKCS#11 library; serialises every use of it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.RLock()
        self._lib: Any = None
        self._pid = os.getpid()
        self._sessions: dict[tuple[str, bytes], _Cached] = {}
        self.stale = False

    def lib(self) -> Any:
        if self._lib is None:
            _need_pkcs11()
            if not os.path.isfile(self.path):
                raise HSMError(
                    f"PKCS#11 module {self.path} does not exist: install it (e.g. Debian's "
                    "softhsm2) or point module-path= / $EDGEPKG_PKCS11_MODULE at the right library"
                )
            try:
                self._lib = _shared_lib(self.path)
            except Exception as exc:  # the Cython layer raises RuntimeError and others
                raise HSMError(f"cannot load PKCS#11 module {self.path}: {exc}") from exc
        if self.stale or self._pid != os.getpid():
            self.reinitialize()
        return self._lib

    def reinitialize(self) -> None:
        self._sessions.clear()  # handles die with the finalize
        self.stale = False
        self._pid = os.getpid()
        if self._lib is None:
            return
        with contextlib.suppress(Exception):
            self._lib.finalize()
        try:
            self._lib.initialize()
        except Exception as exc:
            raise HSMError(f"cannot re-initialise PKCS#11 module {self.path}: {exc}") from exc

    def _matching(self, uri: Pkcs11Uri) -> list[Any]:
        found = []
        for token in self.lib().get_tokens():
            if uri.token is not None and token.label != uri.token:
                continue
            serial = token.serial.decode("ascii", "replace").strip()
            if uri.serial is not None and serial != uri.serial:
                continue
            if uri.manufacturer is not None and token.manufacturer_id != uri.manufacturer:
                continue
            if uri.model is not None and token.model != uri.model:
                continue
            if not (token.flags & pkcs11.TokenFlag.TOKEN_INITIALIZED):
                continue
            found.append(token)
        return found

    def find_token(self, uri: Pkcs11Uri) -> Any:
        tokens = self._matching(uri)
        if not tokens:  # a token initialised after we loaded the library is not seen until then
            self.reinitialize()
            tokens = self._matching(uri)
        if not tokens:
            present = sorted(
                t.label
                for t in self.lib().get_tokens()
                if t.flags & pkcs11.TokenFlag.TOKEN_INITIALIZED
            )
            raise HSMError(
                f"no PKCS#11 {uri.describe_token()} in module {self.path}; "
                f"initialised tokens: {', '.join(map(repr, present)) or 'none'}"
            )
        if len(tokens) > 1:
            raise HSMError(
                f"{len(tokens)} tokens match {uri.describe_token()}: add token=LABEL or serial= "
                "to the pkcs11: URI"
            )
        return tokens[0]

    def session(self, token: Any, pin: str | None) -> Any:
        key = (token.label, bytes(token.serial))
        cached = self._sessions.get(key)
        if cached is not None:
            if pin is None or cached.pin == pin:
                return cached.session
            self._drop(key)
        try:
            try:
                session = token.open(rw=True, user_pin=pin)
            except p11e.UserAlreadyLoggedIn:
                # someone else in this process logged in outside our cache: start clean, once
                self.reinitialize()
                token = self.find_token_by_label(token.label, token.serial)
                session = token.open(rw=True, user_pin=pin)
        except p11e.PinIncorrect:
            raise HSMError(f"wrong PIN for PKCS#11 token {token.label!r}") from None
        except p11e.PinLocked:
            raise HSMError(
                f"the user PIN of token {token.label!r} is locked: the security officer must "
                "reset it"
            ) from None
        except p11e.UserPinNotInitialized:
            raise HSMError(f"token {token.label!r} has no user PIN set yet") from None
        except (p11e.PinInvalid, p11e.PinLenRange):
            raise HSMError(
                f"the PIN given for token {token.label!r} is not a valid PIN (length/characters)"
            ) from None
        except p11e.PKCS11Error as exc:
            raise HSMError(f"cannot open a session on token {token.label!r}: {_name(exc)}") from exc
        self._sessions[key] = _Cached(session, pin)
        return session

    def find_token_by_label(self, label: str, serial: bytes) -> Any:
        for token in self.lib().get_tokens():
            if token.label == label and bytes(token.serial) == bytes(serial):
                return token
        raise HSMError(f"PKCS#11 token {label!r} disappeared")

    def _drop(self, key: tuple[str, bytes]) -> None:
        cached = self._sessions.pop(key, None)
        if cached is not None:
            with contextlib.suppress(Exception):
                cached.session.close()

    def run(self, uri: Pkcs11Uri, pin: str | None, fn: Callable[[Any], T]) -> T:
        """Run ``fn(session)`` on the token ``uri`` names, logged in when ``pin`` is given."""
        with self.lock:
            for attempt in (0, 1):
                token = self.find_token(uri)
                session = self.session(token, pin)
                try:
                    return fn(session)
                except (
                    p11e.SessionHandleInvalid,
                    p11e.SessionClosed,
                    p11e.DeviceRemoved,
                    p11e.TokenNotPresent,
                    p11e.UserNotLoggedIn,
                    p11e.ObjectHandleInvalid,
                    p11e.KeyHandleInvalid,
                ) as exc:
                    if attempt:
                        raise HSMError(
                            f"PKCS#11 operation failed on token {token.label!r}: {_name(exc)}"
                        ) from exc
                    self.reinitialize()
                except p11e.PKCS11Error as exc:
                    raise HSMError(
                        f"PKCS#11 token {token.label!r} refused the operation: {_name(exc)}"
                    ) from exc
        raise AssertionError("unreachable")  # pragma: no cover


def _shared_lib(path: str) -> Any:
    """python-pkcs11 caches libraries by the path string: reuse one loaded under another name
    for the same file (a second C_Initialize would fail), so other code calling
    ``pkcs11.lib(path)`` and this module share one initialised library."""
    real = os.path.realpath(path)
    for name in list(pkcs11._loaded):
        if os.path.realpath(name) == real:
            return pkcs11.lib(name)
    return pkcs11.lib(path)


def pkcs11_lib(module_path: str | None = None) -> Any:
    """The process-wide python-pkcs11 ``lib`` for a module (default: $EDGEPKG_PKCS11_MODULE or
    SoftHSM2), for code that needs raw PKCS#11 access next to edgepkg's keys."""
    mod = module_for(Pkcs11Uri(module_path=module_path))
    with mod.lock:
        return mod.lib()


def _name(exc: BaseException) -> str:
    text = str(exc)
    return type(exc).__name__ + (f" ({text})" if text else "")


_modules: dict[str, _Module] = {}
_modules_lock = threading.Lock()


def module_for(uri: Pkcs11Uri) -> _Module:
    path = os.path.abspath(uri.module())
    key = os.path.realpath(path)  # one lock and one library per file, whatever its name
    with _modules_lock:
        mod = _modules.get(key)
        if mod is None:
            mod = _modules[key] = _Module(path)
        return mod


def _after_fork() -> None:
    for mod in _modules.values():
        mod.stale = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


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


def _open_private(uri: Pkcs11Uri, pin: str | None, purpose: str) -> tuple[_KeyHandle, Any]:
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


def _generation(obj: Any) -> int:
    try:
        app = obj[Attribute.APPLICATION] or ""
    except p11e.PKCS11Error:
        return -1
    prefix = DATA_APPLICATION + ":"
    if isinstance(app, str) and app.startswith(prefix) and app[len(prefix) :].isdigit():
        return int(app[len(prefix) :])
    return -1


def _data_objects(session: Any, label: str) -> list[Any]:
    objs = _take(
        session.get_objects({Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: label}), 64
    )
    return sorted(objs, key=_generation)


def _data_pin(uri: Pkcs11Uri, pin: str | None) -> str:
    resolved = resolve_pin(uri, pin)
    if resolved is None:
        raise KeyError_(
            f"data objects in {uri.describe_token()} are private: a PIN is needed "
            "(?pin-source=... in the URI or $EDGEPKG_PKCS11_PIN)"
        )
    return resolved


def _check_data(label: str, value: bytes) -> None:
    if not label or len(label) > 128:
        raise KeyError_("a data object needs a label of 1-128 characters")
    if len(value) > MAX_DATA_OBJECT:
        raise KeyError_(f"data object {label!r} is larger than {MAX_DATA_OBJECT} bytes")


def _value(obj: Any, label: str) -> bytes:
    value = bytes(obj[Attribute.VALUE])
    if len(value) > MAX_DATA_OBJECT:
        raise HSMError(f"data object {label!r} is larger than {MAX_DATA_OBJECT} bytes")
    return value


def store_data_object(uri: Pkcs11Uri, label: str, value: bytes, *, pin: str | None = None) -> None:
    """Store ``value`` as a private token CKO_DATA object, replacing any with the same label.

    Replace semantics: anyone holding the user PIN can change the value. Use
    :func:`create_data_object_once` / :func:`read_unique_data_object` for values that must not
    change once provisioned (trust anchors).

    Crash-safe ordering: the new object (generation n+1) is created before the old ones are
    destroyed, and readers take the highest generation, so a reader sees the old or the new value.
    """
    _check_data(label, value)
    resolved = _data_pin(uri, pin)

    def op(session: Any) -> None:
        old = _data_objects(session, label)
        gen = max((_generation(o) for o in old), default=-1) + 1
        session.create_object(
            {
                Attribute.CLASS: ObjectClass.DATA,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.MODIFIABLE: False,
                Attribute.LABEL: label,
                Attribute.APPLICATION: f"{DATA_APPLICATION}:{gen}",
                Attribute.VALUE: bytes(value),
            }
        )
        for obj in old:
            obj.destroy()

    module_for(uri).run(uri, resolved, op)


def create_data_object_once(
    uri: Pkcs11Uri, label: str, value: bytes, *, pin: str | None = None
) -> bool:
    """Create the write-once private CKO_DATA object ``label``; True when created.

    The object is CKA_MODIFIABLE=false, CKA_DESTROYABLE=false and CKA_COPYABLE=false: once
    created, a session logged in with the user PIN can neither change, relabel, copy nor delete
    it (only re-initialising the token under the SO PIN removes it). A token that does not know
    CKA_DESTROYABLE/CKA_COPYABLE (PKCS#11 < 2.40) gets the object without them and a warning.

    Idempotent for the same value: when exactly one object ``label`` already holds ``value``,
    nothing is written and False is returned (a retried enrollment). Raises
    :class:`DataObjectExistsError` when it holds another value and
    :class:`DataObjectConflictError` when several objects carry the label.
    """
    _check_data(label, value)
    resolved = _data_pin(uri, pin)
    template = {
        Attribute.CLASS: ObjectClass.DATA,
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.MODIFIABLE: False,
        Attribute.LABEL: label,
        Attribute.APPLICATION: f"{DATA_APPLICATION}:once",
        Attribute.VALUE: bytes(value),
    }

    def op(session: Any) -> bool:
        existing = _data_objects(session, label)
        if len(existing) > 1:
            raise DataObjectConflictError(_conflict_message(uri, label, len(existing)))
        if existing:
            if _value(existing[0], label) == bytes(value):
                return False
            raise DataObjectExistsError(
                f"token {uri.token!r} already holds the write-once data object {label!r} with "
                "another value; it cannot be replaced with the user PIN"
            )
        try:
            session.create_object(
                {**template, Attribute.DESTROYABLE: False, Attribute.COPYABLE: False}
            )
        except p11e.AttributeTypeInvalid:
            _log.warning(
                "token %r does not support CKA_DESTROYABLE/CKA_COPYABLE: the write-once object "
                "%r can be deleted with the user PIN (readers still refuse a second one)",
                uri.token,
                label,
            )
            session.create_object(template)
        return True

    return module_for(uri).run(uri, resolved, op)


def _conflict_message(uri: Pkcs11Uri, label: str, n: int) -> str:
    return (
        f"token {uri.token!r} holds {n} data objects labelled {label!r} where exactly one was "
        "written: someone with the user PIN added one (tampering); refusing to choose"
    )


def read_data_object(uri: Pkcs11Uri, label: str, *, pin: str | None = None) -> bytes:
    """The value of data object ``label`` (the newest generation, see :func:`store_data_object`)."""
    resolved = _data_pin(uri, pin)

    def op(session: Any) -> bytes:
        objs = _data_objects(session, label)
        if not objs:
            raise DataObjectMissingError(
                f"token {uri.token!r} holds no data object labelled {label!r}"
            )
        return _value(objs[-1], label)

    return module_for(uri).run(uri, resolved, op)


def read_unique_data_object(uri: Pkcs11Uri, label: str, *, pin: str | None = None) -> bytes:
    """The value of the write-once data object ``label``: refuses when there are several.

    :class:`DataObjectMissingError` when absent, :class:`DataObjectConflictError` when more than
    one object carries the label (never picks one: a second object is what an attacker holding
    only the user PIN can add).
    """
    resolved = _data_pin(uri, pin)

    def op(session: Any) -> bytes:
        objs = _data_objects(session, label)
        if not objs:
            raise DataObjectMissingError(
                f"token {uri.token!r} holds no data object labelled {label!r}"
            )
        if len(objs) > 1:
            raise DataObjectConflictError(_conflict_message(uri, label, len(objs)))
        return _value(objs[0], label)

    return module_for(uri).run(uri, resolved, op)


def delete_data_object(uri: Pkcs11Uri, label: str, *, pin: str | None = None) -> int:
    resolved = _data_pin(uri, pin)

    def op(session: Any) -> int:
        objs = _data_objects(session, label)
        for obj in objs:
            obj.destroy()
        return len(objs)

    return module_for(uri).run(uri, resolved, op)
