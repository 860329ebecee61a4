"""``edge-updater report-health --record JSON`` / ``--records FILE``: the same records as the
telemetry socket takes, sent to the running daemon's socket from a shell script or an app that
prefers a command to a socket. Records are checked here first, so a typo is an error the caller
sees (exit 1) instead of a silently dropped line.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

from device_updater.errors import Error
from device_updater.telemetry.client import TelemetryClient
from device_updater.telemetry.records import MAX_LINE_BYTES, RecordError, parse_record
from device_updater.telemetry.settings import TelemetryConfig

MAX_RECORDS = 10_000


class TelemetryNotDeliveredError(Error):
    """The daemon's telemetry socket did not take the records (is ``edge-updater run`` up?)."""


def _lines(records: Iterable[str], path: str | None) -> list[str]:
    out = [r for r in records if r.strip()]
    if path is not None:
        fh = sys.stdin if path == "-" else open(Path(path), encoding="utf-8")  # noqa: SIM115
        try:
            for line in fh:
                if line.strip():
                    out.append(line)
                if len(out) > MAX_RECORDS:
                    raise RecordError(f"at most {MAX_RECORDS} records per call")
        finally:
            if fh is not sys.stdin:
                fh.close()
    return out


def send_records(records: Iterable[str], path: str | None, config: TelemetryConfig,
                 runtime_dir: Path) -> int:
    """Validate and send the records; return how many were sent."""
    lines = _lines(records, path)
    for i, line in enumerate(lines, 1):
        try:
            parse_record(line.strip().encode()[:MAX_LINE_BYTES + 1])
        except RecordError as exc:
            raise RecordError(f"record {i}: {exc}") from None
    if not lines:
        return 0
    sock = config.socket or runtime_dir / "telemetry.sock"
    client = TelemetryClient(str(sock), max_buffer=len(lines), timeout_s=2.0)
    for line in lines:
        client.send_line(line.strip().encode() + b"\n")  # validated above: sent verbatim
    delivered = client.flush()
    client.close()
    if not delivered:
        raise TelemetryNotDeliveredError(
            f"cannot deliver {len(lines)} telemetry record(s) to {sock}: is the daemon "
            "(edge-updater run) running with [telemetry] enabled, and may this user write "
            "to the socket (mode 0660)?")
    return len(lines)
