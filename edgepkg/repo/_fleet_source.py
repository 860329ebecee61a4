"""Where publish reads the fleet's version distribution: a JSON file or the update server.

``--delta-from-fleet SOURCE``: an ``http(s)://`` SOURCE is the update server's base URL; the
distribution is ``GET {SOURCE}/api/v1/fleet/versions?model=NAME`` with an operator token (role
viewer) read from the environment variable named by ``--server-token-env``, so the token never
appears on a command line or in a process list. Any other SOURCE is a JSON file path.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

from edgepkg.errors import RepoError, UsageError

from ._fleet import FleetDocumentError, FleetVersions, parse_fleet_versions

__all__ = ["FLEET_VERSIONS_PATH", "FleetLookup", "fleet_lookup"]

log = logging.getLogger(__name__)

FLEET_VERSIONS_PATH = "/api/v1/fleet/versions"
MAX_DOCUMENT_BYTES = 1 << 20
DEFAULT_TIMEOUT_S = 30.0

FleetLookup = Callable[[str], FleetVersions]
"""model name -> its fleet distribution; raises an edgepkg Error when it cannot tell."""


def fleet_lookup(
    source: str,
    *,
    token_env: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> FleetLookup:
    """A lookup for ``source`` (a server URL or a JSON file). Checks the arguments now, so a
    missing token fails before publish takes the repository lock; fetches per model later."""
    env = os.environ if env is None else env
    if source.startswith(("http://", "https://")):
        return _url_lookup(source, token_env, env, timeout)
    if token_env:
        raise UsageError("--server-token-env is only used with an http(s):// fleet source")
    return _file_lookup(Path(source))


def _file_lookup(path: Path) -> FleetLookup:
    def lookup(model: str) -> FleetVersions:
        try:
            with open(path, "rb") as fh:
                raw = fh.read(MAX_DOCUMENT_BYTES + 1)
        except OSError as exc:
            reason = exc.strerror or exc
            raise RepoError(f"cannot read fleet distribution {path}: {reason}") from None
        if len(raw) > MAX_DOCUMENT_BYTES:
            raise FleetDocumentError(f"{path}: larger than {MAX_DOCUMENT_BYTES} bytes")
        return parse_fleet_versions(_json(raw, str(path)), model, source=str(path))

    return lookup


def _url_lookup(
    base: str, token_env: str | None, env: Mapping[str, str], timeout: float
) -> FleetLookup:
    parts = urllib.parse.urlsplit(base)
    if parts.username or parts.password or parts.query:
        raise UsageError(
            "the fleet source URL must not carry credentials or a query: give the server's base "
            "URL and the operator token through --server-token-env VAR"
        )
    if not token_env:
        raise UsageError(
            "a fleet source URL needs an operator token (role viewer): put it in an environment "
            "variable and pass its name with --server-token-env VAR"
        )
    token = env.get(token_env, "").strip()
    if not token:
        raise UsageError(f"environment variable {token_env} (--server-token-env) is empty or unset")
    if parts.scheme == "http" and not _is_loopback(parts.hostname or ""):
        log.warning("sending the operator token to %s over plain http: use https", parts.netloc)
    root = base.rstrip("/")

    def lookup(model: str) -> FleetVersions:
        url = f"{root}{FLEET_VERSIONS_PATH}?{urllib.parse.urlencode({'model': model})}"
        req = urllib.request.Request(
            url, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read(MAX_DOCUMENT_BYTES + 1)
        except urllib.error.HTTPError as exc:
            detail = _server_message(exc.read(2000))
            raise RepoError(
                f"fleet distribution from {root}: HTTP {exc.code}"
                + (f": {detail}" if detail else "")
                + (" (check the token in " + token_env + ")" if exc.code in (401, 403) else "")
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RepoError(f"cannot reach update server {root}: {reason}") from None
        if len(raw) > MAX_DOCUMENT_BYTES:
            raise FleetDocumentError(f"{url}: answer larger than {MAX_DOCUMENT_BYTES} bytes")
        return parse_fleet_versions(_json(raw, url), model, source=url)

    return lookup


def _json(raw: bytes, source: str) -> object:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FleetDocumentError(f"{source}: not JSON ({exc})") from None


def _server_message(body: bytes) -> str:
    """The server's JSON error message, or nothing (never echo an HTML page)."""
    try:
        doc = json.loads(body)
        message = doc["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return ""
    return str(message)[:300]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
