"""Shared builders for the telemetry tests: a realistic stream through the real aggregator."""

from __future__ import annotations

import random

import numpy as np

from device_updater.telemetry.aggregate import Aggregator
from device_updater.telemetry.records import Inference
from device_updater.telemetry.reference import ReferenceProfile, build_profile

N_FEATURES = 8
N_CLASSES = 10


def profile(seed: int = 0, shift: float = 0.0) -> ReferenceProfile:
    rng = np.random.default_rng(seed)
    x = rng.normal(shift, 1.0, size=(1000, N_FEATURES))
    logits = rng.normal(0, 1, size=(1000, N_CLASSES)) * 3
    return build_profile("clf", "1.0.0", x, logits)


def feed(agg: Aggregator, n: int, *, seed: int = 1, shift: float = 0.0) -> None:
    rng = random.Random(seed)
    for i in range(n):
        agg.add(Inference(
            model="clf", latency_ms=rng.lognormvariate(1.5, 0.4),
            prediction=rng.randrange(N_CLASSES), confidence=rng.uniform(0.5, 1.0),
            features=tuple(rng.gauss(shift, 1.0) for _ in range(N_FEATURES)),
            prediction_id=f"p{seed}-{i}"))


def aggregator(prof: ReferenceProfile | None) -> Aggregator:
    return Aggregator(lambda m: "1.0.0", lambda m, v: prof)
