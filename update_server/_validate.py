"""The one validation layer of the server's HTTP boundary; every failure is a 4xx JSON error.

Two halves:

* **Strict decoding.** :func:`json_body` decodes the body once and walks it once: it refuses
  what JSON or Python accepts but the database, the dashboard or a device cannot use
  (``NaN``/``Infinity``, integers outside the signed 64-bit range or with thousands of digits,
  lone surrogates and NUL in any string or key, nesting deeper than :data:`MAX_JSON_DEPTH`).
  :func:`check_request_text` (a ``before_request`` hook of the app) does the same for path ids,
  query strings and form fields. After that, a value that reaches a view is something SQLite,
  PostgreSQL, Jinja and ``json.dumps`` all store and render.
* **Typed getters** (:func:`get_str`, :func:`get_int`, ...) that views use to pick fields.

Why not pydantic: the device<->server messages already have one typed parser each in
:mod:`edgepkg.protocol` (stdlib only, shared with the device); a second schema of the same
messages would be the duplicate the contract module exists to prevent. What was missing was a
strict *decoder* under those parsers, which is this module.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Any, NoReturn

from flask import Request

from update_server.errors import BadRequestError

MAX_JSON_DEPTH = 16
MAX_STRING = 4096
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
MAX_INT_DIGITS = 20  # len(str(-2**63)) == 20: longer digit strings are never in range
TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:=/-]{0,63}$")
# Lone surrogates cannot be encoded as UTF-8 (the response, Jinja, PostgreSQL all fail on them);
# NUL is refused by PostgreSQL text columns and truncates C strings elsewhere.
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")


def _bad(field: str, message: str) -> NoReturn:
    raise BadRequestError(f"{field}: {message}", code="bad_value", field=field)


def check_text(value: str, field: str) -> str:
    """``value`` unless it holds a lone surrogate or NUL (then a 400 naming ``field``)."""
    m = _BAD_TEXT.search(value)
    if m is not None:
        what = "a NUL character" if m.group() == "\x00" else "a lone UTF-16 surrogate"
        _bad(field, f"contains {what} at position {m.start()}; send valid UTF-8 text")
    return value


def _parse_int(text: str) -> int:
    # Refused while decoding only when the digits alone say "out of range" (a 5,000-digit
    # literal costs quadratic time and raises ValueError in int()); the walk names the field
    # of any other out-of-range integer.
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _DecodeRefusal(f"an integer literal of {len(text)} digits (at most 64-bit)")
    return int(text)


def _parse_constant(name: str) -> float:
    return float(name)  # NaN / Infinity / -Infinity: refused by the walk, which names the field


class _DecodeRefusal(ValueError):
    """Raised from inside ``json.loads`` hooks; turned into a 400 by :func:`decode_json`."""


def decode_json(raw: bytes | str, what: str = "body") -> Any:
    """Strictly decode a JSON document from an untrusted source, then :func:`check_tree` it."""
    try:
        data = json.loads(
            raw,
            parse_int=_parse_int,
            parse_constant=_parse_constant,
        )
    except _DecodeRefusal as exc:
        raise BadRequestError(f"{what} holds {exc}", code="bad_json", field=what) from None
    except RecursionError:
        raise BadRequestError(f"{what} JSON is nested too deeply", code="bad_json") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"{what} is not valid JSON: {exc}", code="bad_json") from None
    check_tree(data, what)
    return data


def check_tree(value: Any, field: str = "body", depth: int = 0) -> None:
    """Walk a decoded JSON value once: depth, strings (keys too), numbers; 400 naming the field."""
    if depth > MAX_JSON_DEPTH:
        raise BadRequestError(
            f"{field} is nested more than {MAX_JSON_DEPTH} levels deep", code="bad_json",
            field=field,
        )
    if isinstance(value, str):
        check_text(value, field)
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            _bad(field, "integer outside the signed 64-bit range")
    elif isinstance(value, float):
        if not math.isfinite(value):
            _bad(field, "NaN and Infinity (or numbers too large for a double) are not allowed")
    elif isinstance(value, dict):
        for k, v in value.items():
            key = check_text(str(k), f"{field} key")
            check_tree(v, f"{field}.{key[:64]}", depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_tree(v, f"{field}[{i}]", depth + 1)


def check_depth(value: Any, depth: int = 0, what: str = "body") -> None:
    """Kept for callers of the old name: the full :func:`check_tree` walk."""
    check_tree(value, what, depth)


def json_body(request: Request) -> dict[str, Any]:
    """The request body as a strictly decoded JSON object (size bounded by MAX_CONTENT_LENGTH)."""
    ctype = request.mimetype
    if ctype != "application/json":
        raise BadRequestError("Content-Type must be application/json", code="bad_content_type")
    data = decode_json(request.get_data(cache=True))
    if not isinstance(data, dict):
        raise BadRequestError("body must be a JSON object", code="bad_json")
    return data


def _check_pairs(pairs: Iterable[tuple[str, str]], where: str) -> None:
    for key, value in pairs:
        check_text(key, f"{where} key")
        check_text(value, f"{where}.{key[:64]}")


def check_request_text(request: Request) -> None:
    """``before_request``: path ids, query string and form fields hold no NUL or surrogate.

    (Werkzeug decodes invalid percent-encoded UTF-8 to U+FFFD, so a URL can smuggle in NUL but
    not a surrogate; a form field can carry both.)
    """
    for name, value in (request.view_args or {}).items():
        if isinstance(value, str):
            check_text(value, f"path.{name}")
    _check_pairs(request.args.items(multi=True), "query")
    if request.method in ("POST", "PUT", "PATCH") and request.mimetype in (
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ):
        _check_pairs(request.form.items(multi=True), "form")


def query_int(
    request: Request, name: str, default: int, *, minimum: int = 0, maximum: int = INT64_MAX
) -> int:
    """An integer query parameter in ``minimum..maximum`` (400 naming it otherwise)."""
    raw = request.args.get(name)
    if raw is None:
        return default
    text = raw.strip()
    if not re.fullmatch(r"-?[0-9]{1,19}", text):
        _bad(name, f"must be an integer in {minimum}..{maximum}")
    n = int(text)
    if not minimum <= n <= maximum:
        _bad(name, f"must be an integer in {minimum}..{maximum}")
    return n


def get_str(
    obj: dict[str, Any],
    key: str,
    *,
    required: bool = True,
    max_len: int = MAX_STRING,
    nullable: bool = False,
    pattern: re.Pattern[str] | None = None,
) -> str | None:
    if key not in obj or (obj[key] is None and nullable):
        if required and key not in obj:
            raise BadRequestError(f"{key!r} is required")
        return None
    v = obj[key]
    if not isinstance(v, str):
        raise BadRequestError(f"{key!r} must be a string")
    if len(v) > max_len:
        raise BadRequestError(f"{key!r} is longer than {max_len} characters")
    check_text(v, key)
    if pattern is not None and not pattern.match(v):
        raise BadRequestError(f"{key!r} has an invalid format")
    return v


def get_int(
    obj: dict[str, Any],
    key: str,
    *,
    required: bool = True,
    minimum: int | None = None,
    maximum: int | None = None,
    nullable: bool = False,
) -> int | None:
    if key not in obj or (obj[key] is None and nullable):
        if required and key not in obj:
            raise BadRequestError(f"{key!r} is required")
        return None
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadRequestError(f"{key!r} must be an integer")
    if not INT64_MIN <= v <= INT64_MAX:
        raise BadRequestError(f"{key!r} is outside the signed 64-bit range", field=key)
    if minimum is not None and v < minimum:
        raise BadRequestError(f"{key!r} must be at least {minimum}")
    if maximum is not None and v > maximum:
        raise BadRequestError(f"{key!r} must be at most {maximum}")
    return v


def get_dict(
    obj: dict[str, Any], key: str, *, required: bool = True, max_bytes: int = 16384
) -> dict[str, Any] | None:
    if key not in obj or obj[key] is None:
        if required:
            raise BadRequestError(f"{key!r} is required")
        return None
    v = obj[key]
    if not isinstance(v, dict):
        raise BadRequestError(f"{key!r} must be a JSON object")
    check_tree(v, key)
    if len(json.dumps(v)) > max_bytes:
        raise BadRequestError(f"{key!r} is larger than {max_bytes} bytes")
    return v


def get_tags(obj: dict[str, Any], key: str = "tags", *, required: bool = False) -> list[str]:
    if key not in obj or obj[key] is None:
        if required:
            raise BadRequestError(f"{key!r} is required")
        return []
    v = obj[key]
    if not isinstance(v, list) or len(v) > 64:
        raise BadRequestError(f"{key!r} must be a list of at most 64 tags")
    out: list[str] = []
    for t in v:
        if not isinstance(t, str) or not TAG_RE.match(t):
            raise BadRequestError(
                f"tag {t!r} is invalid (1-64 chars of letters, digits, _ . : = / -)"
            )
        if t not in out:
            out.append(t)
    return out
