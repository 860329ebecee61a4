"""Webhooks: queue an event for every configured endpoint, deliver due ones with a signature.

Signature (what a receiver checks)::

    X-Edgepkg-Webhook-Timestamp: <unix seconds>
    X-Edgepkg-Webhook-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>
    X-Edgepkg-Webhook-Id: <event id>   (the same on every retry: receivers de-duplicate on it)

The timestamp is inside the MAC so a captured delivery cannot be replayed later; receivers
should refuse timestamps older than a few minutes. HMAC is the standard library's (not a new
door to ``cryptography``). Events are queued in the caller's transaction (an alert that opens
and the delivery that reports it commit together) and sent later by :func:`deliver_due`,
called by :class:`Worker` (a thread per process; the claim is a compare-and-swap, so several
processes never send the same attempt twice). Failed attempts back off exponentially
(30 s, 60 s, ... capped at one hour) until ``webhook_max_attempts``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import secrets
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from update_server.config import ServerConfig
from update_server.db import Database, utcnow
from update_server.errors import ConfigError
from update_server.webhooks.models import DELIVERED, FAILED, PENDING, WebhookDelivery

log = logging.getLogger("update_server.webhooks")

EVENTS = ("alert.opened", "alert.resolved", "rollout.paused", "rollout.completed",
          "rollout.aborted")
BACKOFF_BASE_S = 30
BACKOFF_MAX_S = 3600
CLAIM_S = 60
TIMEOUT_S = 10.0
HEADER_SIGNATURE = "X-Edgepkg-Webhook-Signature"
HEADER_TIMESTAMP = "X-Edgepkg-Webhook-Timestamp"
HEADER_ID = "X-Edgepkg-Webhook-Id"


@dataclass(frozen=True)
class Endpoint:
    url: str
    secret: str


def endpoints(cfg: ServerConfig) -> list[Endpoint]:
    """The configured endpoints (``webhooks``: a JSON list of {"url", "secret"})."""
    if not cfg.webhooks.strip():
        return []
    try:
        raw = json.loads(cfg.webhooks)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"webhooks is not valid JSON: {exc}") from None
    if not isinstance(raw, list):
        raise ConfigError('webhooks must be a JSON list of {"url": ..., "secret": ...}')
    out = []
    for i, e in enumerate(raw):
        if not isinstance(e, dict) or set(e) != {"url", "secret"}:
            raise ConfigError(f'webhooks[{i}] must be {{"url": ..., "secret": ...}}')
        url, secret = e["url"], e["secret"]
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise ConfigError(f"webhooks[{i}].url must be an http(s) URL")
        if not isinstance(secret, str) or len(secret) < 16:
            raise ConfigError(f"webhooks[{i}].secret must be at least 16 characters")
        out.append(Endpoint(url, secret))
    return out


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiver does (tests and docs use it)."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def enqueue(
    session: Session, cfg: ServerConfig, event: str, data: Mapping[str, Any], now: dt.datetime
) -> int:
    """Queue ``event`` for every endpoint in the caller's transaction; return how many."""
    if event not in EVENTS:
        raise ValueError(f"unknown webhook event {event!r}")
    targets = endpoints(cfg)
    if not targets:
        return 0
    event_id = "wh-" + secrets.token_hex(8)
    body = json.dumps({"id": event_id, "event": event, "time": now.isoformat(),
                       "data": dict(data)}, sort_keys=True, default=str)
    for e in targets:
        session.add(WebhookDelivery(event_id=event_id, event=event, url=e.url, body=body,
                                    status=PENDING, attempts=0, next_attempt_at=now,
                                    created_at=now))
    return len(targets)


Sender = Callable[[str, bytes, Mapping[str, str]], int]
"""POST ``body`` to ``url`` with ``headers``; return the HTTP status (raise OSError on failure)."""


def http_post(url: str, body: bytes, headers: Mapping[str, str]) -> int:
    req = urllib.request.Request(url, data=body, method="POST", headers=dict(headers))
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def backoff(attempts: int) -> dt.timedelta:
    return dt.timedelta(seconds=min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** max(0, attempts - 1)))


def deliver_due(
    db: Database, cfg: ServerConfig, now: dt.datetime, *, send: Sender = http_post,
    limit: int = 100,
) -> int:
    """Try every due delivery once; return how many were delivered now."""
    secrets_by_url = {e.url: e.secret for e in endpoints(cfg)}
    with db.session() as s:
        due = list(s.execute(
            select(WebhookDelivery.id, WebhookDelivery.attempts)
            .where(WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= now)
            .order_by(WebhookDelivery.next_attempt_at).limit(limit)
        ).all())
    delivered = 0
    for row_id, attempts in due:
        with db.session() as s:
            # claim: only the process whose UPDATE matched sends this attempt
            claimed = s.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == row_id, WebhookDelivery.status == PENDING,
                       WebhookDelivery.attempts == attempts)
                .values(attempts=attempts + 1,
                        next_attempt_at=now + dt.timedelta(seconds=CLAIM_S))
            ).rowcount  # type: ignore[attr-defined]
            if claimed != 1:
                continue
            row = s.get(WebhookDelivery, row_id)
            assert row is not None
            url, body, event_id = row.url, row.body.encode(), row.event_id
        secret = secrets_by_url.get(url)
        code: int | None = None
        error: str | None = None
        if secret is None:
            error = "endpoint no longer configured"
        else:
            ts = str(int(now.timestamp()))
            headers = {"Content-Type": "application/json", HEADER_TIMESTAMP: ts,
                       HEADER_SIGNATURE: sign(secret, ts, body), HEADER_ID: event_id}
            try:
                code = send(url, body, headers)
            except OSError as exc:
                error = f"{type(exc).__name__}: {exc}"[:500]
        ok = code is not None and 200 <= code < 300
        done_trying = attempts + 1 >= cfg.webhook_max_attempts or secret is None
        with db.session() as s:
            values: dict[str, Any] = {"last_status_code": code, "last_error": error}
            if ok:
                values.update(status=DELIVERED, delivered_at=now, last_error=None)
                delivered += 1
            elif done_trying:
                values.update(status=FAILED)
            else:
                values.update(next_attempt_at=now + backoff(attempts + 1))
                if error is None:
                    values["last_error"] = f"HTTP {code}"
            s.execute(update(WebhookDelivery).where(WebhookDelivery.id == row_id)
                      .values(**values))
        if not ok:
            log.warning("webhook %s to %s failed (attempt %d): %s", event_id, url,
                        attempts + 1, error or f"HTTP {code}")
    return delivered


def delivery_json(d: WebhookDelivery) -> dict[str, Any]:
    return {
        "id": d.id, "event_id": d.event_id, "event": d.event, "url": d.url,
        "status": d.status, "attempts": d.attempts,
        "next_attempt_at": d.next_attempt_at.isoformat() if d.status == PENDING else None,
        "last_status_code": d.last_status_code, "last_error": d.last_error,
        "created_at": d.created_at.isoformat(),
        "delivered_at": d.delivered_at.isoformat() if d.delivered_at else None,
    }


class Worker:
    """A daemon thread delivering due webhooks every ``period_s`` (one per server process)."""

    def __init__(self, db: Database, cfg: ServerConfig, *, period_s: float = 5.0,
                 clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.db, self.cfg, self.period_s, self.clock = db, cfg, period_s, clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgepkg-webhooks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=TIMEOUT_S + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                deliver_due(self.db, self.cfg, self.clock())
            except Exception:  # keep the worker alive; the next round retries
                log.exception("webhook delivery round failed")
