"""The Flask side of the audit log: record an action of the current request's operator."""

from __future__ import annotations

from typing import Any

from flask import request

from update_server.audit.models import AuditEntry
from update_server.audit.service import record
from update_server.db import get_session
from update_server.operators.auth import current_operator
from update_server.services import services


def record_request(
    action: str, target: str | None = None, details: dict[str, Any] | None = None,
    *, actor: Any = None,
) -> AuditEntry:
    """Append an entry for this request (operator, address, the app's clock); caller commits."""
    who = actor if actor is not None else current_operator()
    return record(get_session(), who, action, target, details, request.remote_addr,
                  now=services().now())
