"""Dynamic groups over the database: save, list, preview, and match devices for rollouts.

Membership is computed, never stored: :func:`matching_ids` evaluates the selector on every
device's current tags and facts, and :func:`selector_admits` answers the same question for one
device at check-in. A rollout names its group (``"group": "berlin-gpus"``) and the group is
looked up when the rollout is evaluated, so devices enrolled after the rollout started join it.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from update_server.devices.models import DEVICE_ENABLED, Device
from update_server.errors import BadRequestError, ConflictError, NotFoundError
from update_server.groups import selector as sel
from update_server.groups.models import Group

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
MAX_DESCRIPTION = 1000
PREVIEW_SAMPLE = 20


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise BadRequestError(
            "a group name is 1-100 letters, digits, '_', '.', '-' (starting with a letter or "
            "digit)", field="name",
        )
    return name


def group_json(g: Group, *, count: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": g.name,
        "selector": g.selector,
        "description": g.description,
        "created_by": g.created_by,
        "created_at": g.created_at.isoformat(),
        "updated_at": g.updated_at.isoformat(),
    }
    if count is not None:
        out["devices"] = count
    return out


def list_groups(session: Session) -> list[Group]:
    return list(session.scalars(select(Group).order_by(Group.name)))


def get_group(session: Session, name: str) -> Group:
    g = session.get(Group, name) if isinstance(name, str) and len(name) <= 100 else None
    if g is None:
        raise NotFoundError(f"no group {name[:100]!r}")
    return g


def matching_ids(
    session: Session, node: sel.Node, *, enabled_only: bool = False
) -> list[str]:
    """Ids of the devices the parsed selector matches (now), in id order."""
    q = select(Device.id, Device.tags, Device.facts, Device.status).order_by(Device.id)
    out = []
    for dev_id, tags, facts, status in session.execute(q):
        if enabled_only and status != DEVICE_ENABLED:
            continue
        if sel.evaluate(node, tags or (), facts if isinstance(facts, dict) else {}):
            out.append(dev_id)
    return out


def preview(session: Session, text: str) -> dict[str, Any]:
    """What saving ``text`` would select: its canonical form, a count and a sample of names."""
    node = sel.parse(text)
    ids = matching_ids(session, node)
    sample = ids[:PREVIEW_SAMPLE]
    names = dict(session.execute(select(Device.id, Device.name).where(Device.id.in_(sample))).all())
    return {
        "selector": text,
        "canonical": sel.render(node),
        "count": len(ids),
        "sample": [{"device_id": i, "name": names.get(i)} for i in sample],
    }


def save_group(
    session: Session,
    name: Any,
    text: Any,
    *,
    description: Any = None,
    actor: str | None,
    now: dt.datetime,
    replace: bool = False,
) -> Group:
    """Create (or with ``replace`` update) a group after parsing its selector."""
    check_name(name)
    sel.parse(text)
    if description is not None and (
        not isinstance(description, str) or len(description) > MAX_DESCRIPTION
    ):
        raise BadRequestError(
            f"description must be a string of at most {MAX_DESCRIPTION} characters",
            field="description",
        )
    g = session.get(Group, name)
    if g is not None and not replace:
        raise ConflictError(f"a group named {name!r} already exists; pick another name or "
                            "update it (PUT /api/v1/groups/<name>)", code="group_exists")
    if g is None:
        if replace:
            raise NotFoundError(f"no group {name!r}")
        g = Group(name=name, selector=text, description=description or None,
                  created_by=actor, created_at=now, updated_at=now)
        session.add(g)
    else:
        g.selector, g.description, g.updated_at = text, description or None, now
    return g


# --- rollouts ----------------------------------------------------------------------------------


def group_node(session: Session, name: str) -> sel.Node | None:
    """The parsed selector of group ``name``; None when it was deleted (it then matches none)."""
    g = session.get(Group, name)
    if g is None:
        return None
    try:
        return sel.parse(g.selector)
    except sel.SelectorError:
        return None  # stored before a grammar change: select nothing rather than everything


def selector_admits(
    session: Session,
    selector_json: Mapping[str, Any] | None,
    tags: Iterable[str],
    facts: Mapping[str, Any] | None,
    cache: dict[str, sel.Node | None] | None = None,
) -> bool:
    """Does a rollout's stored selector (``{"tags": [...], "group": name?}``) admit a device?

    The tags must all be present (today's selector) and, when the rollout names a group, the
    group's selector must match the device's tags and facts as they are now.
    """
    sj = selector_json or {}
    tagset = set(tags)
    if not set(sj.get("tags", [])).issubset(tagset):
        return False
    name = sj.get("group")
    if not name:
        return True
    if cache is not None and name in cache:
        node = cache[name]
    else:
        node = group_node(session, name)
        if cache is not None:
            cache[name] = node
    return node is not None and sel.evaluate(node, tagset, facts or {})
