"""OpenID Connect sign-in against a tiny local identity provider (discovery, JWKS, an
auto-approving authorization endpoint, a token endpoint signing ID tokens with a test key)."""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, jsonify, redirect, request
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey
from werkzeug.serving import make_server

from tests.update_server._accounts_fixtures import accounts_app, bearer
from update_server.db import get_db
from update_server.operators.oidc import role_for, role_map

CLIENT_ID = "edgepkg-dashboard"
SECRET = "s3cret"
REDIRECT = "http://localhost/login/oidc/callback"


class LocalIdP:
    """The provider; ``mode`` bends the next ID token (wrong_aud, expired, bad_signature)."""

    def __init__(self) -> None:
        self.key = RSAKey.generate_key(2048, parameters={"kid": "k1"}, private=True)
        self.ec_key = ECKey.generate_key("P-256", parameters={"kid": "k2"}, private=True)
        self.other_key = RSAKey.generate_key(2048, parameters={"kid": "k1"}, private=True)
        self.mode = "ok"
        self.alg = "RS256"
        self.groups: list[str] = ["fleet-ops"]
        self.codes: dict[str, dict[str, str]] = {}
        app = Flask("idp")
        self.app = app
        app.add_url_rule("/.well-known/openid-configuration", "disc", self.discovery)
        app.add_url_rule("/jwks", "jwks", self.jwks)
        app.add_url_rule("/authorize", "authorize", self.authorize)
        app.add_url_rule("/token", "token", self.token, methods=["POST"])
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.issuer = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def discovery(self) -> Any:
        return jsonify(issuer=self.issuer, authorization_endpoint=f"{self.issuer}/authorize",
                       token_endpoint=f"{self.issuer}/token", jwks_uri=f"{self.issuer}/jwks")

    def jwks(self) -> Any:
        return jsonify(keys=[self.key.as_dict(private=False), self.ec_key.as_dict(private=False)])

    def authorize(self) -> Any:  # auto-approves, as a logged-in user would
        a = request.args
        assert a["client_id"] == CLIENT_ID and a["code_challenge_method"] == "S256"
        code = secrets.token_urlsafe(16)
        self.codes[code] = {"nonce": a["nonce"], "challenge": a["code_challenge"]}
        return redirect(a["redirect_uri"] + "?" + urllib.parse.urlencode(
            {"code": code, "state": a["state"]}))

    def token(self) -> Any:
        auth = base64.b64decode(request.headers["Authorization"].split()[1]).decode()
        if auth != f"{CLIENT_ID}:{SECRET}":
            return jsonify(error="invalid_client"), 401
        grant = self.codes.pop(request.form["code"])
        digest = hashlib.sha256(request.form["code_verifier"].encode()).digest()
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != grant["challenge"]:
            return jsonify(error="invalid_grant"), 400
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": "u-123", "aud": CLIENT_ID, "iat": now,
                  "exp": now + 300, "nonce": grant["nonce"], "preferred_username": "dana",
                  "groups": self.groups}
        if self.mode == "wrong_aud":
            claims["aud"] = "someone-else"
        if self.mode == "expired":
            claims["exp"] = now - 3600
        key: Any = self.other_key if self.mode == "bad_signature" else self.key
        if self.alg == "ES256":
            key = self.ec_key
        kid = "k2" if self.alg == "ES256" else "k1"
        return jsonify(id_token=jwt.encode({"alg": self.alg, "kid": kid}, claims, key),
                       token_type="Bearer", access_token="x")


@pytest.fixture
def idp() -> Iterator[LocalIdP]:
    p = LocalIdP()
    yield p
    p.server.shutdown()


@pytest.fixture
def app(tmp_path: Path, idp: LocalIdP) -> Iterator[Any]:
    a = accounts_app(tmp_path, oidc_issuer=idp.issuer, oidc_client_id=CLIENT_ID,
                     oidc_client_secret=SECRET, oidc_redirect_uri=REDIRECT,
                     oidc_role_map="fleet-ops=release, fleet-admins=admin")
    yield a
    get_db(a).dispose()


def _sign_in(app: Any) -> tuple[Any, Any]:
    """Browser steps: our start page → the IdP (auto-approve) → our callback."""
    c = app.test_client()
    start = c.get("/login/oidc?next=/dashboard/rollouts")
    assert start.status_code == 302
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a: Any, **k: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        opener.open(start.headers["Location"])
    except urllib.error.HTTPError as exc:  # the 302 back to us
        back = exc.headers["Location"]
    path = urllib.parse.urlsplit(back)
    return c, c.get(f"{path.path}?{path.query}")


def test_oidc_login_yields_a_session_with_the_mapped_role(app: Any, idp: LocalIdP) -> None:
    assert "oidc-login" in app.test_client().get("/login").get_data(as_text=True)
    c, done = _sign_in(app)
    assert done.status_code == 302 and done.headers["Location"] == "/dashboard/rollouts"
    page = c.get("/dashboard/").get_data(as_text=True)
    assert "sso:dana · release" in page
    # groups that map to admin give admin at the next sign-in; the strongest role wins
    idp.groups = ["fleet-ops", "fleet-admins"]
    c2, _ = _sign_in(app)
    assert c2.get("/dashboard/users").status_code == 200
    entries = app.test_client().get("/api/v1/audit?action=login",
                                    headers=bearer(app, "root")).get_json()["entries"]
    assert entries[0]["actor"] == "sso:dana" and entries[0]["details"]["method"] == "oidc"


def test_es256_tokens_are_accepted(app: Any, idp: LocalIdP) -> None:
    idp.alg = "ES256"
    _, done = _sign_in(app)
    assert done.status_code == 302


@pytest.mark.parametrize("mode", ["wrong_aud", "expired", "bad_signature"])
def test_bad_id_tokens_are_refused(app: Any, idp: LocalIdP, mode: str) -> None:
    idp.mode = mode
    c, done = _sign_in(app)
    assert done.status_code == 401
    assert "ID token was refused" in done.get_data(as_text=True)
    assert c.get("/dashboard/").status_code == 302  # no session
    failed = app.test_client().get("/api/v1/audit?action=login.failed",
                                   headers=bearer(app, "root")).get_json()["entries"]
    assert failed[0]["details"] == {"method": "oidc", "reason": "oidc_bad_token"}


def test_no_mapped_group_no_session_and_disabled_sso_users_are_refused(
    app: Any, idp: LocalIdP
) -> None:
    idp.groups = ["marketing"]
    _, done = _sign_in(app)
    assert done.status_code == 403
    idp.groups = ["fleet-ops"]
    assert _sign_in(app)[1].status_code == 302
    app.test_client().delete("/api/v1/users/sso:dana", headers=bearer(app, "root"))
    assert _sign_in(app)[1].status_code == 403


def test_callback_without_our_state_is_refused(app: Any) -> None:
    r = app.test_client().get("/login/oidc/callback?code=x&state=forged")
    assert r.status_code == 401


def test_oidc_is_off_unless_configured(tmp_path: Path) -> None:
    plain = accounts_app(tmp_path)
    assert plain.test_client().get("/login/oidc").status_code == 404
    assert "oidc-login" not in plain.test_client().get("/login").get_data(as_text=True)
    get_db(plain).dispose()


def test_role_mapping() -> None:
    m = role_map("a=viewer, b=admin ,c=release")
    assert role_for(["a", "c"], m) == "release" and role_for("b", m) == "admin"
    assert role_for(["zzz"], m) is None and role_for(None, m) is None
    with pytest.raises(Exception, match="GROUP=ROLE"):
        role_map("a=root")
