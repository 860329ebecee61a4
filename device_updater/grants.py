"""Key grants on the device: the data key of a bundle the device is not a direct recipient of,
from the grant the server sent with the assignment (docs/security.md, "Key grants").

The grant travels in the assignment (``edgepkg.protocol.Assignment.key_grants``) and is persisted
with it in the update state, so a restart mid-install still has it. It is opened in the device's
token (ECDH there) by :func:`edgepkg.grants.grant_key_source`, after the bundle's signatures and
whole-file commitment were checked; the device refuses a grant for another device or another
release (:class:`~edgepkg.grants.GrantMismatchError`, the update is rejected with that reason)
and waits for a fresh one when it expired (:class:`~edgepkg.grants.GrantExpiredError`: the next
check-in brings a new grant; see :mod:`device_updater.outcomes`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from edgepkg.bundle import BundleInfo, DataKeySource
from edgepkg.grants import KeyGrant, grant_key_source
from edgepkg.keys import RecipientKey


def grant_source(
    key_grants: Mapping[str, Any],
    target: str,
    info: BundleInfo,
    device_key: RecipientKey,
    now: float,
) -> DataKeySource | None:
    """The data-key source for installing ``target`` (whose verified header is ``info``):
    None when the device is a direct recipient (its own key opens the bundle) or holds no
    grant for it. Raises GrantError when the persisted grant is malformed."""
    device_id = device_key.key_id
    raw = key_grants.get(target)
    if raw is None or device_id in info.recipient_key_ids:
        return None
    grant = KeyGrant.from_json(json.dumps(raw, separators=(",", ":")))
    return grant_key_source(grant, device_key, device_id=device_id,
                            now=dt.datetime.fromtimestamp(now, dt.UTC))
