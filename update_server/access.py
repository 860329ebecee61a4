"""Deny by default, at the app level: every endpoint needs credentials unless it is listed in
:data:`PUBLIC_ENDPOINTS`.

The hook only checks that the *kind* of credential the endpoint needs is there (a device
signature on the device API, an operator session or bearer token everywhere else); the views
keep their precise checks (the signature itself, the nonce, the operator's role). A new
blueprint is therefore closed until someone adds its public endpoints here on purpose.
"""

from __future__ import annotations

from flask import redirect, request, url_for
from werkzeug.wrappers import Response

from edgepkg.protocol import HEADER_DEVICE, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP
from update_server.errors import UnauthorizedError
from update_server.operators.auth import current_operator, is_api_request
from update_server.services import services

PUBLIC_ENDPOINTS = frozenset(
    {
        "index",  # says where the API and the dashboard are
        "healthz",
        "static",
        "tuf.metadata",  # TUF files: the device trusts signatures, not the transport
        "tuf.targets",
        "devices_api.enroll",  # the enrollment token in the body is the credential
        "auth.login",
        "auth.logout",
        "oidc.start",  # OpenID Connect sign-in: 404 unless configured; state/nonce/PKCE guard
        "oidc.callback",
        "dashboard.static",
        "openapi.openapi_json",
    }
)
"""Endpoints anyone may call."""

METRICS_ENDPOINT = "metrics.metrics_public"
"""Public only when the configuration says so (``metrics_public``); operators otherwise."""

DEVICE_BLUEPRINTS = frozenset({"devices_api", "telemetry_api"})
"""Blueprints whose endpoints (other than public ones) take a device signature."""

_DEVICE_HEADERS = (HEADER_DEVICE, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)


def is_public(endpoint: str) -> bool:
    if endpoint in PUBLIC_ENDPOINTS:
        return True
    return endpoint == METRICS_ENDPOINT and services().config.metrics_public


def require_credentials() -> Response | None:
    """``before_request`` hook: refuse a request without the credentials its endpoint needs."""
    endpoint = request.endpoint
    if endpoint is None or is_public(endpoint):
        return None  # unrouted requests get their 404/405 from Flask
    if request.blueprint in DEVICE_BLUEPRINTS:
        if not all(request.headers.get(h) for h in _DEVICE_HEADERS):
            raise UnauthorizedError(
                "device request is not signed (X-Edgepkg-Device/-Timestamp/-Nonce/-Signature)",
                code="unsigned",
            )
        return None
    if current_operator() is not None:
        return None
    if is_api_request():
        raise UnauthorizedError("operator authentication required")
    return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
