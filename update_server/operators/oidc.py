"""Sign-in with OpenID Connect (optional; on when ``oidc_issuer`` is set).

``GET /login/oidc`` redirects to the provider (authorization code flow, PKCE S256, ``state`` and
``nonce`` kept in the signed session); ``GET /login/oidc/callback`` exchanges the code at the
token endpoint, checks the ID token (signature against the provider's JWKS, RS256 or ES256
only; issuer; audience = our client id; expiry; nonce), maps the groups claim to a role
(``oidc_role_map = "fleet-admins=admin,ml=release"``, strongest wins, none: refused) and starts
an ordinary dashboard session for the user ``sso:<preferred_username or sub>``. That user row is
bound to the provider's ``sub`` (its password hash is ``!oidc:<sub>``, which matches no
password), so a local user or another SSO identity cannot take it over, and admins can disable
it like any user. PKCE and random strings come from Authlib; JOSE from joserfc (Authlib's
successor to ``authlib.jose``).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
import urllib.parse
import urllib.request
from typing import Any

from authlib.common.security import generate_token
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from flask import Blueprint, abort, redirect, render_template, request, session
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy import select
from werkzeug.wrappers import Response

from update_server.audit import service as audit
from update_server.config import ServerConfig
from update_server.db import get_session, utcnow
from update_server.errors import ForbiddenError, UnauthorizedError
from update_server.operators.auth import Operator, login_operator, role_at_least, safe_next
from update_server.operators.models import ROLES, User
from update_server.services import services

bp = Blueprint("oidc", __name__)

ALGORITHMS = ("RS256", "ES256")
_FLOW_KEY = "edgepkg_oidc_flow"
_HTTP_TIMEOUT_S = 10
_MAX_RESPONSE = 1024 * 1024


def role_map(text: str) -> dict[str, str]:
    """``"a=admin, b=release"`` → ``{"a": "admin", "b": "release"}`` (unknown roles refused)."""
    out: dict[str, str] = {}
    for pair in (p.strip() for p in text.split(",") if p.strip()):
        group, sep, role = pair.rpartition("=")
        if not sep or not group.strip() or role.strip() not in ROLES:
            raise UnauthorizedError(
                f"oidc_role_map entry {pair!r} must be GROUP=ROLE with ROLE one of "
                f"{', '.join(ROLES)}", code="oidc_config")
        out[group.strip()] = role.strip()
    return out


def role_for(groups: Any, mapping: dict[str, str]) -> str | None:
    """The strongest role any of ``groups`` maps to, or None."""
    if isinstance(groups, str):
        groups = [groups]
    if not isinstance(groups, list):
        return None
    best: str | None = None
    for g in groups:
        role = mapping.get(g) if isinstance(g, str) else None
        if role is not None and (best is None or role_at_least(role, best)):
            best = role
    return best


@dataclasses.dataclass(frozen=True)
class Provider:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str


def _http_json(req: urllib.request.Request) -> dict[str, Any]:
    with urllib.request.urlopen(req, timeout=_HTTP_TIMEOUT_S) as resp:
        body = resp.read(_MAX_RESPONSE + 1)
    if len(body) > _MAX_RESPONSE:
        raise UnauthorizedError("the identity provider's answer is too large", code="oidc_error")
    data = json.loads(body)
    if not isinstance(data, dict):
        raise UnauthorizedError("the identity provider did not answer with a JSON object",
                                code="oidc_error")
    return data


def discover(cfg: ServerConfig) -> Provider:
    url = cfg.oidc_issuer.rstrip("/") + "/.well-known/openid-configuration"
    doc = _http_json(urllib.request.Request(url, headers={"Accept": "application/json"}))
    if doc.get("issuer") != cfg.oidc_issuer:
        raise UnauthorizedError("the discovery document names another issuer", code="oidc_error")
    try:
        return Provider(cfg.oidc_issuer, str(doc["authorization_endpoint"]),
                        str(doc["token_endpoint"]), str(doc["jwks_uri"]))
    except KeyError as exc:
        raise UnauthorizedError(f"the discovery document lacks {exc}", code="oidc_error") from None


def validate_id_token(
    id_token: str, jwks: dict[str, Any], *, issuer: str, client_id: str, nonce: str, now: int
) -> dict[str, Any]:
    """The ID token's claims, or :class:`UnauthorizedError` saying what was wrong."""
    try:
        keys = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
        token = jwt.decode(id_token, keys, algorithms=list(ALGORITHMS))
        jwt.JWTClaimsRegistry(
            now=now, leeway=60,
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "value": client_id},
            exp={"essential": True},
            sub={"essential": True},
            nonce={"essential": True, "value": nonce},
        ).validate(token.claims)
    except (JoseError, ValueError) as exc:
        raise UnauthorizedError(f"the ID token was refused: {exc}", code="oidc_bad_token") from None
    return dict(token.claims)


def _configured() -> ServerConfig:
    cfg = services().config
    if not cfg.oidc_issuer:
        abort(404)
    return cfg


@bp.get("/login/oidc")
def start() -> Response:
    cfg = _configured()
    provider = discover(cfg)
    flow = {"state": generate_token(32), "nonce": generate_token(32),
            "verifier": generate_token(64), "next": safe_next(request.args.get("next"))}
    session[_FLOW_KEY] = flow
    query = urllib.parse.urlencode({
        "response_type": "code", "client_id": cfg.oidc_client_id,
        "redirect_uri": cfg.oidc_redirect_uri, "scope": "openid profile email groups",
        "state": flow["state"], "nonce": flow["nonce"],
        "code_challenge": create_s256_code_challenge(flow["verifier"]),
        "code_challenge_method": "S256",
    })
    sep = "&" if "?" in provider.authorization_endpoint else "?"
    return redirect(provider.authorization_endpoint + sep + query)


def _exchange(cfg: ServerConfig, provider: Provider, code: str, verifier: str) -> str:
    form = urllib.parse.urlencode({
        "grant_type": "authorization_code", "code": code,
        "redirect_uri": cfg.oidc_redirect_uri, "code_verifier": verifier,
    }).encode()
    basic = base64.b64encode(
        f"{urllib.parse.quote(cfg.oidc_client_id)}:{urllib.parse.quote(cfg.oidc_client_secret)}"
        .encode()).decode()
    req = urllib.request.Request(provider.token_endpoint, data=form, method="POST", headers={
        "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json",
        "Authorization": f"Basic {basic}"})
    try:
        answer = _http_json(req)
    except OSError as exc:
        raise UnauthorizedError(f"the token endpoint refused the code: {exc}",
                                code="oidc_error") from None
    id_token = answer.get("id_token")
    if not isinstance(id_token, str):
        raise UnauthorizedError("the token endpoint returned no id_token", code="oidc_error")
    return id_token


def _user_for(claims: dict[str, Any], role: str) -> User:
    db = get_session()
    sub = str(claims["sub"])[:200]
    name = claims.get("preferred_username")
    username = "sso:" + (name if isinstance(name, str) and name else sub)[:96]
    marker = f"!oidc:{sub}"
    user = db.scalar(select(User).where(User.username == username))
    if user is None:
        user = User(username=username, password_hash=marker, role=role)
        db.add(user)
        db.flush()
    elif user.password_hash != marker:
        raise ForbiddenError(f"{username} is bound to another identity; ask an admin",
                             code="oidc_identity_mismatch")
    if user.disabled:
        raise ForbiddenError(f"{username} is disabled", code="user_disabled")
    user.role = role  # the provider's groups are the truth at each sign-in
    return user


@bp.get("/login/oidc/callback")
def callback() -> Response | tuple[str, int]:
    cfg = _configured()
    db = get_session()
    flow = session.pop(_FLOW_KEY, None)
    try:
        if not isinstance(flow, dict) or request.args.get("state") != flow.get("state"):
            raise UnauthorizedError("the sign-in expired or did not start here; try again",
                                    code="oidc_state")
        if request.args.get("error"):
            raise UnauthorizedError(f"the identity provider said: {request.args['error'][:100]}",
                                    code="oidc_error")
        provider = discover(cfg)
        id_token = _exchange(cfg, provider, request.args.get("code", ""), flow["verifier"])
        jwks = _http_json(urllib.request.Request(provider.jwks_uri))
        claims = validate_id_token(id_token, jwks, issuer=cfg.oidc_issuer,
                                   client_id=cfg.oidc_client_id, nonce=flow["nonce"],
                                   now=int(time.time()))
        role = role_for(claims.get(cfg.oidc_groups_claim), role_map(cfg.oidc_role_map))
        if role is None:
            raise ForbiddenError("your groups at the identity provider give no role here; "
                                 "ask an admin to map one", code="oidc_no_role")
        user = _user_for(claims, role)
    except (UnauthorizedError, ForbiddenError) as exc:
        db.rollback()
        audit.record(db, None, "login.failed", None, {"method": "oidc", "reason": exc.code},
                     request.remote_addr, now=services().now())
        db.commit()
        return render_template("login.html", error=exc.message), exc.status
    op = Operator(kind="user", id=str(user.id), name=user.username, role=user.role)
    login_operator(db, op, utcnow())
    audit.record(db, op, "login", op.name, {"method": "oidc", "role": role},
                 request.remote_addr, now=services().now())
    db.commit()
    return redirect(flow["next"])
