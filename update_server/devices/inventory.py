"""Device inventory for operators: search and filters, and bulk tag / untag / disable / enable.

One filter implementation serves the API (``GET /api/v1/devices?q=&tag=&fact=&...``) and the
dashboard's device list, so both find the same devices. ``POST /api/v1/devices/bulk`` applies
one action to a list of device ids or to every device a selector (the dynamic-group language)
matches.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from update_server import _validate as v
from update_server.alerts.api import SILENT_INTERVALS
from update_server.db import get_session
from update_server.devices.models import DEVICE_DISABLED, DEVICE_ENABLED, Device, DeviceModel
from update_server.errors import BadRequestError
from update_server.groups import selector as sel
from update_server.groups.service import matching_ids
from update_server.operators.auth import require_operator
from update_server.services import services

bp = Blueprint("inventory_api", __name__, url_prefix="/api/v1")

BULK_ACTIONS = ("tag", "untag", "disable", "enable")
MAX_BULK = 10_000
MAX_TAGS_PER_DEVICE = 64
SEEN_VALUES = ("online", "dark", "never")


@dataclass(frozen=True)
class DeviceFilter:
    """What an operator searches for; every field is optional and they combine with AND."""

    q: str | None = None  # substring of name or id (case-insensitive)
    tag: str | None = None
    fact: str | None = None  # "key=value" (or any comparison of the selector language)
    model: str | None = None
    version: str | None = None  # with model, or any model
    status: str | None = None  # enabled / disabled
    seen: str | None = None  # online / dark (seen before, silent now) / never
    selector: str | None = None  # a full selector expression

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> DeviceFilter:
        def get(key: str, limit: int = 200) -> str | None:
            value = (args.get(key) or "").strip()
            if len(value) > limit:
                raise BadRequestError(f"{key} is longer than {limit} characters", field=key)
            return value or None

        f = cls(
            q=get("q"), tag=get("tag"), fact=get("fact"), model=get("model"),
            version=get("version"), status=get("status"), seen=get("seen"),
            selector=get("selector", sel.MAX_LENGTH),
        )
        if f.status not in (None, DEVICE_ENABLED, DEVICE_DISABLED):
            raise BadRequestError("status must be 'enabled' or 'disabled'", field="status")
        if f.seen not in (None, *SEEN_VALUES):
            raise BadRequestError("seen must be 'online', 'dark' or 'never'", field="seen")
        if f.fact is not None:
            node = sel.parse(f.fact)
            if not isinstance(node, sel.Compare):
                raise BadRequestError("fact must be one comparison such as platform=linux-aarch64",
                                      field="fact")
        if f.selector is not None:
            sel.parse(f.selector)
        return f


def find_devices(
    session: Session, f: DeviceFilter, *, online_after: dt.datetime, limit: int = 100_000
) -> list[Device]:
    """Devices matching ``f``, most recently seen first."""
    q = select(Device).options(selectinload(Device.models))
    if f.status:
        q = q.where(Device.status == f.status)
    if f.model or f.version:
        sub = select(DeviceModel.device_id)
        if f.model:
            sub = sub.where(DeviceModel.model == f.model)
        if f.version:
            sub = sub.where(DeviceModel.version == f.version)
        q = q.where(Device.id.in_(sub))
    if f.seen == "online":
        q = q.where(Device.last_seen >= online_after)
    elif f.seen == "dark":
        q = q.where(Device.last_seen < online_after)
    elif f.seen == "never":
        q = q.where(Device.last_seen.is_(None))
    q = q.order_by(Device.last_seen.desc().nulls_last(), Device.id)
    fact = sel.parse(f.fact) if f.fact else None
    expr = sel.parse(f.selector) if f.selector else None
    needle = f.q.lower() if f.q else None
    out = []
    # Tags and facts are JSON: filtered here, portably, after the SQL filters narrowed the rows.
    for d in session.scalars(q):
        tags = d.tags or []
        facts = d.facts if isinstance(d.facts, dict) else {}
        if needle and needle not in (d.name or "").lower() and needle not in d.id:
            continue
        if f.tag and f.tag not in tags:
            continue
        if fact is not None and not sel.evaluate(fact, tags, facts):
            continue
        if expr is not None and not sel.evaluate(expr, tags, facts):
            continue
        out.append(d)
        if len(out) >= limit:
            break
    return out


def online_after(now: dt.datetime) -> dt.datetime:
    """Silent for longer than this many poll intervals is "dark" (as the alerts say)."""
    return now - dt.timedelta(seconds=services().config.poll_interval * SILENT_INTERVALS)


def bulk_apply(
    session: Session, action: str, device_ids: list[str], tag: str | None
) -> dict[str, Any]:
    """Apply one action; return what changed. Unknown ids are reported, not fatal."""
    if action not in BULK_ACTIONS:
        raise BadRequestError(f"action must be one of {', '.join(BULK_ACTIONS)}", field="action")
    if action in ("tag", "untag") and not tag:
        raise BadRequestError(f"action {action!r} needs a tag", field="tag")
    if len(device_ids) > MAX_BULK:
        raise BadRequestError(f"at most {MAX_BULK} devices per request", field="device_ids")
    found = {d.id: d for d in session.scalars(select(Device).where(Device.id.in_(device_ids)))}
    changed = []
    for dev_id in device_ids:
        d = found.get(dev_id)
        if d is None:
            continue
        tags = list(d.tags or [])
        if action == "tag" and tag is not None and tag not in tags:
            if len(tags) >= MAX_TAGS_PER_DEVICE:
                raise BadRequestError(
                    f"device {dev_id[:16]} already has {MAX_TAGS_PER_DEVICE} tags", field="tag"
                )
            d.tags = [*tags, tag]  # a new list: the JSON column sees the change
        elif action == "untag" and tag in tags:
            d.tags = [t for t in tags if t != tag]
        elif action == "disable" and d.status != DEVICE_DISABLED:
            d.status = DEVICE_DISABLED
        elif action == "enable" and d.status != DEVICE_ENABLED:
            d.status = DEVICE_ENABLED
        else:
            continue
        changed.append(dev_id)
    return {
        "action": action,
        "tag": tag,
        "matched": len(found),
        "changed": changed,
        "unknown": [i for i in device_ids if i not in found][:100],
    }


@bp.post("/devices/bulk")
@require_operator("release")
def bulk() -> ResponseReturnValue:
    db = get_session()
    body = v.json_body(request)
    unknown = set(body) - {"action", "device_ids", "selector", "tag"}
    if unknown:
        raise BadRequestError(f"unknown fields: {', '.join(sorted(unknown))}")
    action = body.get("action")
    tag = None
    if body.get("tag") is not None:
        tag = v.get_tags({"tags": [body["tag"]]}, "tags", required=True)[0]
    ids = body.get("device_ids")
    text = body.get("selector")
    if (ids is None) == (text is None):
        raise BadRequestError("give either device_ids (a list) or selector (an expression)")
    if ids is not None:
        if not isinstance(ids, list) or not all(isinstance(i, str) and len(i) <= 64 for i in ids):
            raise BadRequestError("device_ids must be a list of device ids", field="device_ids")
        device_ids = list(dict.fromkeys(ids))
    else:
        if not isinstance(text, str):
            raise BadRequestError("selector must be a string", field="selector")
        device_ids = matching_ids(db, sel.parse(text))
    result = bulk_apply(db, str(action), device_ids, tag)
    db.commit()
    return jsonify(result)


_ERR = {"$ref": "#/components/schemas/Error"}
OPENAPI_PATHS: dict[str, Any] = {
    "/api/v1/devices/bulk": {
        "post": {
            "summary": "Tag, untag, disable or enable many devices (by ids or a selector)",
            "security": [{"operatorToken": []}],
            "x-required-role": "release",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object",
                "required": ["action"],
                "additionalProperties": False,
                "properties": {
                    "action": {"type": "string", "enum": list(BULK_ACTIONS)},
                    "device_ids": {"type": "array", "items": {"type": "string"}},
                    "selector": {"type": "string", "description": "group selector expression"},
                    "tag": {"type": "string"},
                },
            }}}},
            "responses": {
                "200": {"description": "what changed: {action, tag, matched, changed, unknown}"},
                **{c: {"description": "error", "content": {"application/json": {"schema": _ERR}}}
                   for c in ("400", "401", "403")},
            },
        }
    },
}
