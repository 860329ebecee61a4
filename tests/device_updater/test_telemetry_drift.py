"""Drift math (pure) and the reference profile it compares against."""

from __future__ import annotations

import numpy as np
import pytest

from device_updater.telemetry import drift
from device_updater.telemetry.reference import (
    bin_counts,
    bin_edges,
    build_profile,
    load_profile,
    save_profile,
)
from tests.device_updater._telemetry_support import aggregator, feed, profile


def test_identical_histograms_score_zero() -> None:
    h = [10, 20, 30, 40]
    assert drift.psi(h, h) == pytest.approx(0.0, abs=1e-12)
    assert drift.js(h, h) == pytest.approx(0.0, abs=1e-12)
    assert drift.ks(h, h) == 0.0


def test_disjoint_histograms_score_high() -> None:
    assert drift.js([100, 0], [0, 100]) == pytest.approx(1.0)
    assert drift.ks([100, 0], [0, 100]) == pytest.approx(1.0)
    assert drift.psi([100, 0], [0, 100]) > 5


def test_psi_with_an_empty_bin_is_finite() -> None:
    assert np.isfinite(drift.psi([50, 50, 0], [30, 30, 40]))


def test_mismatched_bins_are_refused() -> None:
    with pytest.raises(ValueError, match="same"):
        drift.psi([1, 2], [1, 2, 3])


def test_edges_are_deciles_and_counts_follow_the_protocol_convention() -> None:
    values = np.arange(1, 101, dtype=float)
    edges = bin_edges(values)
    assert len(edges) == 9 and edges[0] == pytest.approx(10.9, abs=0.2)
    # value == edge falls in the lower bucket (edges[i-1] < v <= edges[i])
    assert bin_counts(np.array([1.0, 2.0, 3.0]), (2.0,)) == (2, 1)


def test_constant_feature_gets_one_edge() -> None:
    assert bin_edges(np.full(50, 3.0)) == (3.0,)


def test_unshifted_field_interval_has_low_drift() -> None:
    prof = profile(seed=0)
    agg = aggregator(prof)
    feed(agg, 2000, seed=5)
    scores = agg.close()["clf"].drift
    assert scores["psi"] < drift.DEFAULT_THRESHOLDS["psi"]
    assert scores["ks"] < drift.DEFAULT_THRESHOLDS["ks"]
    assert scores["js"] < drift.DEFAULT_THRESHOLDS["js"]


def test_shifted_field_interval_has_high_drift() -> None:
    prof = profile(seed=0)
    agg = aggregator(prof)
    feed(agg, 2000, seed=5, shift=1.0)
    scores = agg.close()["clf"].drift
    assert scores["psi"] > 0.5 and scores["ks"] > 0.3 and scores["js"] > 0.1


def test_no_drift_score_below_the_minimum_sample() -> None:
    agg = aggregator(profile())
    feed(agg, drift.MIN_SAMPLES - 1, shift=3.0)
    assert agg.close()["clf"].drift == {}


def test_confidence_drop_and_prediction_shift() -> None:
    scores = drift.drift_scores(
        [], ref_classes=[500, 500], field_classes=[1000, 0], ref_confidence_mean=0.9,
        field_confidence_mean=0.6, field_confidence_count=1000)
    assert scores["confidence_drop"] == pytest.approx(0.3)
    assert scores["prediction_shift"] > 0.3


def test_hysteresis_opens_after_three_and_resolves_after_three() -> None:
    h = drift.Hysteresis(threshold=1.0)
    assert [h.update(x) for x in (2, 2, 0, 2, 2, 2)] == [None] * 5 + ["open"]
    assert [h.update(x) for x in (0, 0, 2, 0, 0, 0)] == [None] * 5 + ["resolve"]


def test_profile_survives_a_round_trip_on_disk(tmp_path) -> None:  # type: ignore[no-untyped-def]
    prof = build_profile("clf", "1.0.0", np.random.default_rng(0).normal(size=(200, 3)))
    assert not prof.has_outputs
    save_profile(tmp_path, prof)
    assert load_profile(tmp_path, "1.0.0") == prof
    assert load_profile(tmp_path, "9.9.9") is None


def test_large_inputs_are_summarised_like_the_client_does() -> None:
    from device_updater.telemetry.client import features_of

    x = np.random.default_rng(1).normal(size=(50, 8, 8))
    prof = build_profile("img", "1.0.0", x)
    assert prof.summarised and [f.name for f in prof.features][:2] == ["mean", "std"]
    from device_updater.telemetry.reference import summarise_rows

    row = summarise_rows(x.reshape(50, -1))[0]
    assert features_of(list(x[0].ravel())) == pytest.approx(list(row))
