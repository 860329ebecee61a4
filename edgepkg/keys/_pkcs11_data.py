"""PKCS#11 data objects: small labelled values (trust anchors, counters) kept in the token,
with write-once and unique-label rules.
"""

from __future__ import annotations

import logging
from typing import Any

from edgepkg.errors import HSMError, KeyError_
from edgepkg.keys._pkcs11_objects import _take
from edgepkg.keys._pkcs11_session import module_for
from edgepkg.keys._uri import Pkcs11Uri, resolve_pin

try:  # python-pkcs11 is the [hsm] extra
    from pkcs11 import Attribute, ObjectClass, exceptions as p11e
except ImportError:  # pragma: no cover - exercised only without the extra
    pass

DATA_APPLICATION = "edgepkg"
MAX_DATA_OBJECT = 64 * 1024
_log = logging.getLogger("edgepkg.keys")


class DataObjectMissingError(HSMError):
    """The token holds no data object with the label asked for."""


class DataObjectExistsError(HSMError):
    """A write-once data object already exists with another value (it is never replaced)."""


class DataObjectConflictError(HSMError):
    """Several data objects carry a label that must be unique (tampering with the user PIN)."""


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
