"""Hardware health the daemon reads itself: temperatures, memory, disk, load and uptime.

Every reader takes the file-system ``root`` (``/`` on a device, a fake tree in tests) and
returns None when the file is missing or unreadable: boards differ (a Raspberry Pi has one
thermal zone, a Jetson names ``CPU-therm`` and ``GPU-therm``, a VM may have none).
"""

from __future__ import annotations

import os
from pathlib import Path

from edgepkg.protocol import HardwareHealth

_MAX = 4096
_CPU_NAMES = ("cpu", "x86_pkg_temp", "soc", "tcpu", "coretemp", "acpitz")
_GPU_NAMES = ("gpu",)


def _read(path: Path) -> str | None:
    try:
        with open(path, "rb") as fh:
            return fh.read(_MAX).decode("ascii", "replace")
    except OSError:
        return None


def _celsius(raw: str | None) -> float | None:
    """sysfs temperatures are millidegrees; some drivers give degrees."""
    try:
        value = float((raw or "").strip())
    except ValueError:
        return None
    return round(value / 1000.0 if abs(value) >= 200 else value, 1)


def thermal_zones(root: Path) -> list[tuple[str, float]]:
    """``(type, °C)`` of every readable thermal zone."""
    base = root / "sys" / "class" / "thermal"
    out = []
    try:
        zones = sorted(base.glob("thermal_zone*"))
    except OSError:
        return []
    for zone in zones:
        temp = _celsius(_read(zone / "temp"))
        if temp is not None:
            out.append(((_read(zone / "type") or "").strip().lower(), temp))
    return out


def temperatures(root: Path) -> tuple[float | None, float | None]:
    """(CPU, GPU) temperature: the hottest zone whose type names a CPU (else the hottest
    zone that is not a GPU) and the hottest GPU zone; Jetson's ``gpu.0`` devfreq sensor
    is a fallback for the GPU."""
    zones = thermal_zones(root)
    gpu = [t for name, t in zones if any(k in name for k in _GPU_NAMES)]
    cpu = [t for name, t in zones if any(k in name for k in _CPU_NAMES)]
    if not cpu:
        cpu = [t for name, t in zones if not any(k in name for k in _GPU_NAMES)]
    if not gpu:
        jetson = _celsius(_read(root / "sys" / "devices" / "gpu.0" / "temp"))
        gpu = [jetson] if jetson is not None else []
    return (max(cpu) if cpu else None), (max(gpu) if gpu else None)


def memory(root: Path) -> tuple[float | None, float | None]:
    """(used, total) bytes from /proc/meminfo (used = total - available)."""
    text = _read(root / "proc" / "meminfo")
    if text is None:
        return None, None
    fields: dict[str, float] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[key.strip()] = float(parts[0]) * 1024
    total = fields.get("MemTotal")
    avail = fields.get("MemAvailable", fields.get("MemFree"))
    if total is None:
        return None, None
    return (total - avail if avail is not None else None), total


def disk(path: Path) -> tuple[float | None, float | None]:
    """(free for unprivileged users, total) bytes of the file system holding ``path``."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None, None
    return float(st.f_bavail * st.f_frsize), float(st.f_blocks * st.f_frsize)


def _first_float(path: Path) -> float | None:
    text = _read(path)
    try:
        return float((text or "").split()[0])
    except (ValueError, IndexError):
        return None


def read_hardware(state_dir: Path, root: Path = Path("/")) -> HardwareHealth:
    cpu, gpu = temperatures(root)
    used, total = memory(root)
    free, dtotal = disk(state_dir)
    return HardwareHealth(
        cpu_temp_c=cpu, gpu_temp_c=gpu, mem_used_bytes=used, mem_total_bytes=total,
        disk_free_bytes=free, disk_total_bytes=dtotal,
        load1=_first_float(root / "proc" / "loadavg"),
        uptime_s=_first_float(root / "proc" / "uptime"))
