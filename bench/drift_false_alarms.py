"""Drift alerts at the default thresholds: false alarms on an unshifted stream, and detection
delay after a shift (docs/benchmarks.md, "Field telemetry").

Each simulated device has its own holdout (1000 samples, 8 standard-normal features, 10
classes) and a reference profile built by the device code; every interval at the default
300 s it sees ``--rate`` inferences drawn from the same distribution (or, after the shift,
feature 0 shifted by ``--shift`` standard deviations). Scores are the device's
(:func:`device_updater.telemetry.aggregate` path, vectorised here for speed); the alert rule is
the server's hysteresis: open after 3 consecutive intervals above the threshold, resolve
after 3 below.

    python bench/drift_false_alarms.py [--devices 10] [--days 30] [--rate 300]
"""

from __future__ import annotations

import argparse

import numpy as np

from device_updater.telemetry import drift
from device_updater.telemetry.reference import bin_counts, build_profile

F, C, INTERVALS_PER_DAY = 8, 10, 288
KEYS = ("psi", "js", "ks", "prediction_shift")


def _scores(prof, x: np.ndarray, classes: np.ndarray) -> dict[str, float]:  # type: ignore[no-untyped-def]
    feats = [drift.FeatureCounts(f.counts, bin_counts(x[:, i], f.edges))
             for i, f in enumerate(prof.features)]
    return drift.drift_scores(feats, ref_classes=prof.class_counts,
                              field_classes=np.bincount(classes, minlength=C).tolist())


def run(devices: int, days: int, rate: int, shift: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = days * INTERVALS_PER_DAY
    alarms = dict.fromkeys((*KEYS, "any_input"), 0)
    delays: list[int] = []
    for _ in range(devices):
        logits = rng.normal(size=(1000, C))
        prof = build_profile("m", "1", rng.normal(size=(1000, F)), logits)
        class_p = np.asarray(prof.class_counts, dtype=float) / sum(prof.class_counts)
        h = {k: drift.Hysteresis(drift.DEFAULT_THRESHOLDS[k]) for k in alarms if k in KEYS}
        h["any_input"] = drift.Hysteresis(0.5)
        for _ in range(n):
            s = _scores(prof, rng.normal(size=(rate, F)), rng.choice(C, size=rate, p=class_p))
            for k in KEYS:
                alarms[k] += h[k].update(s.get(k)) == "open"
            worst = max(s[k] / drift.DEFAULT_THRESHOLDS[k] for k in ("psi", "js", "ks"))
            alarms["any_input"] += h["any_input"].update(worst - 0.5) == "open"
        # the shifted stream: how many intervals until the input-drift alert opens
        hs = drift.Hysteresis(0.5)
        for i in range(1, 50):
            x = rng.normal(size=(rate, F))
            x[:, 0] += shift
            s = _scores(prof, x, rng.choice(C, size=rate, p=class_p))
            worst = max(s[k] / drift.DEFAULT_THRESHOLDS[k] for k in ("psi", "js", "ks"))
            if hs.update(worst - 0.5) == "open":
                delays.append(i)
                break
        else:
            delays.append(-1)
    months = devices * days / 30
    print(f"devices={devices} days={days} rate={rate}/interval shift={shift} sd")
    for k, v in alarms.items():
        print(f"false alarms {k:17s}: {v} in {months:.1f} device-months "
              f"= {v / months:.3f} per device-month")
    print(f"detection delay (intervals, incl. the 3 of hysteresis): min {min(delays)} "
          f"median {int(np.median(delays))} max {max(delays)} (-1 = not detected in 49)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, default=10)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--rate", type=int, default=300, help="inferences per 300 s interval")
    p.add_argument("--shift", type=float, default=0.5, help="shift of feature 0, in sd")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    run(a.devices, a.days, a.rate, a.shift, a.seed)


if __name__ == "__main__":
    main()
