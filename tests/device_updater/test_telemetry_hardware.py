"""Hardware readers on fake /sys and /proc trees (missing files read as None)."""

from __future__ import annotations

from pathlib import Path

from device_updater.telemetry.hardware import memory, read_hardware, temperatures


def _zone(root: Path, i: int, kind: str, temp: str) -> None:
    z = root / "sys" / "class" / "thermal" / f"thermal_zone{i}"
    z.mkdir(parents=True)
    (z / "type").write_text(kind + "\n")
    (z / "temp").write_text(temp + "\n")


def test_jetson_like_tree(tmp_path: Path) -> None:
    _zone(tmp_path, 0, "CPU-therm", "48500")
    _zone(tmp_path, 1, "GPU-therm", "51000")
    _zone(tmp_path, 2, "PMIC-Die", "100000")
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "meminfo").write_text("MemTotal:  8000000 kB\nMemFree: 100 kB\n"
                                  "MemAvailable:  3000000 kB\n")
    (proc / "loadavg").write_text("0.42 0.30 0.20 1/200 1234\n")
    (proc / "uptime").write_text("12345.67 2000.00\n")
    hw = read_hardware(tmp_path, root=tmp_path)
    assert hw.cpu_temp_c == 48.5 and hw.gpu_temp_c == 51.0
    assert hw.mem_total_bytes == 8000000 * 1024
    assert hw.mem_used_bytes == 5000000 * 1024
    assert hw.load1 == 0.42 and hw.uptime_s == 12345.67
    assert hw.disk_total_bytes is not None and hw.disk_free_bytes is not None


def test_raspberry_pi_single_zone_and_jetson_devfreq_gpu(tmp_path: Path) -> None:
    _zone(tmp_path, 0, "cpu-thermal", "61234")
    gpu = tmp_path / "sys" / "devices" / "gpu.0"
    gpu.mkdir(parents=True)
    (gpu / "temp").write_text("39000")
    assert temperatures(tmp_path) == (61.2, 39.0)


def test_unknown_zone_names_count_as_cpu_and_garbage_is_ignored(tmp_path: Path) -> None:
    _zone(tmp_path, 0, "board", "45000")
    _zone(tmp_path, 1, "broken", "not-a-number")
    assert temperatures(tmp_path) == (45.0, None)


def test_everything_missing_reads_as_none(tmp_path: Path) -> None:
    hw = read_hardware(tmp_path / "no-such-dir", root=tmp_path)
    assert hw.cpu_temp_c is None and hw.gpu_temp_c is None
    assert hw.mem_total_bytes is None and hw.load1 is None and hw.uptime_s is None
    assert hw.disk_free_bytes is None
    assert memory(tmp_path) == (None, None)
