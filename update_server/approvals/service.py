"""Four-eyes approvals: who needs one, who may give it, and starting the rollout after it.

A model needs approval when ``approval_required`` (config) names it or is ``*``. Such a
rollout is created ``awaiting_approval``; another person with the ``release`` role approves it
(:func:`approve`), which starts it. People are compared as *principals* (:func:`principal`):
an API token counts as the user who created it.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import Session

from update_server.approvals.models import RolloutApproval
from update_server.errors import ConflictError, ForbiddenError
from update_server.rollouts import engine as eng, service as rollouts
from update_server.rollouts.models import Rollout


def required_for(model: str, rule: str) -> bool:
    """Whether ``rule`` (``"*"`` or comma-separated model names) covers ``model``."""
    names = {n.strip() for n in rule.split(",") if n.strip()}
    return "*" in names or model in names


def request_approval(session: Session, r: Rollout, requested_by: str, now: dt.datetime) -> None:
    session.add(RolloutApproval(rollout_id=r.id, requested_by=requested_by, requested_at=now))
    session.flush()


def approval_of(session: Session, rollout_id: str) -> RolloutApproval | None:
    return session.get(RolloutApproval, rollout_id) if len(rollout_id) <= 40 else None


def approve(session: Session, rollout_id: str, approver: str, now: dt.datetime) -> Rollout:
    """Approve and start the rollout; 403 for its own creator, 409 when nothing awaits."""
    r = rollouts.get_rollout(session, rollout_id)
    row = approval_of(session, rollout_id)
    if r.status != eng.AWAITING_APPROVAL or row is None or row.approved_by is not None:
        raise ConflictError(
            f"rollout {rollout_id} is {r.status}, not awaiting approval", code="not_awaiting"
        )
    if row.requested_by == approver:
        raise ForbiddenError(
            f"{approver} created rollout {rollout_id}: another person with the release role "
            "must approve it (four-eyes rule)",
            code="self_approval",
        )
    rollouts.start_approved(session, r, now)
    row.approved_by, row.approved_at = approver, now
    session.flush()
    return r
