"""Bounded JSON loading for untrusted input (manifests, signature blocks, TensorRT metadata).

``json.loads`` on hostile bytes can raise ``RecursionError`` (deep nesting), ``ValueError`` from
int conversion (a 5,000-digit integer exceeds Python's digit limit), accept ``NaN``/``Infinity``
(not JSON, and a poison value for databases and comparisons), and decode lone surrogates
(``"\\ud800"``) that later fail to encode. :func:`loads_bounded` refuses all of those up front and
raises the caller's typed error class (a :class:`edgepkg.errors.UntrustedInputError` subclass)
with a message naming ``what`` was bad.

The depth check is a linear scan of the text that ignores brackets inside strings, so the stdlib
decoder (which recurses per nesting level) only ever sees shallow documents.
"""

from __future__ import annotations

import json
import re
from typing import Any

from edgepkg.errors import TooLargeError, UntrustedInputError

__all__ = ["MAX_DEPTH", "MAX_INT_DIGITS", "loads_bounded"]

MAX_DEPTH = 32
MAX_INT_DIGITS = 40  # > any 128-bit integer; far below Python's 4,300-digit conversion limit
# A string token always matches (to its closing quote or to the end of the text), so the scan
# never backtracks: linear even for ``"\"\"\"...`` without a closing quote.
_SCANNED = re.compile(r'"(?:[^"\\]|\\.)*(?:"|\\?\Z)|[\[\]{}]', re.DOTALL)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise ValueError(f"an integer has {digits} digits (limit {MAX_INT_DIGITS})")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):  # 1e999 overflows to inf
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _check_depth(text: str, max_depth: int) -> None:
    depth = 0
    for m in _SCANNED.finditer(text):
        tok = m.group()
        if tok in "[{":
            depth += 1
            if depth > max_depth:
                raise ValueError(f"nesting deeper than {max_depth} levels")
        elif tok in "]}":
            depth -= 1


def _check_strings(value: Any) -> None:
    """Refuse lone surrogates anywhere (keys and values): they cannot be encoded as UTF-8."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("a string holds a lone UTF-16 surrogate") from None
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


def loads_bounded(
    raw: bytes | str,
    *,
    what: str,
    error: type[UntrustedInputError],
    max_bytes: int = 1 << 20,
    max_depth: int = MAX_DEPTH,
) -> Any:
    """Parse untrusted JSON, or raise ``error`` (``TooLargeError`` when over ``max_bytes``).

    Refuses: more than ``max_bytes``, invalid UTF-8, nesting deeper than ``max_depth``, integers
    longer than ``MAX_INT_DIGITS`` digits, ``NaN``/``Infinity``/overflowing floats, lone
    surrogates. ``what`` names the input in messages ("manifest", "TensorRT metadata").
    """
    if len(raw) > max_bytes:
        raise TooLargeError(f"{what} is {len(raw)} bytes, limit {max_bytes}")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        _check_depth(text, max_depth)
        value = json.loads(
            text,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_reject_constant,
        )
        _check_strings(value)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise error(f"{what} is not valid JSON: {exc}") from None
    return value
