"""Parsing an operator's rollout request into a :class:`~.engine.RolloutSpec` (pure).

Every failure is a :class:`~.engine.RolloutSpecError` (400, code ``bad_rollout``) naming the
field; versions are checked with the one semantic-version parser of :mod:`edgepkg.protocol`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from edgepkg.protocol import InvalidVersionError, Version
from update_server.rollouts.engine import RolloutSpec, RolloutSpecError, Selector, Stage

MAX_STAGES = 20
MAX_TAGS = 32
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/=-]{0,99}$")
_GROUP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")


def _num(obj: Mapping[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    v = obj.get(key, default)
    # math.isfinite(10**400) raises OverflowError: only floats can be non-finite, and a huge int
    # fails the range check below (int/float comparison is exact)
    if (isinstance(v, bool) or not isinstance(v, int | float)
            or (isinstance(v, float) and not math.isfinite(v))):
        raise RolloutSpecError(f"{key} must be a number")
    if not lo <= v <= hi:
        raise RolloutSpecError(f"{key} must be between {lo:g} and {hi:g}")
    return float(v)


def parse_selector(obj: Any) -> Selector:
    if obj is None:
        return Selector()
    if not isinstance(obj, dict) or set(obj) - {"tags", "groups"}:
        raise RolloutSpecError('selector must be {"tags": [...], "groups": [...]}')
    tags: set[str] = set()
    for key, prefix in (("tags", ""), ("groups", "group:")):
        values = obj.get(key, [])
        if not isinstance(values, list) or len(values) > MAX_TAGS:
            raise RolloutSpecError(f"selector.{key} must be a list of at most {MAX_TAGS} strings")
        for t in values:
            if not isinstance(t, str) or not _TAG_RE.match(t):
                raise RolloutSpecError(f"selector.{key} has an invalid entry: {t!r}")
            tags.add(prefix + t if prefix and not t.startswith(prefix) else t)
    return Selector(frozenset(tags))


def parse_stages(obj: Any) -> tuple[Stage, ...]:
    if obj is None:
        obj = [
            {"percent": 5, "min_soak_seconds": 3600},
            {"percent": 25, "min_soak_seconds": 3600},
            {"percent": 100, "min_soak_seconds": 0},
        ]
    if not isinstance(obj, list) or not 1 <= len(obj) <= MAX_STAGES:
        raise RolloutSpecError(f"stages must be a list of 1 to {MAX_STAGES} stages")
    stages: list[Stage] = []
    for i, s in enumerate(obj):
        if (
            not isinstance(s, dict)
            or set(s) - {"percent", "min_soak_seconds"}
            or "percent" not in s
        ):
            raise RolloutSpecError(f"stage {i} must be {{percent, min_soak_seconds}}")
        pct = _num(s, "percent", 0, 0, 100)
        if pct <= 0:
            raise RolloutSpecError(f"stage {i}: percent must be above 0")
        soak = _num(s, "min_soak_seconds", 0, 0, 90 * 86400)
        if stages and pct <= stages[-1].percent:
            raise RolloutSpecError("stage percentages must increase")
        stages.append(Stage(pct, int(soak)))
    if stages[-1].percent != 100:
        raise RolloutSpecError("the last stage must be 100 percent")
    return tuple(stages)


def parse_spec(rollout_id: str, obj: Any) -> RolloutSpec:
    """Validate an operator's rollout request (the JSON body of ``POST /api/v1/rollouts``)."""
    if not isinstance(obj, dict):
        raise RolloutSpecError("rollout must be a JSON object")
    allowed = {
        "model",
        "version",
        "selector",
        "stages",
        "success_share",
        "failure_share",
        "min_devices",
        "on_failure",
        "group",
    }
    unknown = set(obj) - allowed
    if unknown:
        raise RolloutSpecError(f"unknown fields: {', '.join(sorted(unknown))}")
    model, version = obj.get("model"), obj.get("version")
    if not isinstance(model, str) or not _NAME_RE.match(model):
        raise RolloutSpecError("model must be a model name")
    if not isinstance(version, str) or len(version) > 100:
        raise RolloutSpecError("version must be a semantic version string")
    try:
        Version.parse(version)
    except InvalidVersionError:
        raise RolloutSpecError(f"not a semantic version: {version!r}") from None
    on_failure = obj.get("on_failure", "pause")
    if on_failure not in ("pause", "abort"):
        raise RolloutSpecError('on_failure must be "pause" or "abort"')
    min_devices = obj.get("min_devices", 3)
    if (
        isinstance(min_devices, bool)
        or not isinstance(min_devices, int)
        or not 1 <= min_devices <= 1_000_000
    ):
        raise RolloutSpecError("min_devices must be an integer from 1")
    failure_share = _num(obj, "failure_share", 0.2, 0, 1)
    if failure_share <= 0:
        raise RolloutSpecError("failure_share must be above 0")
    selector = parse_selector(obj.get("selector"))
    group = obj.get("group")
    if group is not None:
        if not isinstance(group, str) or not _GROUP_RE.match(group):
            raise RolloutSpecError("group must be the name of a saved group")
        selector = Selector(selector.tags, group)
    return RolloutSpec(
        rollout_id=rollout_id,
        model=model,
        version=version,
        selector=selector,
        stages=parse_stages(obj.get("stages")),
        success_share=_num(obj, "success_share", 0.95, 0, 1),
        failure_share=failure_share,
        min_devices=min_devices,
        on_failure=on_failure,
    )
