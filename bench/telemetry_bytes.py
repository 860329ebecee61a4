"""Telemetry bytes per device per day at the default interval (docs/benchmarks.md).

A realistic report: 1 model, 10 classes, 8 input features with a reference profile (so every
feature carries a 10-bin histogram), ``--rate`` inferences per 300 s interval with latency,
confidence and some feedback, hardware health; built by the device's own aggregator and
measured as the exact JSON body ``DeviceClient.post_telemetry`` sends.

    python bench/telemetry_bytes.py [--rate 300]
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics

import numpy as np

from device_updater.telemetry.aggregate import Aggregator
from device_updater.telemetry.queue import encode
from device_updater.telemetry.records import Feedback, Inference
from device_updater.telemetry.reference import build_profile
from device_updater.telemetry.settings import DEFAULT_DAILY_BYTE_BUDGET
from edgepkg.protocol import HardwareHealth, TelemetryReport


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rate", type=int, default=300)
    rate = p.parse_args().rate
    rng = np.random.default_rng(0)
    prof = build_profile("detector", "1.4.2", rng.normal(size=(1000, 8)),
                         rng.normal(size=(1000, 10)) * 3)
    agg = Aggregator(lambda m: "1.4.2", lambda m, v: prof)
    r = random.Random(0)
    sizes = []
    t0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    hw = HardwareHealth(cpu_temp_c=51.3, gpu_temp_c=48.9, mem_used_bytes=3.1e9,
                        mem_total_bytes=7.9e9, disk_free_bytes=2.1e10, disk_total_bytes=3.1e10,
                        load1=1.37, uptime_s=123456.78)
    for i in range(288):
        for j in range(rate):
            agg.add(Inference(model="detector", latency_ms=r.lognormvariate(2.0, 0.3),
                              prediction=r.randrange(10), confidence=r.uniform(0.4, 1.0),
                              features=tuple(r.gauss(0, 1) for _ in range(8)),
                              prediction_id=f"{i}-{j}"))
            if j % 20 == 0:
                agg.add(Feedback(prediction_id=f"{i}-{j}", label=r.randrange(10)))
        rep = TelemetryReport(seq=100000 + i, interval_start=t0 + dt.timedelta(minutes=5 * i),
                              interval_end=t0 + dt.timedelta(minutes=5 * i + 5),
                              models=agg.close(), hardware=hw)
        sizes.append(len(encode(rep)))
    day = sum(sizes)
    print(f"rate {rate}/interval: report {statistics.median(sizes):.0f} B median "
          f"(min {min(sizes)}, max {max(sizes)}); {day} B/day = {day / 1024:.1f} KiB/day "
          f"at 288 intervals; default budget {DEFAULT_DAILY_BYTE_BUDGET // 1024} KiB/day")


if __name__ == "__main__":
    main()
