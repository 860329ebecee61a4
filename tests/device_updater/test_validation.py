"""Holdout validation: real runners in a child process, hostile holdouts, the signed policy."""

from __future__ import annotations

import importlib.util
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from device_updater.errors import (
    HoldoutError,
    PolicyError,
    RunnerCrashedError,
    RunnerFailedError,
    RunnerTimeoutError,
    RuntimeNotInstalledError,
)
from device_updater.validation import (
    BuiltinRunner,
    ExternalCommandRunner,
    ResultCache,
    ValidationResult,
    evaluate_policy,
    load_holdout,
    make_holdout,
    measure,
)
from edgepkg.formats import build

POLICY = {"metric": "top1_accuracy", "min": 0.8, "max_regression": 0.02}


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """v1 (current), v2 (good update), v3 (regressed: output classes rotated) + holdout."""
    d = tmp_path_factory.mktemp("valmodels")
    x, y = build.blobs_dataset(400, 8, 3, seed=11)
    w2 = build.train_mlp(x[:200], y[:200], hidden=16, epochs=300, seed=11)
    w1 = build.train_mlp(x[:200], y[:200], hidden=16, epochs=40, seed=3)
    (wh, bh), (wo, bo) = w2
    w3 = [(wh, bh), (np.roll(wo, 1, axis=1), np.roll(bo, 1))]
    out: dict[str, object] = {"dir": d, "holdout": make_holdout(x[200:], y[200:])}
    for name, w in (("v1", w1), ("v2", w2), ("v3", w3)):
        (d / f"{name}.onnx").write_bytes(build.onnx_mlp_classifier(w))
        (d / f"{name}.tflite").write_bytes(build.tflite_mlp_classifier(w))
    (d / "v2_int8.tflite").write_bytes(build.tflite_mlp_classifier(w2, int8=True,
                                                                   calibration=x[:200]))
    return out


@pytest.mark.parametrize("ext,fmt", [("onnx", "onnx"), ("tflite", "tflite"), ("tflite", "tflm")])
def test_good_v2_accepted_and_regressed_v3_rejected(versions: dict, ext: str, fmt: str) -> None:
    d, holdout = versions["dir"], versions["holdout"]
    current = measure(d / f"v1.{ext}", fmt, holdout, timeout=60, version="1.0.0")
    v2 = measure(d / f"v2.{ext}", fmt, holdout, timeout=60)
    v3 = measure(d / f"v3.{ext}", fmt, holdout, timeout=60)
    assert v2.n == holdout.n == 200 and v2.latency_p95_ms >= v2.latency_p50_ms > 0
    ok = evaluate_policy(v2, current, POLICY)
    assert ok.accepted, ok.reasons
    bad = evaluate_policy(v3, current, POLICY)
    assert not bad.accepted
    assert any("below the minimum" in r for r in bad.reasons)
    assert any("dropped by" in r for r in bad.reasons)


@pytest.mark.parametrize("fmt", ["tflite", "tflm"])
def test_int8_model_is_quantized_and_measured(versions: dict, fmt: str) -> None:
    r = measure(versions["dir"] / "v2_int8.tflite", fmt, versions["holdout"], timeout=60)
    assert r.value >= 0.9


def test_latency_regression_is_rejected() -> None:
    cur = ValidationResult("top1_accuracy", 0.95, 1.0, 2.0, 100, {"top1_accuracy": 0.95})
    slow = ValidationResult("top1_accuracy", 0.96, 3.0, 5.0, 100, {"top1_accuracy": 0.96})
    d = evaluate_policy(slow, cur, {"max_latency_ratio": 1.5})
    assert not d.accepted and "2.50x" in d.reasons[0] and d.values["latency_ratio"] == 2.5


def test_first_install_checks_only_absolute_bounds() -> None:
    r = ValidationResult("top1_accuracy", 0.9, 1.0, 2.0, 10, {"top1_accuracy": 0.9})
    d = evaluate_policy(r, None, POLICY)
    assert d.accepted and any("regression not checked" in x for x in d.reasons)


@pytest.mark.parametrize("policy", [
    {"metric": "f1_macro"}, {"min": "high"}, {"min": float("nan")}, {"min": -1},
    {"max_latency_ratio": 0}, {"evil": 1}, [1, 2],
])
def test_malformed_policy_is_a_typed_error(policy: object) -> None:
    r = ValidationResult("top1_accuracy", 0.9, 1.0, 2.0, 10, {"top1_accuracy": 0.9})
    with pytest.raises(PolicyError):
        evaluate_policy(r, None, policy)  # type: ignore[arg-type]


# --- runners that misbehave ------------------------------------------------------------------


def script(tmp_path: Path, name: str, body: str) -> tuple[str, ...]:
    p = tmp_path / name
    p.write_text(body)
    return (sys.executable, str(p))


def test_external_runner_protocol_round_trip(versions: dict, tmp_path: Path) -> None:
    argv = script(tmp_path, "runner.py", (
        "import json, sys, numpy as np, onnxruntime as ort\n"
        "req = json.loads(sys.stdin.read())\n"
        "assert req['protocol'] == 'edgepkg-runner-v1'\n"
        "s = ort.InferenceSession(req['model'], providers=['CPUExecutionProvider'])\n"
        "x = np.load(req['inputs'])\n"
        "pred = s.run(None, {s.get_inputs()[0].name: x})[0].argmax(1)\n"
        "print(json.dumps({'predictions': [int(v) for v in pred]}))\n"))
    r = measure(versions["dir"] / "v2.onnx", "raw", versions["holdout"], timeout=60,
                runner=ExternalCommandRunner(argv))
    assert r.value >= 0.9 and r.runtime == "external:" + Path(argv[0]).name


def test_runner_exiting_with_error_is_a_failure(versions: dict, tmp_path: Path) -> None:
    argv = script(tmp_path, "fail.py", "import sys; print('model is garbage', file=sys.stderr)"
                                       "; sys.exit(1)")
    with pytest.raises(RunnerFailedError, match="exit status 1: model is garbage"):
        measure(versions["dir"] / "v2.onnx", "raw", versions["holdout"], timeout=30,
                runner=ExternalCommandRunner(argv))


def test_runner_segfault_is_reported_as_a_crash(versions: dict, tmp_path: Path) -> None:
    argv = script(tmp_path, "segv.py", "import ctypes; ctypes.string_at(0)")
    with pytest.raises(RunnerCrashedError, match="SIGSEGV"):
        measure(versions["dir"] / "v2.onnx", "raw", versions["holdout"], timeout=30,
                runner=ExternalCommandRunner(argv))


def test_hanging_runner_is_killed_at_the_time_limit(versions: dict, tmp_path: Path) -> None:
    argv = script(tmp_path, "hang.py", (
        "import os, time\n"
        "if os.fork() == 0:\n    time.sleep(600)\n"  # a grandchild must die too
        "time.sleep(600)\n"))
    with pytest.raises(RunnerTimeoutError, match=r"within 1\.5s"):
        measure(versions["dir"] / "v2.onnx", "raw", versions["holdout"], timeout=1.5,
                runner=ExternalCommandRunner(argv))


def test_builtin_runner_on_a_corrupt_model_fails_cleanly(versions: dict, tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 100)
    for fmt in ("onnx", "tflite", "tflm"):
        with pytest.raises(RunnerFailedError):
            measure(bad, fmt, versions["holdout"], timeout=30)


def test_missing_runtime_is_reported_not_crashed(versions: dict, tmp_path: Path) -> None:
    with pytest.raises(RuntimeNotInstalledError):
        measure(tmp_path / "x.bin", "raw", versions["holdout"], timeout=10)
    if importlib.util.find_spec("tensorrt") is None:
        engine = tmp_path / "m.engine"
        engine.write_bytes(b"ftrt" + bytes(60))
        with pytest.raises(RuntimeNotInstalledError, match=r"(?i)tensorrt is not installed"):
            measure(engine, "tensorrt", versions["holdout"], timeout=30)


def test_memory_limited_runner_fails_instead_of_taking_the_device(versions: dict) -> None:
    runner = BuiltinRunner(options={"memory_limit_bytes": 64 << 20})
    with pytest.raises(RunnerFailedError):
        measure(versions["dir"] / "v2.onnx", "onnx", versions["holdout"], timeout=30,
                runner=runner)


# --- holdout input -----------------------------------------------------------------------------


def test_holdout_from_directory_and_npz(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    y = np.arange(20) % 3
    (tmp_path / "h").mkdir()
    np.save(tmp_path / "h" / "inputs.npy", x)
    np.save(tmp_path / "h" / "labels.npy", y)
    np.savez_compressed(tmp_path / "h.npz", inputs=x, labels=y)
    a, b = load_holdout(tmp_path / "h"), load_holdout(tmp_path / "h.npz")
    assert a.n == b.n == 20 and a.digest == b.digest


def test_holdout_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    (tmp_path / "h").mkdir()
    np.save(tmp_path / "h" / "inputs.npy", np.array([{"a": 1}, None], dtype=object))
    np.save(tmp_path / "h" / "labels.npy", np.array([0, 1]))
    with pytest.raises(HoldoutError, match="must hold numbers"):
        load_holdout(tmp_path / "h")


def test_holdout_npz_bomb_is_refused_before_decompressing(tmp_path: Path) -> None:
    big = np.zeros((4096, 1024), np.float32)  # 16 MiB of zeros compresses to almost nothing
    np.savez_compressed(tmp_path / "bomb.npz", inputs=big, labels=np.zeros(4096, np.int64))
    assert (tmp_path / "bomb.npz").stat().st_size < 200_000
    with pytest.raises(HoldoutError, match="over the"):
        load_holdout(tmp_path / "bomb.npz", max_bytes=1 << 20)


def test_holdout_header_claiming_huge_array_is_refused(tmp_path: Path) -> None:
    (tmp_path / "h").mkdir()
    with open(tmp_path / "h" / "inputs.npy", "wb") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 1000)})
    np.save(tmp_path / "h" / "labels.npy", np.array([0]))
    with pytest.raises(HoldoutError, match="over the"):
        load_holdout(tmp_path / "h")


@pytest.mark.parametrize("x,y,msg", [
    (np.zeros((5, 2), np.float32), np.zeros(4, np.int64), "labels must be"),
    (np.zeros(5, np.float32), np.zeros(5, np.int64), "must be \\[N"),
    (np.zeros((5, 2), np.float32), np.zeros(5, np.float32), "integers"),
    (np.full((5, 2), np.nan, np.float32), np.zeros(5, np.int64), "NaN"),
])
def test_inconsistent_holdout_is_refused(x: np.ndarray, y: np.ndarray, msg: str) -> None:
    with pytest.raises(HoldoutError, match=msg):
        make_holdout(x, y)


def test_npz_without_labels_is_refused(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "h.npz", "w") as zf:
        zf.writestr("inputs.npy", b"")
    with pytest.raises(HoldoutError, match="no 'labels'"):
        load_holdout(tmp_path / "h.npz")


# --- cache -------------------------------------------------------------------------------------


def test_current_model_result_is_measured_once_per_version(versions: dict,
                                                           tmp_path: Path) -> None:
    cache = ResultCache(tmp_path / "cache.json")
    calls = []

    def produce() -> ValidationResult:
        calls.append(1)
        return measure(versions["dir"] / "v1.onnx", "onnx", versions["holdout"], timeout=60)

    h = versions["holdout"]
    a = cache.get_or_measure("1.0.0", "a" * 64, h, produce)
    b = ResultCache(tmp_path / "cache.json").get_or_measure("1.0.0", "a" * 64, h, produce)
    assert a == b and len(calls) == 1 and b.version == "1.0.0"
    cache.get_or_measure("1.0.0", "b" * 64, h, produce)  # same version, other bytes: re-measure
    assert len(calls) == 2
