"""RFC 7512 ``pkcs11:`` URIs: parsing and PIN resolution (pure logic, plus reading a PIN file).

A URI names a token (``token``, ``serial``, ``manufacturer``, ``model``) and optionally an object
(``object`` = CKA_LABEL, ``id`` = CKA_ID as percent-encoded bytes, ``type``). The query may carry
``pin-source`` (a file path, ``file:`` URI or ``env:VAR``), ``pin-value`` and ``module-path``.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from edgepkg.errors import KeyError_

SCHEME = "pkcs11:"
DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
MODULE_ENV = "EDGEPKG_PKCS11_MODULE"
PIN_ENV = "EDGEPKG_PKCS11_PIN"

_MAX_URI = 4096
_MAX_PIN_FILE = 1024
_PATH_ATTRS = {
    "token",
    "manufacturer",
    "serial",
    "model",
    "object",
    "id",
    "type",
    "library-manufacturer",
    "library-description",
    "library-version",
    "slot-description",
    "slot-manufacturer",
    "slot-id",
    "module-path",  # RFC 7512 puts it in the query; accepted in the path too
}
_QUERY_ATTRS = {"pin-source", "pin-value", "module-name", "module-path"}
_TYPES = {"private", "public", "secret-key", "cert", "data"}


class Pkcs11UriError(KeyError_):
    """A ``pkcs11:`` URI is malformed or names something unsupported."""


@dataclass(frozen=True)
class Pkcs11Uri:
    token: str | None = None
    manufacturer: str | None = None
    serial: str | None = None
    model: str | None = None
    object: str | None = None
    id: bytes | None = None
    type: str | None = None
    module_path: str | None = None
    pin_source: str | None = None
    pin_value: str | None = None

    def module(self, environ: Mapping[str, str] | None = None) -> str:
        env = os.environ if environ is None else environ
        return self.module_path or env.get(MODULE_ENV) or DEFAULT_MODULE

    def with_object(self, label: str | None, *, type_: str | None = None) -> Pkcs11Uri:
        return replace(self, object=label, id=None if label else self.id, type=type_)

    def describe_token(self) -> str:
        parts = [f"{k}={v}" for k, v in (("token", self.token), ("serial", self.serial)) if v]
        return "token " + (", ".join(parts) if parts else "(any)")

    def describe_object(self) -> str:
        parts = []
        if self.object is not None:
            parts.append(f"label {self.object!r}")
        if self.id is not None:
            parts.append(f"id {self.id.hex()}")
        return "object with " + " and ".join(parts) if parts else "object (unnamed)"

    def to_string(self, *, include_pin: bool = False) -> str:
        """Format back to a URI (``pin-value`` left out unless asked for)."""

        def q(value: str) -> str:
            return urllib.parse.quote(value, safe="")

        path: list[str] = []
        for name, value in (
            ("token", self.token),
            ("manufacturer", self.manufacturer),
            ("serial", self.serial),
            ("model", self.model),
            ("object", self.object),
        ):
            if value is not None:
                path.append(f"{name}={q(value)}")
        if self.id is not None:
            path.append("id=" + "".join(f"%{b:02x}" for b in self.id))
        if self.type is not None:
            path.append(f"type={self.type}")
        query: list[str] = []
        if self.module_path is not None:
            query.append(f"module-path={urllib.parse.quote(self.module_path, safe='/')}")
        if self.pin_source is not None:
            query.append(f"pin-source={urllib.parse.quote(self.pin_source, safe='/:')}")
        if include_pin and self.pin_value is not None:
            query.append(f"pin-value={q(self.pin_value)}")
        return SCHEME + ";".join(path) + ("?" + "&".join(query) if query else "")

    def __str__(self) -> str:
        return self.to_string()


def is_pkcs11_uri(ref: object) -> bool:
    return isinstance(ref, str) and ref[: len(SCHEME)].lower() == SCHEME


def _unquote(raw: str, name: str, uri: str) -> bytes:
    out = bytearray()
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch == "%":
            pair = raw[i + 1 : i + 3]
            if len(pair) != 2 or any(c not in "0123456789abcdefABCDEF" for c in pair):
                raise Pkcs11UriError(f"bad percent-encoding in {name!r} of {_redact(uri)}")
            out.append(int(pair, 16))
            i += 3
        else:
            out += ch.encode("utf-8")
            i += 1
    return bytes(out)


def _text(raw: str, name: str, uri: str) -> str:
    try:
        return _unquote(raw, name, uri).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Pkcs11UriError(f"{name!r} in {_redact(uri)} is not valid UTF-8") from exc


def _redact(uri: str) -> str:
    """Never echo a PIN back into an error message or a log."""
    head, sep, query = uri.partition("?")
    if not sep:
        return head[:200]
    parts = ["pin-value=***" if p.lower().startswith("pin-value=") else p for p in query.split("&")]
    return (head + "?" + "&".join(parts))[:300]


def parse_pkcs11_uri(uri: str) -> Pkcs11Uri:
    """Parse an RFC 7512 URI; raise :class:`Pkcs11UriError` with the reason when it is bad."""
    if not isinstance(uri, str) or not is_pkcs11_uri(uri):
        raise Pkcs11UriError(f"not a pkcs11: URI: {str(uri)[:80]!r}")
    if len(uri) > _MAX_URI:
        raise Pkcs11UriError(f"pkcs11: URI longer than {_MAX_URI} characters")
    if any(c in uri for c in "\r\n\x00#"):
        raise Pkcs11UriError(f"pkcs11: URI contains a forbidden character: {_redact(uri)}")
    body = uri[len(SCHEME) :]
    path, _, query = body.partition("?")
    values: dict[str, str] = {}

    def add(name: str, raw: str, allowed: set[str], where: str) -> None:
        if name not in allowed:
            raise Pkcs11UriError(
                f"unknown {where} attribute {name!r} in {_redact(uri)} "
                f"(known: {', '.join(sorted(allowed))})"
            )
        if name in values:
            raise Pkcs11UriError(f"attribute {name!r} given twice in {_redact(uri)}")
        values[name] = raw

    for part in filter(None, path.split(";")):
        name, eq, raw = part.partition("=")
        if not eq:
            raise Pkcs11UriError(f"attribute {part!r} has no '=' in {_redact(uri)}")
        add(name.lower(), raw, _PATH_ATTRS, "path")
    for part in filter(None, query.split("&")):
        name, eq, raw = part.partition("=")
        if not eq:
            raise Pkcs11UriError(f"query attribute {part!r} has no '=' in {_redact(uri)}")
        add(name.lower(), raw, _QUERY_ATTRS, "query")

    unsupported = {"slot-id", "slot-description", "slot-manufacturer", "module-name"} & set(values)
    unsupported |= {k for k in values if k.startswith("library-")}
    if unsupported:
        raise Pkcs11UriError(
            f"attribute(s) {', '.join(sorted(unsupported))} are not supported; name the token "
            f"with token=/serial= and the library with module-path="
        )
    type_ = _text(values["type"], "type", uri) if "type" in values else None
    if type_ is not None and type_ not in _TYPES:
        raise Pkcs11UriError(f"type={type_!r} is not one of {', '.join(sorted(_TYPES))}")
    key_id = _unquote(values["id"], "id", uri) if "id" in values else None
    if key_id is not None and not key_id:
        raise Pkcs11UriError(f"empty id= in {_redact(uri)}")

    def text(name: str) -> str | None:
        return _text(values[name], name, uri) if name in values else None

    parsed = Pkcs11Uri(
        token=text("token"),
        manufacturer=text("manufacturer"),
        serial=text("serial"),
        model=text("model"),
        object=text("object"),
        id=key_id,
        type=type_,
        module_path=text("module-path"),
        pin_source=text("pin-source"),
        pin_value=text("pin-value"),
    )
    if parsed.pin_source is not None and parsed.pin_value is not None:
        raise Pkcs11UriError("give either pin-source or pin-value, not both")
    if parsed.module_path is not None and not os.path.isabs(parsed.module_path):
        raise Pkcs11UriError(f"module-path must be an absolute path, got {parsed.module_path!r}")
    return parsed


def resolve_pin(
    uri: Pkcs11Uri, explicit: str | None = None, environ: Mapping[str, str] | None = None
) -> str | None:
    """The user PIN: explicit argument > pin-value > pin-source > $EDGEPKG_PKCS11_PIN > None."""
    env = os.environ if environ is None else environ
    if explicit is not None:
        return explicit
    if uri.pin_value is not None:
        return uri.pin_value
    if uri.pin_source is not None:
        source = uri.pin_source
        if source.startswith("env:"):
            var = source[4:]
            if var not in env:
                raise KeyError_(f"pin-source names environment variable {var!r}, which is unset")
            return env[var]
        if source.startswith("file:"):
            source = urllib.parse.urlparse(source).path
        path = Path(source)
        try:
            with path.open("rb") as fh:
                data = fh.read(_MAX_PIN_FILE + 1)
        except OSError as exc:
            raise KeyError_(f"cannot read the PIN file {path}: {exc.strerror}") from exc
        if len(data) > _MAX_PIN_FILE:
            raise KeyError_(f"PIN file {path} is larger than {_MAX_PIN_FILE} bytes")
        try:
            return data.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            raise KeyError_(f"PIN file {path} is not UTF-8 text") from exc
    return env.get(PIN_ENV)
