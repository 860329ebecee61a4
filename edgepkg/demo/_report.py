"""What the demo found: per-device and per-rollout results, the expectations checked, and the
printed summary. Pure: built from plain values gathered by the orchestrator."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class DeviceResult:
    name: str
    device_id: str
    keystore: str
    version: str | None  # active slot
    phase: str | None
    v2_route: str | None  # "delta" | "full" | None
    v2_bytes: int | None  # bytes downloaded for v2
    v2_full_size: int | None  # size of the full v2 bundle
    downloaded_bytes: int  # all downloads, all versions
    full_sizes: int  # what full bundles of the installed versions would have cost
    metric: float | None  # v2's top-1 accuracy on this device's holdout
    v3: str  # "rejected: reason" | "not offered" | ...
    note: str = ""  # e.g. how a device enrolled after publishing got its key


@dataclass
class RolloutResult:
    label: str
    rollout_id: str
    version: str
    stages: list[float]
    status: str
    stages_seen: list[int]
    reason: str | None
    totals: dict[str, int]


@dataclass
class Check:
    what: str
    ok: bool
    detail: str = ""


@dataclass
class DemoReport:
    workspace: str
    key_custody: str
    dashboard_url: str
    devices: list[DeviceResult] = field(default_factory=list)
    rollouts: list[RolloutResult] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    screenshot: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.checks) and all(c.ok for c in self.checks)

    def check(self, what: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(what, bool(ok), detail))
        return bool(ok)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        return out


def _kb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:.1f} KB"


def format_report(r: DemoReport) -> str:
    lines: list[str] = []
    add = lines.append
    add("")
    add("== Models (trained with numpy, exported to ONNX) ==")
    for version, m in r.models.items():
        add(
            f"  {version}: {m['role']:<28} pooled holdout accuracy {m['accuracy']:.3f}   "
            f"bundle {_kb(m.get('bundle_size'))}"
            + (f"   deltas: {m['deltas']}" if m.get("deltas") else "")
        )
    add("")
    add("== Devices ==")
    add(
        f"  {'device':<10} {'keys':<9} {'active':<7} {'last step':<10} {'v2 via':<6} "
        f"{'v2 bytes / full':<20} {'v2 acc':<7} v3"
    )
    for d in r.devices:
        v2 = f"{_kb(d.v2_bytes)} / {_kb(d.v2_full_size)}"
        acc = "-" if d.metric is None else f"{d.metric:.3f}"
        add(
            f"  {d.name:<10} {d.keystore:<9} {d.version or '-':<7} {d.phase or '-':<10} "
            f"{d.v2_route or '-':<6} {v2:<20} {acc:<7} {d.v3}"
            + (f"  [{d.note}]" if d.note else "")
        )
    total = sum(d.downloaded_bytes for d in r.devices)
    full = sum(d.full_sizes for d in r.devices)
    if full:
        add(
            f"  fleet downloaded {_kb(total)} in all, vs {_kb(full)} as full bundles "
            f"({100 * total / full:.0f} %)"
        )
    add("")
    add("== Rollouts ==")
    for ro in r.rollouts:
        stages = " -> ".join(f"{p:g}%" for p in ro.stages)
        seen = ", ".join(str(s) for s in ro.stages_seen)
        add(
            f"  {ro.label:<22} {ro.version:<6} stages {stages:<14} reached stage(s) {seen:<5} "
            f"{ro.status.upper()}  committed {ro.totals.get('committed', 0)}, "
            f"failed {ro.totals.get('failed', 0)}"
        )
        if ro.reason:
            add(f"  {'':<22} reason: {ro.reason}")
    add("")
    add("== Checks ==")
    for c in r.checks:
        add(f"  [{'ok' if c.ok else 'FAILED'}] {c.what}" + (f" ({c.detail})" if c.detail else ""))
    if r.error:
        add(f"  [FAILED] the demo stopped: {r.error}")
    add("")
    if r.timings:
        add("Timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in r.timings.items()))
    add(f"Keys: {r.key_custody}")
    add(f"Workspace: {r.workspace}")
    add(f"Dashboard: {r.dashboard_url}")
    if r.screenshot:
        add(f"Screenshot: {r.screenshot}")
    add("RESULT: " + ("every expectation held" if r.ok else "FAILED (see above)"))
    return "\n".join(lines)
