"""Aggregation math: latency histogram and percentiles, class counts, moments, feedback join,
and merging reports (the downsampling used when over budget)."""

from __future__ import annotations

import datetime as dt
import statistics

import pytest

from device_updater.telemetry.aggregate import Aggregator, histogram_quantile
from device_updater.telemetry.merge import merge_reports
from device_updater.telemetry.records import (
    Accuracy,
    Feedback,
    Inference,
    InferenceError,
    RecordError,
    parse_record,
)
from edgepkg.protocol import LATENCY_EDGES_MS, Histogram, TelemetryReport, parse_telemetry_report
from tests.device_updater._telemetry_support import aggregator, feed, profile


def _agg() -> Aggregator:
    return Aggregator(lambda m: "2.0.0", lambda m, v: None)


def test_latency_histogram_and_percentiles() -> None:
    agg = _agg()
    for ms in [1.5] * 90 + [40.0] * 10:
        agg.add(Inference(model="clf", latency_ms=ms))
    mt = agg.close()["clf"]
    assert mt.inferences == 100 and mt.version == "2.0.0"
    assert mt.latency_ms is not None and mt.latency_ms.edges == LATENCY_EDGES_MS
    assert mt.latency_ms.counts[LATENCY_EDGES_MS.index(2)] == 90  # 1 < 1.5 <= 2
    assert mt.latency_ms.counts[LATENCY_EDGES_MS.index(50)] == 10  # 20 < 40 <= 50
    assert mt.latency_p50_ms is not None and 1 < mt.latency_p50_ms <= 2
    assert mt.latency_p95_ms is not None and 20 < mt.latency_p95_ms <= 40


def test_quantile_of_a_histogram_interpolates_within_the_bucket() -> None:
    h = Histogram((10.0, 20.0), (0, 100, 0))
    assert histogram_quantile(h, 0.5) == pytest.approx(15.0)
    assert histogram_quantile(Histogram((1.0,), (0, 0)), 0.5) is None
    assert histogram_quantile(Histogram((1.0,), (0, 4)), 0.5, hi=3.0) == pytest.approx(2.0)


def test_classes_confidence_scores_and_errors() -> None:
    agg = _agg()
    for c, conf in [(0, 0.9), (2, 0.7), (2, 0.5)]:
        agg.add(Inference(model="clf", prediction=c, confidence=conf))
    agg.add(Inference(model="reg", prediction=1.5))
    agg.add(Inference(model="reg", prediction=2.5))
    agg.add(InferenceError(model="clf", count=3))
    out = agg.close()
    assert out["clf"].class_counts == (1, 0, 2)
    assert out["clf"].errors == 3
    assert out["clf"].confidence is not None
    assert out["clf"].confidence.mean == pytest.approx(statistics.mean([0.9, 0.7, 0.5]))
    assert out["clf"].confidence.std == pytest.approx(statistics.pstdev([0.9, 0.7, 0.5]),
                                                      rel=1e-5)
    assert out["reg"].scores is not None and out["reg"].scores.mean == 2.0
    assert agg.close() == {}  # a new interval starts empty


def test_feedback_joins_the_prediction_by_id_even_in_a_later_interval() -> None:
    agg = Aggregator(lambda m: "1.0.0", lambda m, v: None, lru_size=2)
    agg.add(Inference(model="clf", prediction=3, prediction_id="a"))
    agg.add(Inference(model="clf", prediction=1, prediction_id="b"))
    agg.close()
    agg.add(Feedback(prediction_id="a", label=3))  # correct
    agg.add(Feedback(prediction_id="b", label=2))  # wrong
    agg.add(Feedback(prediction_id="a", label=3))  # already joined: not counted twice
    agg.add(Accuracy(model="clf", labelled=10, correct=7))
    mt = agg.close()["clf"]
    assert (mt.feedback_labelled, mt.feedback_correct) == (12, 8)
    assert agg.dropped_records == 1


def test_the_feedback_lru_is_bounded() -> None:
    agg = Aggregator(lambda m: "1.0.0", lambda m, v: None, lru_size=2)
    for pid in "abc":
        agg.add(Inference(model="clf", prediction=0, prediction_id=pid))
    agg.add(Feedback(prediction_id="a", label=0))  # evicted
    assert len(agg.predictions) == 2 and agg.dropped_records == 1


def test_feature_histograms_use_the_reference_edges() -> None:
    prof = profile()
    agg = aggregator(prof)
    feed(agg, 300)
    mt = agg.close()["clf"]
    assert len(mt.features) == 8
    f0 = mt.features[0]
    assert f0.name == "f0" and f0.histogram is not None
    assert f0.histogram.edges == prof.features[0].edges and f0.histogram.total == 300


def test_records_are_parsed_strictly() -> None:
    rec = parse_record(b'{"type":"inference","model":"clf","latency_ms":2,"prediction":1}')
    assert isinstance(rec, Inference) and rec.prediction == 1
    for bad in (b"[]", b"{", b'{"type":"x"}', b'{"type":"inference","model":"../x"}',
                b'{"type":"inference","model":"m","latency_ms":-1}',
                b'{"type":"inference","model":"m","extra":1}',
                b'{"type":"accuracy","model":"m","labelled":1,"correct":2}',
                b'{"type":"inference","model":"m","features":[' + b"0," * 40 + b'0]}',
                b'{"type":"feedback","label":1}', b"x" * 9000):
        with pytest.raises(RecordError):
            parse_record(bad)


def _report(seq: int, agg: Aggregator, hour: int) -> TelemetryReport:
    t0 = dt.datetime(2025, 1, 1, hour, tzinfo=dt.UTC)
    return TelemetryReport(seq=seq, interval_start=t0, interval_end=t0 + dt.timedelta(minutes=5),
                           models=agg.close())


def test_merged_reports_add_counts_and_histograms() -> None:
    prof = profile()
    agg = aggregator(prof)
    feed(agg, 300, seed=1)
    a = _report(1, agg, 0)
    feed(agg, 400, seed=2)
    b = _report(2, agg, 1)
    m = merge_reports(a, b)
    assert m is not None and m.seq == 2
    ma, mb, mm = a.models["clf"], b.models["clf"], m.models["clf"]
    assert mm.inferences == 700
    assert mm.latency_ms is not None and mm.latency_ms.total == 700
    assert list(mm.class_counts) == [x + y for x, y in zip(ma.class_counts, mb.class_counts,
                                                           strict=True)]
    assert mm.features[0].histogram is not None and mm.features[0].histogram.total == 700
    assert mm.confidence is not None and mm.confidence.count == 700
    assert m.interval_start == a.interval_start and m.interval_end == b.interval_end
    assert mm.drift["psi"] == max(ma.drift["psi"], mb.drift["psi"])
    parse_telemetry_report(m.to_json())  # still a valid wire message


def test_reports_of_different_versions_do_not_merge() -> None:
    a1 = Aggregator(lambda m: "1.0.0", lambda m, v: None)
    a2 = Aggregator(lambda m: "2.0.0", lambda m, v: None)
    a1.add(Inference(model="clf"))
    a2.add(Inference(model="clf"))
    assert merge_reports(_report(1, a1, 0), _report(2, a2, 1)) is None
