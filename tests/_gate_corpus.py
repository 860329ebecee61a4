"""The validation-gate corpus: real candidate/running model pairs, good and bad, built here.

Used by tests/test_validation_gate_corpus.py and bench/validation_gate.py. Every model is a real
ONNX / TFLite file run by its runtime (TFLM runs the TFLite flatbuffer); each pair has the policy
it is judged by and whether a careful ML engineer would ship it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgepkg.formats import build

CLASSES, FEATURES = 4, 8
RARE = 3  # a rare class: ~1.5% of samples, so losing it moves top-1 by less than 0.02

POLICY: dict[str, Any] = {
    "metric": "top1_accuracy", "min": 0.70, "max_regression": 0.02, "max_latency_ratio": 1.5,
    "max_memory_ratio": 2.0, "max_memory_bytes": 256 << 20,
    "per_class": {"min_recall": 0.3, "max_recall_drop": 0.2, "min_support": 10},
    "slices": [{"tag": "night", "min": 0.6, "max_regression": 0.2}],
}

HAVE_TFLITE = importlib.util.find_spec("ai_edge_litert") is not None
HAVE_TFLM = importlib.util.find_spec("tflite_micro") is not None


@dataclass
class Pair:
    name: str
    good: bool
    candidate: str  # file name in the corpus dir
    cand_fmt: str
    running: str
    running_fmt: str
    holdout: str = "cls"
    policy: dict[str, Any] = field(default_factory=lambda: dict(POLICY))
    fast: bool = False
    why: str = ""


def _data(n: int, seed: int, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.choice(CLASSES, size=n, p=[0.33, 0.33, 0.325, 0.015])
    night = rng.random(n) < 0.12
    x = centers[y] + rng.normal(0, 1.0, size=(n, FEATURES))
    x[night, :4] += 7.0  # the "night" sensor condition shifts half the features
    return x.astype(np.float32), y.astype(np.int64), night


def _rotate(w: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
    (wh, bh), (wo, bo) = w
    return [(wh, bh), (np.roll(wo, 1, axis=1), np.roll(bo, 1))]


def _kill_class(w: list[tuple[np.ndarray, np.ndarray]], c: int) -> list[tuple[np.ndarray,
                                                                             np.ndarray]]:
    (wh, bh), (wo, bo) = w
    bo = bo.copy()
    bo[c] -= 1000.0
    return [(wh, bh), (wo, bo)]


def _extra_class(w: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
    (wh, bh), (wo, bo) = w
    return [(wh, bh), (np.concatenate([wo, np.zeros((wo.shape[0], 1), np.float32)], 1),
                       np.concatenate([bo, [-1000.0]]).astype(np.float32))]


def build_corpus(d: Path) -> list[Pair]:
    """Write every model and holdout under ``d``; return the pairs."""
    rng = np.random.default_rng(7)
    centers = rng.normal(0, 3.0, size=(CLASSES, FEATURES))
    xt, yt, nt = _data(1500, 1, centers)
    xh, yh, nh = _data(1000, 2, centers)
    hd = d / "cls"
    hd.mkdir()
    np.save(hd / "inputs.npy", xh)
    np.save(hd / "labels.npy", yh)
    np.savez(hd / "slices.npz", night=nh)

    def train(x: np.ndarray, y: np.ndarray, hidden: int = 32, epochs: int = 400,
              seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
        return build.train_mlp(x, y, hidden=hidden, classes=CLASSES, epochs=epochs, lr=0.1,
                               seed=seed)

    base = train(xt, yt, epochs=80, seed=1)  # the running model
    better = train(xt, yt, epochs=250, seed=1)
    peer = train(xt, yt, epochs=80, seed=2)  # noise-equal: another seed, same recipe
    small = train(xt, yt, hidden=8, epochs=250, seed=3)  # faster
    day_only = train(xt[~nt], yt[~nt], epochs=250, seed=1)  # never saw night data
    weak = train(xt, yt, epochs=6, seed=4)  # under-trained: a real accuracy drop
    slow = [(np.pad(better[0][0], ((0, 0), (0, 992))), np.pad(better[0][1], (0, 992))),
            (np.eye(1024, dtype=np.float32), np.zeros(1024, np.float32)),
            (np.eye(1024, dtype=np.float32), np.zeros(1024, np.float32)),
            (np.pad(better[1][0], ((0, 992), (0, 0))), better[1][1])]
    files: dict[str, bytes] = {
        "base.onnx": build.onnx_mlp(base),
        "better.onnx": build.onnx_mlp(better),
        "better_op13.onnx": build.onnx_mlp(better, opset=13),
        "peer.onnx": build.onnx_mlp(peer),
        "small.onnx": build.onnx_mlp(small),
        "rare0.onnx": build.onnx_mlp(_kill_class(better, RARE)),
        "day_only.onnx": build.onnx_mlp(day_only),
        "extra_class.onnx": build.onnx_mlp(_extra_class(better)),
        "f64_input.onnx": build.onnx_mlp(better, input_dtype="float64"),
        "renamed.onnx": build.onnx_mlp(better, output_name="probs"),
        "hog.onnx": build.onnx_mlp(better, hog_bytes=96 << 20),
        "bomb.onnx": build.onnx_mlp(better, hog_bytes=3 << 30),
        "rotated.onnx": build.onnx_mlp(_rotate(better)),
        "weak.onnx": build.onnx_mlp(weak),
        "slow.onnx": build.onnx_mlp(slow),
        "ids_base.onnx": build.onnx_mlp(base, head="argmax"),
        "ids_better.onnx": build.onnx_mlp(better, head="argmax"),
        "ids_collapsed.onnx": build.onnx_mlp(_kill_class(_kill_class(_kill_class(
            better, 1), 2), 3), head="argmax"),
        "multi_base.onnx": build.onnx_mlp(base, head="both"),
        "multi_better.onnx": build.onnx_mlp(better, head="both"),
        "multi_rotated.onnx": build.onnx_mlp(_rotate(better), head="both"),
    }
    pairs = [
        Pair("onnx better", True, "better.onnx", "onnx", "base.onnx", "onnx", fast=True),
        Pair("onnx noise-equal (other seed)", True, "peer.onnx", "onnx", "base.onnx", "onnx"),
        Pair("onnx identical (A/A)", True, "base.onnx", "onnx", "base.onnx", "onnx"),
        Pair("onnx faster (smaller)", True, "small.onnx", "onnx", "base.onnx", "onnx"),
        Pair("onnx re-exported opset 13", True, "better_op13.onnx", "onnx", "better.onnx",
             "onnx"),
        Pair("onnx class ids, better", True, "ids_better.onnx", "onnx", "ids_base.onnx", "onnx",
             fast=True),
        Pair("onnx multi-output picked by name", True, "multi_better.onnx", "onnx",
             "multi_base.onnx", "onnx",
             policy={**POLICY, "output": "probabilities"}),
        Pair("onnx rare class recall -> 0", False, "rare0.onnx", "onnx", "better.onnx", "onnx",
             fast=True, why="per_class"),
        Pair("onnx wrong on the night slice", False, "day_only.onnx", "onnx", "better.onnx",
             "onnx", fast=True, why="slices"),
        Pair("onnx one more output class", False, "extra_class.onnx", "onnx", "better.onnx",
             "onnx", fast=True, why="io"),
        Pair("onnx input dtype changed", False, "f64_input.onnx", "onnx", "better.onnx", "onnx",
             fast=True, why="contract"),
        Pair("onnx output renamed", False, "renamed.onnx", "onnx", "better.onnx", "onnx",
             why="io"),
        Pair("onnx memory hog", False, "hog.onnx", "onnx", "better.onnx", "onnx", fast=True,
             why="memory"),
        Pair("onnx memory bomb", False, "bomb.onnx", "onnx", "better.onnx", "onnx",
             why="memory"),
        Pair("onnx classes rotated", False, "rotated.onnx", "onnx", "better.onnx", "onnx",
             why="min"),
        Pair("onnx under-trained", False, "weak.onnx", "onnx", "better.onnx", "onnx",
             why="max_regression"),
        Pair("onnx 100x slower", False, "slow.onnx", "onnx", "better.onnx", "onnx", fast=True,
             why="latency"),
        Pair("onnx class ids, collapsed", False, "ids_collapsed.onnx", "onnx",
             "ids_base.onnx", "onnx", fast=True, why="min"),
        Pair("onnx multi-output, rotated", False, "multi_rotated.onnx", "onnx",
             "multi_base.onnx", "onnx", policy={**POLICY, "output": "probabilities"},
             why="min"),
    ]
    if HAVE_TFLITE:
        files.update({
            "base.tflite": build.tflite_mlp_classifier(base),
            "better.tflite": build.tflite_mlp_classifier(better),
            "better_int8.tflite": build.tflite_mlp_classifier(better, int8=True,
                                                              calibration=xt[:500]),
            "rare0.tflite": build.tflite_mlp_classifier(_kill_class(better, RARE)),
            "day_only.tflite": build.tflite_mlp_classifier(day_only),
            "extra_class.tflite": build.tflite_mlp_classifier(_extra_class(better)),
            "rotated.tflite": build.tflite_mlp_classifier(_rotate(better)),
            "rare0_int8.tflite": build.tflite_mlp_classifier(
                _kill_class(better, RARE), int8=True, calibration=xt[:500]),
        })
        pairs += [
            Pair("tflite better", True, "better.tflite", "tflite", "base.tflite", "tflite"),
            Pair("tflite int8 of the same model", True, "better_int8.tflite", "tflite",
                 "better.tflite", "tflite", fast=True),
            Pair("format change onnx -> tflite", True, "better.tflite", "tflite", "base.onnx",
                 "onnx", fast=True),
            Pair("format change tflite -> onnx", True, "better.onnx", "onnx", "better.tflite",
                 "tflite"),
            Pair("tflite rare class recall -> 0", False, "rare0.tflite", "tflite",
                 "better.tflite", "tflite", why="per_class"),
            Pair("tflite int8 rare class recall -> 0", False, "rare0_int8.tflite", "tflite",
                 "better_int8.tflite", "tflite", why="per_class"),
            Pair("tflite wrong on the night slice", False, "day_only.tflite", "tflite",
                 "better.tflite", "tflite", why="slices"),
            Pair("tflite one more output class", False, "extra_class.tflite", "tflite",
                 "better.tflite", "tflite", why="io"),
            Pair("tflite classes rotated", False, "rotated.tflite", "tflite", "better.tflite",
                 "tflite", why="min"),
        ]
    if HAVE_TFLITE and HAVE_TFLM:
        pairs += [
            Pair("tflm better", True, "better.tflite", "tflm", "base.tflite", "tflm"),
            Pair("tflm int8 of the same model", True, "better_int8.tflite", "tflm",
                 "better.tflite", "tflm"),
            Pair("tflm rare class recall -> 0", False, "rare0.tflite", "tflm", "better.tflite",
                 "tflm", why="per_class"),
            Pair("tflm wrong on the night slice", False, "day_only.tflite", "tflm",
                 "better.tflite", "tflm", why="slices"),
        ]
    pairs += _sensor_and_detector(d, files, rng)
    for name, data in files.items():
        (d / name).write_bytes(data)
    return pairs


def _sensor_and_detector(d: Path, files: dict[str, bytes],
                         rng: np.random.Generator) -> list[Pair]:
    # Regression: a linear sensor model; anomaly: a score whose large values flag anomalies.
    x = rng.normal(size=(400, FEATURES)).astype(np.float32)
    w_true = rng.normal(size=(FEATURES, 1)).astype(np.float32)
    y = (x @ w_true)[:, 0] + rng.normal(0, 0.1, size=400).astype(np.float32)
    rd = d / "reg"
    rd.mkdir()
    np.save(rd / "inputs.npy", x)
    np.save(rd / "labels.npy", y.astype(np.float32))
    zero = np.zeros(1, np.float32)
    files["reg_good.onnx"] = build.onnx_mlp([(w_true, zero)], head="value", output_name="value")
    files["reg_base.onnx"] = build.onnx_mlp([(w_true + 0.02, zero)], head="value",
                                            output_name="value")
    files["reg_bad.onnx"] = build.onnx_mlp([(w_true + 0.3, zero)], head="value",
                                           output_name="value")
    anomalous = (x @ w_true)[:, 0] > 1.5
    ad = d / "anom"
    ad.mkdir()
    np.save(ad / "inputs.npy", x)
    np.save(ad / "labels.npy", anomalous.astype(np.int64))
    files["anom_good.onnx"] = build.onnx_mlp([(w_true, zero)], head="value", output_name="score")
    files["anom_bad.onnx"] = build.onnx_mlp([(rng.normal(size=(FEATURES, 1)).astype(np.float32),
                                              zero)], head="value", output_name="score")
    # Detection: K proposals per image, features (cx, cy, w, h, one-hot class + noise).
    n, k, c = 120, 4, 3
    cx, cy = rng.uniform(10, 90, (n, k)), rng.uniform(10, 90, (n, k))
    bw, bh = rng.uniform(8, 20, (n, k)), rng.uniform(8, 20, (n, k))
    cls = rng.integers(0, c, (n, k))
    onehot = np.eye(c)[cls] + rng.normal(0, 0.35, (n, k, c))
    props = np.concatenate([np.stack([cx, cy, bw, bh], -1), onehot], -1).astype(np.float32)
    gt = np.stack([np.repeat(np.arange(n), k), cls.ravel(), (cx - bw / 2).ravel(),
                   (cy - bh / 2).ravel(), (cx + bw / 2).ravel(), (cy + bh / 2).ravel()], 1)
    dd = d / "det"
    dd.mkdir()
    np.save(dd / "inputs.npy", props)
    np.save(dd / "boxes.npy", gt.astype(np.float32))
    wb = np.zeros((4 + c, 4), np.float32)
    wb[0, 0] = wb[0, 2] = 1
    wb[1, 1] = wb[1, 3] = 1
    wb[2, 0], wb[2, 2] = -0.5, 0.5
    wb[3, 1], wb[3, 3] = -0.5, 0.5
    wc = np.zeros((4 + c, c), np.float32)
    wc[4:, :] = np.eye(c) * 6
    zb, zc = np.zeros(4, np.float32), np.zeros(c, np.float32)
    files["det_good.onnx"] = build.onnx_detector(wb, zb, wc, zc, proposals=k)
    files["det_base.onnx"] = build.onnx_detector(wb, zb, wc * 0.5, zc, proposals=k)
    shifted = wb.copy()
    shifted[2, 0] = shifted[2, 2] = 0.2  # boxes slide by most of their width: IoU < 0.5
    files["det_bad.onnx"] = build.onnx_detector(shifted, zb, wc, zc, proposals=k)
    reg = {"metric": "mae", "min": 0.2, "max_regression": 0.02, "max_latency_ratio": 1.5}
    anom = {"metric": "auroc", "min": 0.8, "max_regression": 0.05}
    det = {"metric": "map50", "min": 0.5, "max_regression": 0.05, "max_latency_ratio": 1.5}
    return [
        Pair("regression better (MAE)", True, "reg_good.onnx", "onnx", "reg_base.onnx", "onnx",
             holdout="reg", policy=reg, fast=True),
        Pair("regression worse (MAE)", False, "reg_bad.onnx", "onnx", "reg_base.onnx", "onnx",
             holdout="reg", policy=reg, why="min"),
        Pair("anomaly scores good (AUROC)", True, "anom_good.onnx", "onnx", "anom_good.onnx",
             "onnx", holdout="anom", policy=anom),
        Pair("anomaly scores random (AUROC)", False, "anom_bad.onnx", "onnx", "anom_good.onnx",
             "onnx", holdout="anom", policy=anom, why="min"),
        Pair("detector better (mAP@0.5)", True, "det_good.onnx", "onnx", "det_base.onnx",
             "onnx", holdout="det", policy=det, fast=True),
        Pair("detector boxes shifted (mAP@0.5)", False, "det_bad.onnx", "onnx", "det_base.onnx",
             "onnx", holdout="det", policy=det, fast=True, why="min"),
    ]
