"""Which devices a rollout stage admits: a hash rank of (rollout id, device id), the same on
every node and every run, so canaries are stable without storing a list (pure)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable


def stage_of(device_id: str, rollout_id: str) -> float:
    """Where the device falls in ``[0, 1)`` for this rollout: same on every node, every run."""
    digest = hashlib.sha256(f"edgepkg-rollout\n{rollout_id}\n{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def stage_cutoff(device_ids: Iterable[str], rollout_id: str, percent: float) -> float:
    """The cutoff admitting exactly ``ceil(N * percent / 100)`` of ``device_ids``.

    100 % gives 1.0 (every device, also the ones enrolled later); 0 devices give a cutoff that
    admits a share ``percent`` of later devices on average.
    """
    if percent >= 100:
        return 1.0
    hashes = sorted({stage_of(d, rollout_id) for d in set(device_ids)})
    n = len(hashes)
    if n == 0:
        return percent / 100.0
    k = math.ceil(n * percent / 100.0 - 1e-9)
    if k <= 0:
        return 0.0
    if k >= n:
        return 1.0
    return (hashes[k - 1] + hashes[k]) / 2.0


def in_stage(device_id: str, rollout_id: str, cutoff: float) -> bool:
    return stage_of(device_id, rollout_id) < cutoff


def stage_members(device_ids: Iterable[str], rollout_id: str, cutoff: float) -> list[str]:
    return sorted(d for d in set(device_ids) if in_stage(d, rollout_id, cutoff))
