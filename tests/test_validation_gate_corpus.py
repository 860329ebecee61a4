"""The quality gate against a corpus of real update pairs: every bad candidate rejected for
the right reason, every good one accepted (ONNX, TFLite, TFLM; classification with
probabilities, logits or class ids, multi-output, regression, anomaly scores, detection).

The fast slice runs by default; the whole corpus is marked ``slow`` (about a minute more).
bench/validation_gate.py runs it three times and reports bad caught / good accepted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from device_updater.validation import load_holdout, parse_device_policy, run_gate
from device_updater.validation.gate import ModelRun, run_model
from tests._gate_corpus import Pair, build_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Pair]]:
    d = tmp_path_factory.mktemp("gate-corpus")
    return d, build_corpus(d)


_RUNNING: dict[tuple[str, str, str], ModelRun] = {}

#: which rule must be among the failures for each kind of bad pair
_RULES = {
    "per_class": "per_class.", "slices": "slices[", "io": "io.must_match_running",
    "contract": "holdout I/O contract", "memory": "memory", "latency": "max_latency_ratio",
    "min": "min", "max_regression": "max_regression",
}


def _judge(d: Path, pair: Pair) -> None:
    policy = parse_device_policy(pair.policy)
    holdout = load_holdout(d / pair.holdout, task=policy.task)
    key = (pair.running, pair.running_fmt, pair.holdout)
    if key not in _RUNNING:  # the daemon caches the running model's result the same way
        _RUNNING[key] = run_model(d / pair.running, pair.running_fmt, holdout, timeout=60)
    result = run_gate(d / pair.candidate, pair.cand_fmt, d / pair.running, pair.running_fmt,
                      holdout, policy, timeout=60, latency_budget_s=1.0,
                      running_result=_RUNNING[key])
    failed = [c.rule for c in result.verdict.checks if c.status == "fail"]
    if pair.good:
        assert result.accepted, f"{pair.name}: good update rejected: {result.verdict.reasons}"
    else:
        assert not result.accepted, f"{pair.name}: bad update accepted: {result.verdict.reasons}"
        assert any(_RULES[pair.why] in r for r in failed), (pair.name, failed)
    # Every verdict explains itself: each check has its rule, values and, where measured, a CI.
    for c in result.verdict.checks:
        assert c.rule and c.message
        if c.rule in ("min", "max_regression") and c.status != "skipped":
            assert c.ci is not None and c.value is not None


def test_corpus_has_at_least_30_pairs_covering_each_failure_class(corpus) -> None:
    _, pairs = corpus
    assert len(pairs) >= 30
    assert {p.why for p in pairs if not p.good} >= set(_RULES)
    assert sum(p.good for p in pairs) >= 12
    assert {p.cand_fmt for p in pairs} >= {"onnx", "tflite", "tflm"}
    assert {p.name for p in pairs if p.fast} == set(_FAST)


_FAST = ["onnx better", "onnx class ids, better", "onnx rare class recall -> 0",
         "onnx wrong on the night slice", "onnx one more output class",
         "onnx input dtype changed", "onnx memory hog", "onnx 100x slower",
         "onnx class ids, collapsed", "tflite int8 of the same model",
         "format change onnx -> tflite", "regression better (MAE)", "detector better (mAP@0.5)",
         "detector boxes shifted (mAP@0.5)"]


@pytest.mark.parametrize("name", _FAST)
def test_fast_corpus_pair_is_judged_right(corpus, name: str) -> None:
    d, pairs = corpus
    pair = next((p for p in pairs if p.name == name), None)
    if pair is None:
        pytest.skip(f"{name}: runtime not installed here")
    _judge(d, pair)


@pytest.mark.slow
def test_whole_corpus_is_judged_right(corpus) -> None:
    d, pairs = corpus
    wrong = []
    for pair in pairs:
        if pair.name in _FAST:
            continue
        try:
            _judge(d, pair)
        except AssertionError as exc:
            wrong.append(str(exc))
    assert not wrong, "\n".join(wrong)
