"""Chart series from telemetry rows: pure shaping, no I/O (the queries live in
:mod:`update_server.dashboard.telemetry_rows`).

A series is what the dashboard's chart script draws: one shared time axis ``t`` (UNIX seconds,
bucket starts) and one list per metric, ``None`` where a bucket has no data for that metric so
the line shows a gap instead of a made-up zero. Buckets aggregate the way an operator reads the
number: latency p95 is the median of the devices' interval p95s (one slow device does not
move it, a slow cohort does), throughput is inferences per second summed over devices, error
rate and field accuracy are pooled counts, drift and confidence are means, temperature is the
hottest device.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

METRICS: tuple[tuple[str, str], ...] = (
    ("p95_ms", "Latency p95 (ms)"),
    ("throughput", "Throughput (inferences/s)"),
    ("error_rate", "Error rate"),
    ("drift", "Drift score (PSI)"),
    ("accuracy", "Field accuracy"),
    ("confidence", "Confidence (mean)"),
    ("temp_c", "Temperature (°C)"),
)
"""Metric keys of a series, in the order the pages draw them, with their chart titles."""

MAX_BUCKETS = 500
"""A series never has more points than this: the bucket widens instead (bounded responses)."""


@dataclass(frozen=True, slots=True)
class Point:
    """One model's interval on one device (a ``telemetry_intervals`` row plus its report's
    hardware numbers)."""

    device_id: str
    model: str
    version: str
    start: dt.datetime
    end: dt.datetime
    inferences: int = 0
    errors: int = 0
    p95_ms: float | None = None
    drift: float | None = None
    confidence: float | None = None
    labelled: int = 0
    correct: int = 0
    temp_c: float | None = None


def bucket_seconds(since: dt.datetime, until: dt.datetime, wanted_s: int) -> int:
    """The bucket width for a window: ``wanted_s`` unless that gives more than MAX_BUCKETS."""
    span = max(1, int((until - since).total_seconds()))
    return max(wanted_s, 1, -(-span // MAX_BUCKETS))


def _ts(t: dt.datetime) -> float:
    return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).timestamp()


@dataclass
class _Acc:
    p95: list[float]
    drift: list[float]
    conf: list[float]
    temp: list[float]
    rate: float = 0.0
    inferences: int = 0
    errors: int = 0
    labelled: int = 0
    correct: int = 0


def series(points: Iterable[Point], bucket_s: int) -> dict[str, Any]:
    """Bucket ``points`` by interval end into a chart series (see the module docstring)."""
    acc: dict[int, _Acc] = defaultdict(lambda: _Acc([], [], [], []))
    devices: set[str] = set()
    for p in points:
        devices.add(p.device_id)
        a = acc[int(_ts(p.end)) // bucket_s * bucket_s]
        seconds = max(1.0, (p.end - p.start).total_seconds())
        a.rate += p.inferences / seconds
        a.inferences += p.inferences
        a.errors += p.errors
        a.labelled += p.labelled
        a.correct += p.correct
        if p.p95_ms is not None:
            a.p95.append(p.p95_ms)
        if p.drift is not None:
            a.drift.append(p.drift)
        if p.confidence is not None:
            a.conf.append(p.confidence)
        if p.temp_c is not None:
            a.temp.append(p.temp_c)
    keys = sorted(acc)
    out: dict[str, Any] = {"t": keys, "bucket_s": bucket_s, "devices": len(devices)}
    cols: dict[str, list[float | None]] = {k: [] for k, _ in METRICS}
    for k in keys:
        a = acc[k]
        # Several models of one device in one bucket each add their own throughput: the sum is
        # what the device's accelerator did.
        cols["p95_ms"].append(statistics.median(a.p95) if a.p95 else None)
        cols["throughput"].append(round(a.rate, 6))
        cols["error_rate"].append(a.errors / a.inferences if a.inferences else None)
        cols["drift"].append(statistics.fmean(a.drift) if a.drift else None)
        cols["accuracy"].append(a.correct / a.labelled if a.labelled else None)
        cols["confidence"].append(statistics.fmean(a.conf) if a.conf else None)
        cols["temp_c"].append(max(a.temp) if a.temp else None)
    out.update(cols)
    return out


def cohort_key(model: str, version: str, tag: str) -> str:
    return f"{model} {version} [{tag}]" if tag != "*" else f"{model} {version}"


def cohorts(points: Iterable[Point], tags_of: dict[str, list[str]]) -> dict[tuple[str, str, str],
                                                                           list[Point]]:
    """Group points into cohorts (model × version × tag); ``*`` is every device of a version,
    so the fleet page shows the version line and its tagged slices."""
    out: dict[tuple[str, str, str], list[Point]] = defaultdict(list)
    for p in points:
        out[(p.model, p.version, "*")].append(p)
        for tag in tags_of.get(p.device_id, ()):
            out[(p.model, p.version, tag)].append(p)
    return dict(out)
