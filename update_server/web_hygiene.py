"""Web hygiene applied to every response and every request of the app.

* Security headers on every response: a Content-Security-Policy without inline script (the
  dashboard's one script is a static file; a ``<style>`` block needs the per-response nonce
  :func:`csp_nonce` gives templates), ``X-Frame-Options: DENY``, ``Referrer-Policy:
  same-origin`` and ``X-Content-Type-Options: nosniff``.
* Every path id, query string and form field goes through the strict text check of
  :mod:`update_server._validate` before any view or credential check sees it.
* Templates render any stored string safely: text that cannot be encoded (a lone surrogate
  stored before input was checked, or written by hand into the database) is shown with
  U+FFFD instead of failing the page, so one device cannot hide itself from operators.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from flask import Flask, g, request
from werkzeug.wrappers import Response

from update_server._validate import check_request_text

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'nonce-{nonce}'; "
    "style-src-attr 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
"""Scripts only from our origin; ``<style>`` only with the nonce; ``style="width: 40%"``
attributes (the rollout progress bars) stay allowed: they cannot run code."""

_SURROGATE = re.compile("[\ud800-\udfff]")

SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}


def csp_nonce() -> str:
    """The nonce of this response's CSP (templates: ``<style nonce="{{ csp_nonce() }}">``)."""
    nonce = g.get("_edgepkg_csp_nonce")
    if nonce is None:
        nonce = g._edgepkg_csp_nonce = secrets.token_urlsafe(16)
    assert isinstance(nonce, str)
    return nonce


def printable(value: Any) -> Any:
    """Jinja ``finalize``: a str that UTF-8 cannot encode is shown with U+FFFD, not a 500."""
    if isinstance(value, str) and _SURROGATE.search(value):
        return _SURROGATE.sub("\ufffd", value)
    return value


def _check_request() -> None:
    check_request_text(request)


def _add_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", _CSP.format(nonce=csp_nonce()))
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def init_app(app: Flask) -> None:
    """Register the hooks; call before the credential hook so hostile text is refused first."""
    app.before_request(_check_request)
    app.after_request(_add_headers)
    app.jinja_env.finalize = printable
    app.jinja_env.globals["csp_nonce"] = csp_nonce
