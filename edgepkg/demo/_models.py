"""Three real versions of a small classifier, trained with numpy on a synthetic dataset.

- v1 (baseline): a one-hidden-layer MLP, briefly trained.
- v2 (better): v1's hidden layer kept, the head retrained longer on more data — a typical
  "head retrain", so v2 differs from v1 only in the last layer and the delta is small.
- v3 (regression): the head retrained on corrupted labels; it looks fine to the pipeline but
  loses accuracy on any holdout set from the true distribution.

Each device gets its own holdout slice of the same distribution (never seen in training).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgepkg.formats.build import mlp_forward, onnx_mlp_classifier

FEATURES, CLASSES, HIDDEN = 32, 8, 256
Weights = list[tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class DemoData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_holdout: np.ndarray
    y_holdout: np.ndarray


def make_data(n_train: int = 4000, n_holdout: int = 4000, seed: int = 0) -> DemoData:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 0.45, size=(CLASSES, FEATURES))
    n = n_train + n_holdout
    y = rng.integers(0, CLASSES, size=n)
    x = (centers[y] + rng.normal(0, 1.0, size=(n, FEATURES))).astype(np.float32)
    return DemoData(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def holdout_slices(
    data: DemoData, devices: int, per_device: int = 300
) -> list[tuple[np.ndarray, np.ndarray]]:
    """A distinct holdout slice per device (wrapping around when devices are many)."""
    n = len(data.y_holdout)
    out = []
    for i in range(devices):
        idx = (np.arange(per_device) + i * per_device) % n
        out.append((data.x_holdout[idx], data.y_holdout[idx]))
    return out


def _train(
    x: np.ndarray, y: np.ndarray, w: Weights, *, epochs: int, lr: float, train_hidden: bool
) -> Weights:
    (w1, b1), (w2, b2) = [(a.copy(), b.copy()) for a, b in w]
    onehot = np.eye(CLASSES, dtype=np.float32)[y]
    for _ in range(epochs):
        z1 = x @ w1 + b1
        h = np.maximum(z1, 0)
        p = mlp_forward([(w1, b1), (w2, b2)], x)
        g2 = (p - onehot) / len(x)
        gh = (g2 @ w2.T) * (z1 > 0)
        w2 -= lr * (h.T @ g2)
        b2 -= lr * g2.sum(0)
        if train_hidden:
            w1 -= lr * (x.T @ gh)
            b1 -= lr * gh.sum(0)
    return [(w1, b1), (w2, b2)]


def train_versions(data: DemoData, seed: int = 0) -> dict[str, Weights]:
    rng = np.random.default_rng(seed + 1)
    w1 = rng.normal(0, np.sqrt(2.0 / FEATURES), size=(FEATURES, HIDDEN)).astype(np.float32)
    w2 = rng.normal(0, np.sqrt(1.0 / HIDDEN), size=(HIDDEN, CLASSES)).astype(np.float32)
    init: Weights = [(w1, np.zeros(HIDDEN, np.float32)), (w2, np.zeros(CLASSES, np.float32))]
    small = len(data.y_train) // 6
    v1 = _train(
        data.x_train[:small], data.y_train[:small], init, epochs=8, lr=0.05, train_hidden=True
    )
    v2 = _train(data.x_train, data.y_train, v1, epochs=60, lr=0.3, train_hidden=False)
    corrupted = data.y_train.copy()
    flip = rng.random(len(corrupted)) < 0.7
    corrupted[flip] = rng.integers(0, CLASSES, size=int(flip.sum()))
    corrupted = (corrupted + 3 * flip) % CLASSES  # systematic label noise, not just random
    v3 = _train(data.x_train, corrupted, v1, epochs=60, lr=0.3, train_hidden=False)
    return {"1.0.0": v1, "2.0.0": v2, "3.0.0": v3}


def accuracy(weights: Weights, x: np.ndarray, y: np.ndarray) -> float:
    return float((mlp_forward(weights, x).argmax(axis=1) == y).mean())


def export_onnx(weights: Weights) -> bytes:
    return onnx_mlp_classifier(weights)
