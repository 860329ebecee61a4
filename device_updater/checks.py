"""The refusals the agent applies to an offered update, apart from the I/O that feeds them.

Each check takes plain values (signed TUF ``custom`` data, a verified bundle manifest, the
running model's summary) and raises :class:`UpdateRefusedError` (or the delta's
:class:`DeltaUnusableError`) with a reason a person can act on; none returns a bool.
Versions are compared with the contract's one SemVer parser (:mod:`edgepkg.protocol`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from device_updater.errors import DeltaUnusableError, UpdateRefusedError
from device_updater.facts import unmet_requirements
from device_updater.slots import ModelSummary, SlotInfo
from device_updater.state import UpdateState
from edgepkg.bundle import BundleInfo
from edgepkg.errors import NotARecipientError
from edgepkg.protocol import InvalidVersionError, Version, is_newer


def check_version_str(version: str) -> None:
    try:
        Version.parse(version)
    except InvalidVersionError as exc:
        raise UpdateRefusedError(f"assigned version {version!r} is not a semantic version") from exc


def is_downgrade(new: str, running: str) -> bool:
    """``new`` sorts below ``running`` (raises :class:`UpdateRefusedError` on a bad version)."""
    try:
        return is_newer(running, new)
    except InvalidVersionError as exc:
        raise UpdateRefusedError(f"bad version: {exc}") from exc


def refuse_downgrade(new: str, running: str, allowed: bool) -> None:
    if is_downgrade(new, running) and not allowed:
        raise UpdateRefusedError(
            f"downgrade from {running} to {new} refused: the assignment does not allow it")


def target_summary(custom: Mapping[str, Any] | None, st: UpdateState) -> ModelSummary:
    """The signed summary of the full release target ``st.target`` (its TUF ``custom``)."""
    edgepkg = (custom or {}).get("edgepkg")
    if not isinstance(edgepkg, dict) or edgepkg.get("kind") != "full":
        raise UpdateRefusedError(f"target {st.target} is not a full model release")
    summary = ModelSummary.from_mapping(edgepkg)
    if summary.name != st.model or summary.version != st.version:
        raise UpdateRefusedError(
            f"target {st.target} is {summary.name} {summary.version} per the signed metadata, "
            f"not the assigned {st.model} {st.version}")
    return summary


def delta_matches(custom: Mapping[str, Any] | None, st: UpdateState, active: SlotInfo) -> bool:
    """The delta target's signed ``custom`` says it rebuilds ``st.version`` from ``active``."""
    edgepkg = (custom or {}).get("edgepkg") or {}
    base = edgepkg.get("delta") or {}
    return bool(edgepkg.get("kind") == "delta" and edgepkg.get("version") == st.version
                and base.get("base_sha256") == active.sha256)


def check_bundle(info: BundleInfo, st: UpdateState, active: SlotInfo | None, *, delta: bool,
                 facts: Mapping[str, Any], my_key_id: str,
                 granted: bool = False) -> ModelSummary:
    """Check a signature-verified bundle against the assignment, the signed TUF summary, the
    running model, the device facts and the recipients (``granted``: the assignment carries a
    key grant for this bundle, so the device need not be a direct recipient); return the
    candidate summary."""
    m = info.manifest
    if m.name != st.model or m.version != st.version:
        raise UpdateRefusedError(
            f"bundle is {m.name} {m.version}, assigned was {st.model} {st.version}")
    summary = ModelSummary.from_mapping(m.summary())
    if st.candidate is not None and (summary.sha256 != st.candidate.sha256
                                     or summary.length != st.candidate.length):
        raise UpdateRefusedError("bundle model hash differs from the signed TUF metadata")
    if delta:
        if not m.delta or active is None or m.delta.get("base_sha256") != active.sha256:
            raise DeltaUnusableError("delta is not based on the running model")
    elif m.delta:
        raise UpdateRefusedError("the full release target holds a delta bundle")
    if active is not None:
        refuse_downgrade(m.version, active.version, st.allow_downgrade)
    unmet = unmet_requirements(m.requirements, dict(facts))
    if unmet:
        raise UpdateRefusedError("requirements not met: " + "; ".join(unmet))
    if info.recipient_key_ids and my_key_id not in info.recipient_key_ids and not granted:
        raise NotARecipientError(
            f"bundle is not encrypted for this device (key id {my_key_id[:16]}...)")
    return summary
