"""Small validators for hostile JSON input; every failure is a BadRequestError (400)."""

from __future__ import annotations

import json
import re
from typing import Any

from flask import Request

from update_server.errors import BadRequestError

MAX_JSON_DEPTH = 16
MAX_STRING = 4096
TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:=/-]{0,63}$")


def json_body(request: Request) -> dict[str, Any]:
    """The request body as a JSON object (size already bounded by MAX_CONTENT_LENGTH)."""
    ctype = request.mimetype
    if ctype != "application/json":
        raise BadRequestError("Content-Type must be application/json", code="bad_content_type")
    raw = request.get_data(cache=True)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"body is not valid JSON: {exc}", code="bad_json") from None
    except RecursionError:
        raise BadRequestError("body JSON is nested too deeply", code="bad_json") from None
    if not isinstance(data, dict):
        raise BadRequestError("body must be a JSON object", code="bad_json")
    check_depth(data)
    return data


def check_depth(value: Any, depth: int = 0, what: str = "body") -> None:
    if depth > MAX_JSON_DEPTH:
        raise BadRequestError(f"{what} is nested too deeply", code="bad_json")
    if isinstance(value, dict):
        for v in value.values():
            check_depth(v, depth + 1, what)
    elif isinstance(value, list):
        for v in value:
            check_depth(v, depth + 1, what)


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
